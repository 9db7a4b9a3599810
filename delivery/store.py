"""The one mail store interface: local delivery writes through it, IMAP reads and flags through it.

`delivery/maildir.py` implements it on Maildir++ laid out as Dovecot does. The store is
synchronous (local disk); asyncio code calls it with `await asyncio.to_thread(...)`.

Invariants every implementation keeps:
- Nothing returns from `deliver`/`append`/`copy` before the message is fsynced and renamed into
  place and the directory fsynced: callers may answer `250` or `APPENDUID` right after.
- UIDs are assigned in arrival order, strictly increasing, never reused within one UIDVALIDITY,
  and persist across restarts (`dovecot-uidlist`).
- `events.publish(user, folder)` is called after a change is durable (IDLE wakes on it).

Names: `user` is the account's canonical address (`alice@example.com`). Folder names are IMAP
mailbox names as Dovecot's Maildir++ stores them: modified UTF-7 (RFC 3501 §5.1.3), hierarchy
delimiter ".", "INBOX" is the Maildir root; "Sent" lives in `.Sent/`, "Archive.2024" in
`.Archive.2024/`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

from mailstack.base.flags import FlagMode

R = TypeVar("R")  # what a map_messages work function gives

HIERARCHY_DELIMITER = "."
INBOX = "INBOX"


class StoreError(Exception):
    """Base of store errors; `code` is the IMAP response code that describes it, if any."""

    code: str | None = None


class UnknownUserError(StoreError):
    """The account has no Maildir."""


class FolderNotFoundError(StoreError):
    code = "NONEXISTENT"


class FolderExistsError(StoreError):
    code = "ALREADYEXISTS"


class InvalidFolderNameError(StoreError):
    code = "CANNOT"


class QuotaExceededError(StoreError):
    """Storing the message would exceed the account's quota (SMTP 452 4.2.2, IMAP OVERQUOTA)."""

    code = "OVERQUOTA"


class MessageGoneError(StoreError):
    """The message was expunged by someone else meanwhile."""

    code = "EXPUNGEISSUED"


class SpecialUse(enum.StrEnum):
    """RFC 6154 special-use attributes of the default folders."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    JUNK = "\\Junk"
    ARCHIVE = "\\Archive"


# The folders every new account gets, as Dovecot's and most clients' defaults name them.
DEFAULT_FOLDERS: dict[str, SpecialUse] = {
    "Sent": SpecialUse.SENT,
    "Drafts": SpecialUse.DRAFTS,
    "Trash": SpecialUse.TRASH,
    "Junk": SpecialUse.JUNK,
    "Archive": SpecialUse.ARCHIVE,
}


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where a stored message landed."""

    user: str
    folder: str
    uid: int
    uid_validity: int


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as a folder scan sees it; cheap to produce (no file is opened)."""

    uid: int
    flags: frozenset[str]  # system flags as Flag values plus keywords, never \Recent
    internal_date: float  # seconds since the epoch (Maildir: the file's delivery time)
    size: int  # RFC822.SIZE: the size with CRLF line endings
    key: str  # the Maildir unique name (base name without ":2,..." info)
    modseq: int = 0  # RFC 7162 MODSEQ: when the message last changed (delivery/index_db.py)


@dataclass(frozen=True, slots=True)
class FolderSnapshot:
    """A folder's state at one instant: every message in UID order."""

    name: str
    uid_validity: int
    uid_next: int
    messages: tuple[MessageInfo, ...]
    keywords: tuple[str, ...]  # keywords defined in the folder (PERMANENTFLAGS, FLAGS)
    recent_uids: frozenset[int]  # messages this snapshot is the first to see (RFC 3501 \Recent)
    highest_modseq: int = 0  # RFC 7162 HIGHESTMODSEQ


@dataclass(frozen=True, slots=True)
class FolderChanges:
    """What changed in a folder after a MODSEQ: how a session catches up without a snapshot."""

    uid_validity: int
    uid_next: int
    highest_modseq: int
    changed: tuple[MessageInfo, ...]  # MODSEQ above the one asked about, UID order (new too)
    expunged: tuple[int, ...]  # UIDs expunged after it, ascending
    keywords: tuple[str, ...]
    recent_uids: frozenset[int]  # as in FolderSnapshot


@dataclass(frozen=True, slots=True)
class FlagChange:
    """What `change_flags` did: each stored message's new state (flags and MODSEQ) and the
    UIDs left alone because they changed after `unchanged_since` (RFC 7162 §3.1.3)."""

    done: dict[int, MessageInfo]
    modified: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class FolderInfo:
    name: str
    special_use: SpecialUse | None
    subscribed: bool
    has_children: bool
    # False for a name that only exists as the parent of others (Dovecot creates "A.B" without
    # "A"): LIST shows it \Noselect (RFC 9051 §7.3.1); SELECT of it is FolderNotFoundError.
    is_selectable: bool = True
    # What stays the same when another program renames the folder (Maildir++: its directory's
    # inode), so NOTIFY can tell a rename from a deletion and a creation; 0: unknown.
    ident: int = 0


