"""Header SEARCH, SORT and BODY[HEADER.FIELDS] answered from stored header fields.

The store keeps, per message, the raw lines of the header fields clients search and fetch
(`INDEXED`; delivery/index_headers.py stores them). This module decides what goes in a row
(it owns the header syntax: imap/mime.py), fills rows lazily (the first command that needs a
message's fields reads its header block once; one transaction per command) and answers:

- SEARCH/SORT keys that read only indexed fields (FROM, TO, CC, BCC, SUBJECT, HEADER <name>
  for an indexed name, SENT*): the stored lines stand in for the header block, so search.py's
  exact rules (RFC 9051 §6.4.4 case-insensitive substring of the decoded value) decide as
  before, on the same field values. A key that also reads other fields, or the whole
  message (BODY, TEXT: header_text covers every field), is not answered here.
- Non-empty ASCII strings of a top-level AND narrow the messages first, in SQL, on the
  stored lower-cased text (`plain`): what search.MessageText.header_may_contain decides per
  message from the file, decided here for the whole folder in one scan.
- BODY[HEADER.FIELDS (names)] of the whole message when every name is indexed (RFC 9051
  §6.4.5): the stored lines are the file's own bytes (CRLF line ends, as FETCH sends them),
  so the answer is byte-identical to cutting them out of the file.
- ENVELOPE, rendered once from the stored fields (it reads only those), when no
  BODYSTRUCTURE comes with it: a client's header fetch of a never-seen folder reads each
  header block once instead of parsing each whole message.

Why BODYSTRUCTURE stays in the account's structure cache (imap/cache.py): it needs the whole
message parsed, and that cache is keyed by base name across the account, so COPY/MOVE
keep it; header rows are keyed by UID, per folder, like the rest of the folder index.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import overload

from mailstack.delivery.store import (
    HeaderIndex,
    HeaderRow,
    HeaderValues,
    MailStore,
    MessageBatch,
    MessageGoneError,
    MessageInfo,
)
from mailstack.imap import downgrade_size, envelope, response, search
from mailstack.imap.cache import CacheRow
from mailstack.imap.commands import (
    FetchAttr,
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchText,
)
from mailstack.imap.fetch import partial
from mailstack.imap.mime import HeaderField, parse_header, to_crlf
from mailstack.imap.values import to_wire

# Lower-case names of the stored fields: what clients' header fetches, SEARCH, SORT/THREAD
# and ENVELOPE read (Sender and Reply-To are ENVELOPE's too).
INDEXED = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "in-reply-to",
        "references",
        "list-id",
        "content-type",
        "sender",
        "reply-to",
    }
)
# The fields SEARCH FROM, TO, CC and BCC read (imap/parser_search.py: address keys).
ADDRESS_KEYS = frozenset({"from", "to", "cc", "bcc"})
READ_BATCH = 500  # missing UIDs a caller hands `fill` at most (more: it asks the table)
_UID = operator.attrgetter("uid")
_KEY = operator.attrgetter("key")


def make_row(uid: int, base: str, header: bytes, *, with_envelope: bool = False) -> HeaderRow:
    """The stored form of a message's header block (LF or CRLF line ends)."""
    data = to_crlf(header)
    kept, _ = parse_header(data, 0, len(data), only=INDEXED)
    lines = [data[f.start : f.end] for f in kept]
    # Only a field that ends the data can lack its CRLF: every other one ends at a line's.
    if lines and not lines[-1].endswith(b"\r\n"):
        lines[-1] += b"\r\n"
    raw = b"".join(lines)
    plain: str | None = None
    exact = False
    if raw.isascii() and b"=?" not in raw:
        flat = raw.replace(b"\r", b"").replace(b"\n", b"").lower()
        plain = flat.decode("ascii")
        # Only the fields an address key reads: a quoted MIME boundary in Content-Type made
        # every multipart message a candidate of every FROM search.
        address_lines = [
            line for f, line in zip(kept, lines, strict=True) if f.name.lower() in ADDRESS_KEYS
        ]
        addresses = b"".join(address_lines)
        flat_addresses = addresses.replace(b"\r", b"").replace(b"\n", b"").lower()
        rewritten = search.rewrites_address(flat_addresses)
        exact = not rewritten and not search.address_lines_add_placeholders(address_lines)
    rendered = _envelope(kept) if with_envelope else None
    return HeaderRow(uid, base, raw, plain, exact, rendered)


