"""Parsed IMAP commands: one frozen dataclass per command, plus FETCH attributes and SEARCH keys.

`imap/parser.py` produces these values from whole command lines; `imap/session.py` executes
them; `imap/fetch.py` renders `FetchAttr`s and `imap/search.py` evaluates `SearchKey` trees.
Everything here is a plain value: no I/O, no behaviour beyond small helpers.

Conventions:
- Mailbox names are kept as sent on the wire (modified UTF-7, RFC 3501 §5.1.3), except that
  any case of "INBOX" is normalised to "INBOX" (RFC 9051 §5.1).
- Flags and keywords keep the client's spelling; system flags are canonicalised to the
  capitalisation of `mailstack.base.flags.Flag` (`\\seen` -> `\\Seen`) by the parser.
- Upper-case strings name protocol keywords (`"BODYSTRUCTURE"`, `"UIDNEXT"`).

RFCs: 3501 and 9051 (grammar), 2177 IDLE, 4315 UIDPLUS, 6851 MOVE, 2342 NAMESPACE, 2971 ID,
5161 ENABLE, 3691 UNSELECT, 4959 SASL-IR, 5258/6154/5819 LIST extensions, 4731 ESEARCH,
5182 SEARCHRES, 3516 BINARY, 9208 QUOTA.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from mailstack.imap.query import (
    FETCH_MACROS,
    FETCH_NAMES,
    FetchAttr,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModseq,
    SearchNot,
    SearchOr,
    SearchSeq,
    SearchSize,
    SearchText,
    Section,
)
from mailstack.imap.sequence import SequenceSet

from mailstack.base.flags import FlagMode

# FETCH and SEARCH values live in imap/query.py; re-exported so `c.FetchAttr` etc. keep working.
__all__ = [
    "FETCH_MACROS",
    "FETCH_NAMES",
    "FetchAttr",
    "SearchAll",
    "SearchAnd",
    "SearchDate",
    "SearchFlag",
    "SearchHeader",
    "SearchKey",
    "SearchModseq",
    "SearchNot",
    "SearchOr",
    "SearchSeq",
    "SearchSize",
    "SearchText",
    "Section",
]


# -- commands -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """Base of every command; `tag` is the client's tag."""

    tag: str


# Any state (RFC 9051 §6.1).
@dataclass(frozen=True, slots=True)
class Capability(Command):
    pass


@dataclass(frozen=True, slots=True)
class Noop(Command):
    pass


@dataclass(frozen=True, slots=True)
class Logout(Command):
    pass


@dataclass(frozen=True, slots=True)
class Id(Command):
    """RFC 2971: `params` is None for `ID NIL`, else (field, value-or-None) pairs."""

    params: tuple[tuple[str, str | None], ...] | None = None


# Not authenticated (RFC 9051 §6.2).
@dataclass(frozen=True, slots=True)
class StartTls(Command):
    pass


@dataclass(frozen=True, slots=True)
class Login(Command):
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """`initial_response` is the SASL-IR (RFC 4959) argument as sent: base64 text, "=" for an
    empty response, None when absent (the server then sends an empty continuation)."""

    mechanism: str
    initial_response: str | None = None


# Authenticated (RFC 9051 §6.3).
@dataclass(frozen=True, slots=True)
class Enable(Command):
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Select(Command):
    """SELECT, or EXAMINE when `readonly`; `condstore`/`qresync` are the RFC 7162 §3.1.8 and
    §3.2.5 select parameters."""

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: Qresync | None = None


@dataclass(frozen=True, slots=True)
class Qresync:
    """RFC 7162 §3.2.5: QRESYNC (uidvalidity modseq [known-uids [seq-match-data]])."""

    uid_validity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None  # (sequence numbers, UIDs)