class TextIndex(Protocol):
    """A folder's full-text pre-filter (delivery/fulltext.py has the rules): which indexed
    messages may contain strings. None answers mean "unusable: scan"."""

    def indexed(self, uid_validity: int, live: Collection[int]) -> set[int] | None:
        """The UIDs of `live` that are indexed (forgetting the others)."""

    def candidates(self, uid_validity: int, terms: Iterable[str]) -> set[int] | None:
        """Indexed UIDs whose text may contain every one of `terms` (case-folded)."""

    def add(self, uid_validity: int, texts: Iterable[tuple[int, str]]) -> None:
        """Index (uid, searchable text) pairs."""


# What a map_messages work function is given: (uid, key, RFC822.SIZE as stored, the message
# or its header block) of each message of a batch.
MessageBatch = list[tuple[int, str, int, bytes]]

# A HeaderRow's values in its order (the table's columns): what `HeaderIndex.put` takes.
HeaderValues = tuple[int, str, bytes, str | None, bool, bytes | None]


class HeaderRow(NamedTuple):
    """One message's stored header fields (delivery/index_headers.py explains each). A
    NamedTuple: a first header fetch makes one per message, and a frozen dataclass cost
    several times as much to create."""

    uid: int
    base: str
    raw: bytes
    plain: str | None
    exact: bool
    envelope: bytes | None  # the rendered FETCH ENVELOPE; None until a FETCH needs it


class FillLock(Protocol):
    """What `HeaderIndex.filling` is: a lock (threading.Lock in delivery/index_headers.py);
    this module stays free of threading (tests/test_layering.py's pure modules)."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool: ...

    def release(self) -> None: ...


class HeaderIndex(Protocol):
    """A folder's stored header fields (delivery/index_headers.py has the rules), keyed by
    (uid, base name) pairs; missing and stale rows are simply absent."""

    def get(self, wanted: Sequence[tuple[int, str]]) -> dict[int, tuple[bytes, bytes | None]]:
        """Stored (raw field lines, rendered ENVELOPE or None) of these messages."""

    def missing(self, wanted: Sequence[tuple[int, str]]) -> tuple[list[int], list[int]]:
        """UIDs of these messages without a stored row, and those without a stored ENVELOPE."""

    def set_envelopes(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Store the ENVELOPE of existing rows: (uid, base name, envelope)."""

    def put(self, rows: Iterable[HeaderValues]) -> None:
        """Store rows, in one transaction."""

    def writer(self) -> Callable[[Sequence[HeaderValues]], None]:
        """`put` as a function that pickles, for another process to store rows with."""

    @property
    def filling(self) -> FillLock:
        """Held while rows are being filled, so that sessions take turns (one lock per
        folder and process)."""

    def candidates(
        self, wanted: Sequence[tuple[int, str]], terms: Sequence[tuple[str, bool]]
    ) -> tuple[dict[int, bytes], set[int]] | None:
        """(raw lines of the messages that may contain every term, UIDs without a row)."""