# ENVELOPE's fields (RFC 9051 §7.5.2), all of them stored.
_ENVELOPE_FIELDS = frozenset(
    {"date", "subject", "from", "sender", "reply-to", "to", "cc", "bcc", "in-reply-to"}
    | {"message-id"}
)


def _envelope(fields: Sequence[HeaderField]) -> bytes:
    """ENVELOPE of a message with these header fields, rendered: the bytes
    `response.value(envelope(entity))` gives (imap/envelope.py; a test holds the two equal),
    made without the value tree. It reads the first of each of its fields, all stored, so
    the stored lines give what the whole message gives. A first header fetch renders one
    per message, and the tree cost twice the rest of the row."""
    first: dict[str, bytes] = {}
    for f in fields:
        name = f.name.lower()
        if name in _ENVELOPE_FIELDS and name not in first:
            first[name] = f.value

    from_ = _addresses(first.get("from"))
    # RFC 3501 §7.4.2: an absent or empty Sender or Reply-To is the From.
    sender = _addresses(first.get("sender")) or from_
    reply_to = _addresses(first.get("reply-to")) or from_
    subject = first.get("subject")
    return b"(%s)" % b" ".join(
        (
            _text(first.get("date")),
            _text(None if subject is None else _one_space(subject)),
            from_ or b"NIL",
            sender or b"NIL",
            reply_to or b"NIL",
            _addresses(first.get("to")) or b"NIL",
            _addresses(first.get("cc")) or b"NIL",
            _addresses(first.get("bcc")) or b"NIL",
            _text(first.get("in-reply-to")),
            _text(first.get("message-id")),
        )
    )


# envelope.py's subject rule (folding white space as one space), on the bytes: UTF-8 and
# surrogate escapes never hold these four.
_WSP_RUN = re.compile(rb"[ \t\r\n]+")


def _one_space(subject: bytes) -> bytes:
    """`_WSP_RUN` runs as one space; a subject with none (most) skips the regex."""
    if b"  " in subject or b"\t" in subject or b"\r" in subject or b"\n" in subject:
        return _WSP_RUN.sub(b" ", subject)
    return subject


def _text(raw: bytes | None) -> bytes:
    """A text member as envelope.py's tree renders it: header_text's str through to_wire
    (ASCII, the common case, is the same either way)."""
    if raw is None:
        return b"NIL"
    if raw.isascii():
        return response.string(raw)
    return response.value(to_wire(raw.decode("utf-8", "surrogateescape")))


@functools.lru_cache(maxsize=4096)
def _rendered_addresses(raw: bytes) -> bytes | None:
    parsed = envelope.parse_addresses(raw.decode("utf-8", "surrogateescape"))
    return None if parsed is None else response.value(to_wire(parsed))


def _addresses(raw: bytes | None) -> bytes | None:
    """An address list field rendered (None: absent or empty). A folder's messages name the
    same few address lists again and again: each is parsed and rendered once."""
    return None if raw is None else _rendered_addresses(raw)


def message_envelope(data: bytes) -> bytes:
    """The rendered ENVELOPE of a whole message in IMAP form (CRLF): from its header alone,
    no MIME tree (a FETCH of ENVELOPE with BODY[] has the bytes in hand)."""
    fields, _ = parse_header(data, 0, len(data), only=_ENVELOPE_FIELDS)
    return _envelope(fields)


def render_envelope(raw: bytes) -> bytes:
    """The rendered ENVELOPE of stored field lines."""
    fields, _ = parse_header(raw, 0, len(raw))
    return _envelope(fields)


class Keys(Sequence[tuple[int, str]]):
    """(uid, base name) of each of `messages`, made when asked: what the header table is
    asked about. A list of 100,000 such pairs per command cost about 7 MB a session, and
    eight sessions searching a new folder at once held eight."""

    __slots__ = ("_messages",)

    def __init__(self, messages: Sequence[MessageInfo]) -> None:
        self._messages = messages

    def __len__(self) -> int:
        return len(self._messages)

    @overload
    def __getitem__(self, i: int) -> tuple[int, str]: ...

    @overload
    def __getitem__(self, i: slice) -> Keys: ...

    def __getitem__(self, i: int | slice) -> tuple[int, str] | Keys:
        if isinstance(i, slice):
            return Keys(self._messages[i])
        m = self._messages[i]
        return (m.uid, m.key)

    def __iter__(self) -> Iterator[tuple[int, str]]:
        # Pairs made in C: a generator's step per message was 5% of a first header fetch's
        # server time (py-spy), the table being asked about every message more than once.
        return zip(map(_UID, self._messages), map(_KEY, self._messages), strict=True)