@dataclass(frozen=True, slots=True)
class Create(Command):
    """`special_use` from RFC 6154 §3 `CREATE name (USE (\\Sent))`."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """LIST (RFC 9051 §6.3.9, RFC 5258). `selection` holds upper-cased selection options
    (SUBSCRIBED, REMOTE, RECURSIVEMATCH, SPECIAL-USE); `returns` the return options
    (SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS); `status_items` the items of RETURN (STATUS
    (...)) for LIST-STATUS (RFC 5819)."""

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    pass


@dataclass(frozen=True, slots=True)
class Status(Command):
    """`items` upper-cased: MESSAGES, RECENT, UIDNEXT, UIDVALIDITY, UNSEEN, DELETED, SIZE,
    APPENDLIMIT (RFC 7889)."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CatenatePart:
    """One cat-part of CATENATE (RFC 4469 §5): literal `text`, or an IMAP `url` (RFC 5092)
    naming a message or part to copy; `utf8` for RFC 6855 §4's `UTF8 (~{n}...)` text."""

    text: bytes | None = None
    url: str | None = None
    utf8: bool = False


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of a MULTIAPPEND after the first (RFC 3502 §6 append-message).
    `utf8`: sent as RFC 6855 §4 `UTF8 (~{n}...)`; `catenate`: RFC 4469 parts to join
    (then `message` is empty)."""

    message: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    utf8: bool = False
    catenate: tuple[CatenatePart, ...] = ()


@dataclass(frozen=True, slots=True)
class Append(Command):
    """`internal_date` is timezone-aware when given. `more`: the further messages of a
    MULTIAPPEND (RFC 3502), stored together with the first, all or nothing."""

    mailbox: str
    message: bytes
    flags: tuple[str, ...] = ()
    internal_date: datetime.datetime | None = None
    more: tuple[AppendMessage, ...] = ()
    # Every message, the first included, with UTF8/CATENATE (imap/parser_append.py).
    messages: tuple[AppendMessage, ...] = ()

    def all_messages(self) -> tuple[AppendMessage, ...]:
        first = AppendMessage(self.message, self.flags, self.internal_date)
        return self.messages or (first, *self.more)


@dataclass(frozen=True, slots=True)
class Idle(Command):
    pass


@dataclass(frozen=True, slots=True)
class GetMetadata(Command):
    """RFC 5464 §4.2: GETMETADATA [(MAXSIZE n DEPTH d)] mailbox entries. `depth` None is
    "infinity"; entry names lower-cased."""

    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: int | None = 0


@dataclass(frozen=True, slots=True)
class SetMetadata(Command):
    """RFC 5464 §4.3: SETMETADATA mailbox (entry value ...); a None value removes the entry."""

    mailbox: str
    values: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class GetAcl(Command):
    """RFC 4314 §3.3: GETACL mailbox."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class MyRights(Command):
    """RFC 4314 §3.5: MYRIGHTS mailbox."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class ListRights(Command):
    """RFC 4314 §3.4: LISTRIGHTS mailbox identifier."""

    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True)
class SetAcl(Command):
    """RFC 4314 §3.1: SETACL mailbox identifier mod-rights ("+"/"-" prefix: add/remove)."""

    mailbox: str
    identifier: str
    rights: str


@dataclass(frozen=True, slots=True)
class DeleteAcl(Command):
    """RFC 4314 §3.2: DELETEACL mailbox identifier."""

    mailbox: str
    identifier: str


@dataclass(frozen=True, slots=True)
class Compress(Command):
    """RFC 4978 §3: COMPRESS mechanism (upper-cased; only DEFLATE exists)."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class GetQuota(Command):
    """RFC 9208 §4.2: GETQUOTA quota-root."""

    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot(Command):
    """RFC 9208 §4.3: GETQUOTAROOT mailbox."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class SetQuota(Command):
    """RFC 9208 §4.1: SETQUOTA quota-root (resource limit ...); `limits` upper-cased names."""

    root: str
    limits: tuple[tuple[str, int], ...]


# Selected (RFC 9051 §6.4).
@dataclass(frozen=True, slots=True)
class Check(Command):
    pass


@dataclass(frozen=True, slots=True)
class Close(Command):
    pass


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    pass


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """EXPUNGE, or UID EXPUNGE (RFC 4315) when `uids` is given."""

    uids: SequenceSet | None = None


@dataclass(frozen=True, slots=True)
class Search(Command):
    """SEARCH / UID SEARCH. `returns` are the ESEARCH (RFC 4731) return options, upper-cased
    (MIN, MAX, ALL, COUNT, SAVE); `is_esearch` when RETURN was given at all."""

    key: SearchKey
    uid: bool = False
    charset: str | None = None
    returns: tuple[str, ...] = ()
    is_esearch: bool = False
    partial: tuple[int, int] | None = None  # RFC 5267 §4.4 PARTIAL low:high ("PARTIAL" in returns)


@dataclass(frozen=True, slots=True)
class SortCriterion:
    """`["REVERSE" SP] sort-key` (RFC 5256 §4, RFC 5957): `key` upper-cased."""

    key: str
    reverse: bool = False


@dataclass(frozen=True, slots=True)
class Sort(Command):
    """SORT / UID SORT (RFC 5256): the searched messages in `criteria` order. With RETURN
    (ESORT, RFC 5267 §3) `is_esort`, `returns` and `partial` as in `Search`."""

    criteria: tuple[SortCriterion, ...]
    charset: str
    key: SearchKey
    uid: bool = False
    returns: tuple[str, ...] = ()
    is_esort: bool = False
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Thread(Command):
    """THREAD / UID THREAD (RFC 5256): `algorithm` upper-cased (ORDEREDSUBJECT, REFERENCES)."""

    algorithm: str
    charset: str
    key: SearchKey
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """FETCH / UID FETCH. For UID FETCH the session adds UID to the attributes it returns."""

    seqset: SequenceSet
    attrs: tuple[FetchAttr, ...]
    uid: bool = False
    changed_since: int | None = None  # RFC 7162 §3.1.4.1 CHANGEDSINCE
    vanished: bool = False  # RFC 7162 §3.2.6 VANISHED (UID FETCH only)


@dataclass(frozen=True, slots=True)
class Store(Command):
    """STORE / UID STORE `[+-]FLAGS[.SILENT] (flags)`."""

    seqset: SequenceSet
    mode: FlagMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None  # RFC 7162 §3.1.3 UNCHANGEDSINCE


@dataclass(frozen=True, slots=True)
class Copy(Command):
    seqset: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    seqset: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """One event-group of NOTIFY SET (RFC 5465 §8). `filter` upper-cased (SELECTED,
    SELECTED-DELAYED, INBOXES, PERSONAL, SUBSCRIBED, SUBTREE, MAILBOXES); `mailboxes` those of
    SUBTREE/MAILBOXES; `events` in the RFC's spelling for known ones (MessageNew, ...), as sent
    otherwise, empty for NONE; `fetch` the attributes MessageNew asks for."""

    filter: str
    mailboxes: tuple[str, ...]
    events: tuple[str, ...]
    fetch: tuple[FetchAttr, ...] = ()


@dataclass(frozen=True, slots=True)
class Notify(Command):
    """NOTIFY SET [STATUS] groups / NOTIFY NONE (RFC 5465 §3): `groups` None for NONE."""

    groups: tuple[NotifyGroup, ...] | None
    status: bool = False


@dataclass(frozen=True, slots=True)
class CancelUpdate(Command):
    """CANCELUPDATE (RFC 5267 §4.3.5): the tags of the searches whose updates end."""

    tags: tuple[str, ...]


# Which commands each state accepts (RFC 9051 §3). Selected accepts all authenticated ones too.
ANY_STATE: tuple[type[Command], ...] = (Capability, Noop, Logout, Id)
NOT_AUTHENTICATED: tuple[type[Command], ...] = (StartTls, Login, Authenticate)
AUTHENTICATED: tuple[type[Command], ...] = (
    Enable,
    Select,
    Create,
    Delete,
    Rename,
    Subscribe,
    Unsubscribe,
    List,
    Lsub,
    Namespace,
    Status,
    Append,
    Idle,
    GetQuota,
    GetQuotaRoot,
    SetQuota,
    GetAcl,
    MyRights,
    ListRights,
    SetAcl,
    DeleteAcl,
    GetMetadata,
    SetMetadata,
    Compress,
    Notify,  # RFC 5465
)
SELECTED: tuple[type[Command], ...] = (
    Check,
    Close,
    Unselect,
    Expunge,
    Search,
    Fetch,
    Store,
    Copy,
    Move,
    Sort,
    Thread,
    CancelUpdate,  # RFC 5267
)