class MailStore(Protocol):
    """Everything delivery and IMAP need from storage."""

    # -- accounts ------------------------------------------------------------------------------
    def create_account(self, user: str) -> None:
        """Create the Maildir++ root with cur/new/tmp and DEFAULT_FOLDERS (dirs mode 0700)."""

    def delete_account(self, user: str) -> None:
        """Remove the account's Maildir entirely."""

    def usage_bytes(self, user: str) -> int:
        """Bytes stored by the account across all folders (for the quota)."""

    def quota_of(self, user: str) -> int:
        """The account's quota in bytes, 0 for unlimited: the one lookup every write that
        checks the quota uses (the store is given it once, at construction)."""

    def is_full(self, user: str, *, blocking: bool = True, limit: int | None = None) -> bool | None:
        """Has the account reached its quota? Non-blocking: None when only a recount of its
        folders could tell (the caller asks again with blocking=True in a thread). `limit`: the
        quota when the caller already has it from `quota_of` (the MX caches it per recipient,
        so that RCPT needs no database read on the event loop)."""

    def counted_usage_bytes(self, user: str) -> int | None:
        """`usage_bytes` when it is known without recounting the folders (a small read at
        most, fit for an event loop); None when only `usage_bytes` can tell."""

    # -- writing -------------------------------------------------------------------------------
    def deliver(
        self,
        targets: Sequence[tuple[str, str]],
        message: bytes,
    ) -> list[MessageRef]:
        """Durably store one copy of `message` per (user, folder) target, all or nothing.

        `message` has CRLF or LF endings (stored with LF, as Maildir does). A target whose
        account's quota (the store's `quota_of`) would be exceeded raises QuotaExceededError
        before anything is written; so do `append` and `copy`.
        """

    def deliver_parts(
        self,
        targets: Sequence[tuple[str, str]],
        parts: Sequence[bytes],
    ) -> list[MessageRef]:
        """`deliver` of a message given as slices that already have LF endings, so that no
        step has to join or scan a 25 MB message in one go (which holds the GIL)."""

    def deliver_parts_nowait(
        self,
        targets: Sequence[tuple[str, str]],
        parts: Sequence[bytes],
    ) -> Future[list[MessageRef]]:
        """`deliver_parts` that returns at once (parts may keep CRLF endings); the future
        resolves with the refs once every copy is durable, or with the error."""

    def append(
        self,
        user: str,
        folder: str,
        message: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> MessageRef:
        """IMAP APPEND: store with flags and date, durably, and return its UID."""

    def append_many(
        self,
        user: str,
        folder: str,
        messages: Sequence[tuple[bytes, Iterable[str], float | None]],
    ) -> list[MessageRef]:
        """IMAP MULTIAPPEND (RFC 3502): (message, flags, internal date) each, stored all or
        nothing, durably; the refs in the order given."""

    # -- folders -------------------------------------------------------------------------------
    def list_folders(self, user: str) -> list[FolderInfo]:
        """Every folder of the account, INBOX included."""

    def create_folder(
        self, user: str, folder: str, special_use: SpecialUse | None = None
    ) -> None: ...

    def delete_folder(self, user: str, folder: str) -> None: ...

    def rename_folder(self, user: str, old: str, new: str) -> None:
        """Rename with children; renaming INBOX moves its messages (RFC 9051 §6.3.6)."""

    def set_subscribed(self, user: str, folder: str, subscribed: bool) -> None: ...

    def subscriptions(self, user: str) -> list[str]:
        """Every subscribed name, including names that have no folder (LIST \\NonExistent)."""

    # -- reading and changing messages ---------------------------------------------------------
    def snapshot(self, user: str, folder: str, *, claim_recent: bool = False) -> FolderSnapshot:
        """Scan the folder (new/ and cur/), assigning UIDs to newcomers.

        `claim_recent=True` (SELECT, not EXAMINE/STATUS) moves new/ to cur/ and reports those
        messages in `recent_uids`: only one session ever sees a message as \\Recent.
        """

    def changes(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        """What changed after MODSEQ `since` (`snapshot`'s claim_recent semantics); None when
        the store no longer knows every expunge since then (take a snapshot instead)."""

    def changes_now(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        """`changes`, when it can be answered at once from what this process knows, without
        waiting or writing; None when it cannot: call `changes`. Never raises; for an event
        loop's thread."""

    def read_message(self, user: str, folder: str, uid: int) -> bytes:
        """The message as stored (LF endings). Raises MessageGoneError."""

    def read_header(self, user: str, folder: str, uid: int) -> bytes:
        """At least the message's header block (up to its blank line), without reading the
        whole of a large message (SEARCH on header fields). Raises MessageGoneError."""

    def read_headers(self, user: str, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        """`read_header` of several messages at once (expunged ones absent)."""

    def read_messages(
        self, user: str, folder: str, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes]]:
        """(uid, message) for each of `uids` still there, in that order: `read_message` of many
        at the cost of one lookup. Close the iterator if you stop early."""

    def map_messages(
        self,
        user: str,
        folder: str,
        uids: Sequence[int],
        work: Callable[[MessageBatch], R],
        *,
        whole: bool,
    ) -> Iterator[R]:
        """`work` applied to the messages of `uids` still there, a batch at a time, each as
        (uid, key, RFC822.SIZE as stored, the whole message with `whole`, else its header
        block as `read_headers` gives it); one result per batch, in no set order. Many
        messages are worked on in other processes, so `work` and its results must pickle (a
        module-level function or a functools.partial of one, plain values). Close the
        iterator if you stop early."""

    def store_flags(
        self, user: str, folder: str, uids: Iterable[int], flags: Iterable[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        """Change flags; returns the new flags of each message that still exists."""

    def change_flags(
        self,
        user: str,
        folder: str,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: FlagMode,
        *,
        unchanged_since: int | None = None,
    ) -> FlagChange:
        """`store_flags` that also reports MODSEQs, and with `unchanged_since` (STORE
        UNCHANGEDSINCE, RFC 7162 §3.1.3) skips messages whose MODSEQ is above it."""

    def expunged_since(self, user: str, folder: str, modseq: int) -> list[int] | None:
        """UIDs expunged with a MODSEQ above `modseq` (QRESYNC, RFC 7162 §3.2.5); None when
        the store no longer remembers that far back."""

    def copy(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        """Copy messages (flags kept) durably; returns (source uid, new uid) pairs."""

    def move(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        """RFC 6851 MOVE: copy then expunge the sources; returns (source uid, new uid) pairs."""

    def expunge(self, user: str, folder: str, uids: Iterable[int] | None = None) -> list[int]:
        """Remove messages flagged \\Deleted (only those in `uids` if given); returns their UIDs."""

    def fulltext(self, user: str, folder: str) -> TextIndex:
        """The folder's full-text pre-filter (delivery/fulltext.py)."""

    def header_index(self, user: str, folder: str) -> HeaderIndex:
        """The folder's stored header fields (delivery/index_headers.py)."""