def fill(
    store: MailStore,
    table: HeaderIndex,
    user: str,
    folder: str,
    wanted: Sequence[tuple[int, str]],
    *,
    envelopes: bool = False,
    missing: Collection[int] | None = None,
    sizes: Callable[[Sequence[CacheRow]], None] | None = None,
) -> None:
    """Read the header blocks of the messages of `wanted` (uid, base name) that have no
    row and store their rows: `missing` names them, or None (the table is asked once the
    turn to fill has come). Messages expunged meanwhile are skipped. With `sizes` (a
    StructureCache.writer), each of those messages is read whole instead, and the cache
    rows of its RFC822.SIZE as a client without UTF8=ACCEPT sees it are stored with it
    (imap/downgrade_size.py): one read of each file, not two.

    The store reads and parses the files a batch at a time (in worker processes when there
    are many: `MailStore.map_messages`), and rows are stored a batch at a time, so a first
    search of a 100,000-message folder holds a few batches in memory, not the folder.
    Sessions of one folder fill in turn and each skips the rows the one before it stored:
    eight sessions opening a new folder at once read its files once, not eight times (and
    held eight folders' rows at once before).
    Only a session that had to wait asks the table again; a caller with many missing rows
    passes None, so that sessions waiting their turn do not each hold the list."""
    lock = table.filling
    waited = not lock.acquire(blocking=False)
    if waited:
        lock.acquire()
    try:
        if waited or missing is None:  # another session may have filled meanwhile
            missing = table.missing(wanted)[0]
        _fill_held(store, table, user, folder, wanted, missing, envelopes=envelopes, sizes=sizes)
    finally:
        lock.release()


def _fill_held(
    store: MailStore,
    table: HeaderIndex,
    user: str,
    folder: str,
    wanted: Sequence[tuple[int, str]],
    missing: Collection[int],
    *,
    envelopes: bool,
    sizes: Callable[[Sequence[CacheRow]], None] | None,
) -> None:
    """`fill`'s work, its turn taken (`table.filling` held) and `missing` current."""
    if len(missing) == len(wanted):  # a new folder: every message (UIDs are unique)
        todo = [uid for uid, _ in wanted]
    else:
        chosen = set(missing)
        todo = [uid for uid, _ in wanted if uid in chosen]
        del chosen
    work = functools.partial(_store_rows, table.writer(), sizes, envelopes)
    for _ in store.map_messages(user, folder, todo, work, whole=sizes is not None):
        pass


def _store_rows(
    put: Callable[[Sequence[HeaderValues]], None],
    put_sizes: Callable[[Sequence[CacheRow]], None] | None,
    envelopes: bool,
    batch: MessageBatch,
) -> int:
    """Make and store the rows of a batch of header blocks, and with `put_sizes` (the batch
    holds whole messages) the structure cache rows of their sizes as a client without
    UTF8=ACCEPT sees them (imap/downgrade_size.py). The store may run this in a worker
    process: it stores what it makes itself, and answers only how many it made."""
    if put_sizes is None:
        put([make_row(u, k, b, with_envelope=envelopes) for u, k, _, b in batch])
        return len(batch)
    rows = []
    size_rows = []
    for uid, key, size, data in batch:
        size_rows.append(downgrade_size.size_row(key, size, downgrade_size.seen_size(data)))
        rows.append(make_row(uid, key, header_of(data), with_envelope=envelopes))
    put(rows)
    put_sizes(size_rows)
    return len(batch)


def header_of(message: bytes) -> bytes:
    """The header block of a whole message, through the blank line that ends it (what the
    store's read_headers gives; the whole message if it has none)."""
    lf = message.find(b"\n\n")
    end = len(message) if lf < 0 else lf + 2
    crlf = message.find(b"\n\r\n", 0, end)  # only where it comes first
    return message[: crlf + 3] if crlf >= 0 else message[:end]


def _passed(missing: Collection[int]) -> Collection[int] | None:
    """What a caller hands `fill` as `missing`: a few UIDs, or None (see `fill`)."""
    return missing if len(missing) <= READ_BATCH else None


def complete(
    store: MailStore,
    user: str,
    folder: str,
    messages: Sequence[MessageInfo],
    *,
    envelopes: bool = False,
) -> bool:
    """Do all of `messages` have their rows (with `envelopes`, their ENVELOPEs too)? One
    look at the table: a FETCH whose rows are all there fills nothing, part by part."""
    no_row, no_envelope = store.header_index(user, folder).missing(Keys(messages))
    return not no_row and not (envelopes and no_envelope)


def ensure(
    store: MailStore,
    user: str,
    folder: str,
    messages: Sequence[MessageInfo],
    *,
    envelopes: bool = False,
    sizes: Callable[[Sequence[CacheRow]], None] | None = None,
) -> None:
    """Fill the missing rows of `messages` (one transaction for a whole command) and, with
    `envelopes`, the ENVELOPEs rows lack (rendered from the stored lines, no file read).
    `sizes`: see `fill`."""
    table = store.header_index(user, folder)
    wanted = Keys(messages)
    no_row, no_envelope = table.missing(wanted)
    if no_row and table.filling.acquire(blocking=False):  # nobody else filling: no wait
        try:
            # Rows this fill makes get their ENVELOPE: only rows made before lack it.
            no_envelope = sorted(set(no_envelope).difference(no_row)) if envelopes else []
            _fill_held(store, table, user, folder, wanted, no_row, envelopes=envelopes, sizes=sizes)
        finally:
            table.filling.release()
    elif no_row:
        passed = _passed(no_row)
        del no_row, no_envelope  # not held while waiting for the turn to fill
        fill(store, table, user, folder, wanted, envelopes=envelopes, missing=passed, sizes=sizes)
        # The session before may have filled rows without ENVELOPE (a SEARCH): ask again.
        no_envelope = table.missing(wanted)[1] if envelopes else []
    if envelopes and no_envelope:
        lacking = set(no_envelope)
        chosen = [(u, b) for u, b in wanted if u in lacking]
        bases = dict(chosen)
        rows = table.get(chosen)
        table.set_envelopes(
            (uid, bases[uid], render_envelope(raw)) for uid, (raw, _) in rows.items()
        )


def stored_headers(
    store: MailStore,
    user: str,
    folder: str,
    messages: Sequence[MessageInfo],
    *,
    envelopes: bool = False,
) -> dict[int, tuple[bytes, bytes | None]]:
    """uid -> (stored field lines, rendered ENVELOPE) of `messages`, filling the missing
    rows first; with `envelopes` every ENVELOPE is there. Gone messages are absent."""
    table = store.header_index(user, folder)
    wanted = Keys(messages)
    found = table.get(wanted)
    missing = [(uid, base) for uid, base in wanted if uid not in found]
    if missing:
        passed = _passed([uid for uid, _ in missing])
        fill(store, table, user, folder, missing, envelopes=envelopes, missing=passed)
        found.update(table.get(missing))
    if envelopes:
        for uid, (raw, env) in list(found.items()):
            if env is None:  # the table could not store it: render it for this answer
                found[uid] = (raw, render_envelope(raw))
    return found


def key_fields(key: SearchKey) -> set[str] | None:
    """Lower-case names of the header fields `key` reads; None when it reads the whole
    message (BODY/TEXT)."""
    match key:
        case SearchHeader(field=name):
            return {name.lower()}
        case SearchDate(sent=sent):
            return {"date"} if sent else set()
        case SearchText():
            return None
        case SearchNot(key=inner):
            return key_fields(inner)
        case SearchOr(left=left, right=right):
            a, b = key_fields(left), key_fields(right)
            return None if a is None or b is None else a | b
        case SearchAnd(keys=keys):
            out: set[str] = set()
            for k in keys:
                names = key_fields(k)
                if names is None:
                    return None
                out |= names
            return out
    return set()


def answers(key: SearchKey) -> bool:
    """Can stored fields stand in for the header block for `key`? (It reads some header
    field, and only indexed ones.)"""
    names = key_fields(key)
    return bool(names) and names is not None and names <= INDEXED


def terms(key: SearchKey) -> list[tuple[str, bool]]:
    """(needle, is an address key) for the non-empty ASCII header strings every match
    contains: those of the key itself or of its top-level AND."""
    match key:
        case SearchHeader(value=value, address=address) if value and value.isascii():
            return [(value.casefold(), address)]
        case SearchAnd(keys=keys):
            return [t for k in keys for t in terms(k)]
    return []


def search_stored(
    store: MailStore,
    user: str,
    folder: str,
    key: SearchKey,
    messages: Sequence[MessageInfo],
    scope: search.Scope,
    recent_uids: frozenset[int],
    sizes: Mapping[int, int] | None = None,
) -> list[search.Candidate] | None:
    """SEARCH of a key that `answers`, from stored fields; None when the stored fields cannot
    be used (the caller reads the files)."""
    table = store.header_index(user, folder)
    wanted = Keys(messages)
    needles = terms(key)
    if needles:
        got = table.candidates(wanted, needles)
        if got is not None and got[1]:  # rows missing: fill them (once), then ask again
            missing, got = _passed(got[1]), None  # not held while waiting for the turn
            fill(store, table, user, folder, wanted, missing=missing)
            got = table.candidates(wanted, needles)
        if got is None:
            return None
        hits, unknown = got
        only: set[int] | None = hits.keys() | unknown
    else:
        ensure(store, user, folder, messages)
        hits, only = {uid: raw for uid, (raw, _) in table.get(wanted).items()}, None

    def read_header(uid: int) -> bytes:
        raw = hits.get(uid)
        if raw is not None:
            return raw
        try:  # no row (it could not be stored): the file decides
            return store.read_header(user, folder, uid)
        except MessageGoneError:
            return b""

    def read(uid: int) -> bytes:  # pragma: no cover - `answers` keys never read bodies
        try:
            return store.read_message(user, folder, uid)
        except MessageGoneError:
            return b""

    return search.search(
        key,
        messages,
        scope,
        read,
        recent_uids=recent_uids,
        read_header=read_header,
        only_uids=only,
        sizes=sizes,  # RFC822.SIZE as the client sees it (LARGER/SMALLER)
    )


def fields_attr(attr: FetchAttr) -> bool:
    """Is `attr` BODY[HEADER.FIELDS (...)] of the whole message with only indexed names?"""
    section = attr.section
    return (
        attr.name == "BODY"
        and section is not None
        and not section.part
        and section.text == "HEADER.FIELDS"
        and all(n.lower() in INDEXED for n in section.fields)
    )


def fields_item(attr: FetchAttr, raw: bytes) -> bytes:
    """BODY[HEADER.FIELDS (...)]<partial> from stored lines (see `fields_attr`): the named
    fields in their order in the message, then the empty line (RFC 9051 §6.4.5)."""
    names = attr.section.fields if attr.section is not None else ()
    content = b"".join(_fields_pattern(tuple(names)).findall(raw)) + b"\r\n"
    content = content.replace(b"\x00", b"\x80")  # as fetch.fetch_item: no NUL in a literal
    if attr.partial is not None:
        content = partial(content, *attr.partial)
    return content


@functools.lru_cache(maxsize=64)
def _fields_pattern(names: tuple[str, ...]) -> re.Pattern[bytes]:
    """The fields called `names` (any case) with their continuation lines, in stored lines.

    A client's header fetch asks this of every message, and parsing the lines into fields
    (values unfolded) took a quarter of its time. Stored lines are whole fields, each line
    ending in CRLF (`make_row`), so a field is a line starting with its name, optional
    blanks and a colon (mime._FIELD), and the lines after it that start with a blank."""
    if not names:
        return re.compile(rb"(?!)")
    alternatives = b"|".join(re.escape(n.encode("ascii")) for n in names)
    return re.compile(rb"^(?:" + alternatives + rb")[ \t]*:.*\r\n(?:[ \t].*\r\n)*", re.I | re.M)


def stored_fields(attrs: Iterable[FetchAttr]) -> frozenset[FetchAttr]:
    """The attributes of a FETCH that stored rows answer: BODY[HEADER.FIELDS] of indexed
    names, and ENVELOPE unless BODY/BODYSTRUCTURE come along (those need the whole message
    parsed, and the structure cache, imap/cache.py, has all three)."""
    attrs = tuple(attrs)
    structure = any(a.name in ("BODYSTRUCTURE", "BODY") and a.section is None for a in attrs)
    return frozenset(a for a in attrs if fields_attr(a) or (a.name == "ENVELOPE" and not structure))
