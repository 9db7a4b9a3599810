"""SEARCH: evaluate a parsed search key (imap/commands.py) against one message at a time.

RFC 3501 §6.4.4 and RFC 9051 §6.4.4. Pure: no I/O. The caller passes what the store's folder
scan knows (`MessageInfo`, sequence number, \\Recent) plus a `MessageText` that reads the
message only when a key needs it, through callables the session supplies:

- flag, size, date (internal), UID and sequence-set keys never read the message;
- HEADER/FROM/TO/CC/BCC/SUBJECT and SENT* read only the header (`read_header` when the
  session can supply it cheaply, else the whole message once);
- BODY/TEXT read the whole message.

`needed(key)` says which of the three a key needs; `search` first reorders the key (`plan`)
so conjunctions and OR evaluate their cheap operands first: `BODY x SEEN` never reads an
unseen message.

Matching rules:
- Strings match as case-insensitive substrings (Unicode case folding) of the decoded text:
  header values after RFC 2047 decoding (RFC 9051 §6.4.4 "... fields ... after decoding");
  bodies after undoing base64/quoted-printable and decoding the part's charset. Only text/*
  parts and the headers of encapsulated messages are searched in BODY: attachments of other
  types are binary data, not text to find words in.
- BEFORE/ON/SINCE compare the internal date's calendar date in the zone the server shows
  INTERNALDATE in (`tz`, default the server's local zone, as `response.date_time`);
  SENTBEFORE/SENTON/SENTSINCE compare the Date: header's calendar date as written, in its
  own zone ("disregarding time and timezone"). A message without a parsable Date: is taken
  as sent on its internal date, the rule RFC 5256 §2.2 gives SORT (Dovecot instead takes
  1 January 1970, so such mail is "sent before" any date).
- Keywords match case-insensitively.
"""

from __future__ import annotations

import datetime
import email
import email.utils
import enum
import functools
import html.parser
import re
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass
from email.policy import compat32
from typing import assert_never

from mailstack.delivery.store import MessageInfo
from mailstack.imap.commands import (
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
)
from mailstack.imap.envelope import parse_addresses
from mailstack.imap.mime import (
    Entity,
    HeaderField,
    decode_charset,
    decode_transfer,
    decode_words,
    parse_header,
    parse_message,
    to_crlf,
)
from mailstack.imap.values import Value

RECENT = "\\Recent"


class Need(enum.IntEnum):
    """What evaluating a key reads, cheapest first."""

    INFO = 0  # MessageInfo, sequence number, \Recent
    HEADER = 1
    MESSAGE = 2


def needed(key: SearchKey) -> Need:
    """The most a key may read (the session can skip loading, or load only the header)."""
    match key:
        case SearchAll() | SearchFlag() | SearchSize() | SearchSeq() | SearchModseq():
            return Need.INFO
        case SearchDate(sent=sent):
            return Need.HEADER if sent else Need.INFO
        case SearchHeader():
            return Need.HEADER
        case SearchText():
            return Need.MESSAGE
        case SearchNot(key=inner):
            return needed(inner)
        case SearchOr(left=left, right=right):
            return max(needed(left), needed(right))
        case SearchAnd(keys=keys):
            return max((needed(k) for k in keys), default=Need.INFO)
    assert_never(key)


@dataclass(frozen=True, slots=True)
class Candidate:
    """One message of the selected folder as SEARCH sees it without opening it."""

    seq: int
    info: MessageInfo
    is_recent: bool = False
    # RFC822.SIZE as this client sees it when not the stored one (a downgraded message:
    # imap/downgrade_size.py); LARGER/SMALLER compare it.
    seen_size: int | None = None

    @property
    def size(self) -> int:
        return self.info.size if self.seen_size is None else self.seen_size


@dataclass(frozen=True, slots=True)
class Scope:
    """Folder-wide values: what "*" means (RFC 9051 §9) and the zone of internal dates."""

    largest_seq: int
    largest_uid: int
    tz: datetime.tzinfo | None = None


class MessageText:
    """The text a message offers to SEARCH, read and decoded at most once, on demand.

    `read_message` returns the message as stored (LF or CRLF); `read_header`, if given,
    returns at least its header block (so header keys need not read a large body).
    """

    def __init__(
        self,
        read_message: Callable[[], bytes],
        read_header: Callable[[], bytes] | None = None,
    ) -> None:
        self._read_message = read_message
        self._read_header = read_header
        self._data: bytes | None = None
        self._root: Entity | None = None
        self._header: dict[str, list[bytes]] | None = None
        self._raw: bytes | None = None  # the header block from read_header
        self._decoded: dict[str, list[str]] = {}
        self._header_text: str | None = None
        self._body_texts: tuple[str, str] | None = None

    def _message(self) -> tuple[bytes, Entity]:
        if self._data is None or self._root is None:
            self._data = to_crlf(self._read_message())
            self._root = parse_message(self._data)
        return self._data, self._root

    def _fields(self) -> dict[str, list[bytes]]:
        """Raw field values by lower-case name, in order; decoded on demand (`header_values`):
        SUBJECT needs one field decoded, not all of them."""
        if self._header is None:
            if self._data is None and self._read_header is not None:
                data = to_crlf(self._raw_header())
                fields, _ = parse_header(data, 0, len(data))
            else:
                _, root = self._message()
                fields = root.fields
            header: dict[str, list[bytes]] = {}
            for f in fields:
                header.setdefault(f.name.lower(), []).append(f.value)
            self._header = header
        return self._header

    def _raw_header(self) -> bytes:
        if self._raw is None:
            self._raw = self._read_header() if self._read_header is not None else b""
        return self._raw

    def header_may_contain(self, folded: str, *, is_address: bool = False) -> bool:
        """False only if no header field can contain `folded` (a casefolded needle), decided
        without parsing: when the header block is plain ASCII without encoded-words, each
        decoded field value is a piece of the block with its line breaks removed (RFC 5322
        §2.2.3 unfolding), so a needle absent from the whole unbroken block is in no field.
        True when it cannot tell. SUBJECT/FROM searches skip most parses this way.

        An address as matched (`address_values`) is a piece of the block too unless
        parsing changed its middle: a comment, quoting, white space around "@", a run of white
        space, "<" without a space before it, or added a placeholder (`adds_placeholders`);
        `is_address` checks for those first."""
        if (
            not folded
            or not folded.isascii()
            or self._header is not None
            or self._data is not None
            or self._read_header is None
        ):
            return True
        raw = self._raw_header()
        if not raw.isascii() or b"=?" in raw:
            return True
        flat = raw.replace(b"\r", b"").replace(b"\n", b"").lower()
        if is_address and (rewrites_address(flat) or adds_placeholders(raw)):
            return True
        return folded.encode("ascii") in flat

    def header_values(self, name: str) -> list[str]:
        """Every `name` field, RFC 2047-decoded, in order."""
        key = name.lower()
        decoded = self._decoded.get(key)
        if decoded is None:
            decoded = self._decoded[key] = [
                decode_words(v.decode("utf-8", "surrogateescape"))
                for v in self._fields().get(key, [])
            ]
        return decoded

    def address_values(self, name: str) -> list[str]:
        """Every `name` field as its parsed addresses, `Name <mailbox@host>` joined by ", ":
        what ENVELOPE shows, so comments, quoting and folding do not hide an address
        (Dovecot matches FROM/TO/CC/BCC on the same normalised form)."""
        key = "address " + name.lower()
        rendered = self._decoded.get(key)
        if rendered is None:
            rendered = self._decoded[key] = [
                _render_addresses(parse_addresses(v.decode("utf-8", "surrogateescape")))
                for v in self._fields().get(name.lower(), [])
            ]
        return rendered

    def header_text(self) -> str:
        """The whole top-level header, decoded, case-folded."""
        if self._header_text is None:
            self._header_text = "\n".join(
                f"{name}: {v}" for name in self._fields() for v in self.header_values(name)
            ).casefold()
        return self._header_text

    def body_text(self) -> str:
        """The decoded text of the body's text parts and inner headers, case-folded."""
        return self._texts()[0]

    def mime_header_text(self) -> str:
        """The body parts' MIME header fields, decoded, case-folded (TEXT searches them)."""
        return self._texts()[1]

    def loaded(self) -> bool:
        """Has the whole message been read (so `fulltext` costs no further I/O)?"""
        return self._data is not None

    def fulltext(self) -> str:
        """Everything BODY and TEXT can match, case-folded, in one string: what the full-text
        pre-filter indexes (delivery/fulltext.py). Built from the same pieces `matches` looks
        in, so a message that matches contains the needle here too and is never filtered out."""
        return "\n".join((self.header_text(), self.mime_header_text(), self.body_text()))

    def _texts(self) -> tuple[str, str]:
        if self._body_texts is None:
            data, root = self._message()
            texts: list[str] = []
            headers: list[str] = []
            _collect_text(data, root, texts, headers, is_top=True)
            self._body_texts = ("\n".join(texts).casefold(), "\n".join(headers).casefold())
        return self._body_texts


def _field_lines(fields: Iterable[HeaderField]) -> list[str]:
    return [f"{f.name}: {decode_words(f.value.decode('utf-8', 'surrogateescape'))}" for f in fields]


def _collect_text(
    data: bytes, part: Entity, texts: list[str], mime_headers: list[str], *, is_top: bool = False
) -> None:
    """Gather searchable text: text/* bodies decoded, encapsulated messages' headers (text of
    the body), and body parts' MIME headers (only TEXT searches those, RFC 9051 §6.4.4)."""
    if not is_top:
        mime_headers.extend(_field_lines(part.fields))
        name = _attachment_name(data, part)
        if name:
            mime_headers.append(name)
    if part.children:
        for child in part.children:
            _collect_text(data, child, texts, mime_headers)
    elif part.message is not None:
        inner = part.message
        texts.extend(_field_lines(inner.fields))
        for child in inner.children:
            _collect_text(data, child, texts, mime_headers)
        if not inner.children:
            _collect_leaf(data, inner, texts)
    else:
        _collect_leaf(data, part, texts)


def _collect_leaf(data: bytes, part: Entity, texts: list[str]) -> None:
    if part.content_type.maintype.lower() == "text":
        raw = data[part.body_start : part.end]
        decoded = decode_transfer(raw, part.transfer_encoding)
        text = decode_charset(
            raw if decoded is None else decoded, part.content_type.param("charset")
        )
        texts.append(text)
        if part.content_type.subtype.lower() == "html":
            # Also the text a reader sees: "two words" matches "<b>two</b> words".
            texts.append(html_text(text))


def _attachment_name(data: bytes, part: Entity) -> str:
    """A body part's file name (Content-Disposition filename, else Content-Type name), RFC 2231
    and RFC 2047 decoded, so TEXT finds attachments by the name the reader sees."""
    header = email.message_from_bytes(data[part.start : part.body_start], policy=compat32)
    try:
        name = header.get_filename()
    except (LookupError, ValueError):  # an unknown charset in an RFC 2231 value
        return ""
    return decode_words(name) if name else ""


class _HtmlText(html.parser.HTMLParser):
    """Collects the text of an HTML document: character data outside script/style, entities
    resolved (the stdlib parser does the tokenising)."""

    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self._skipping += 1
        elif tag in ("br", "p", "div", "li", "tr", "td", "th", "h1", "h2", "h3"):
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self._skipping:
            self._skipping -= 1

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    """The visible text of an HTML part, whitespace runs collapsed to one space per line."""
    parser = _HtmlText()
    try:
        parser.feed(markup)
        parser.close()
    except (AssertionError, ValueError):  # the stdlib parser gives up on some malformed input
        pass
    lines = ("".join(parser.parts)).splitlines()
    return "\n".join(" ".join(line.split()) for line in lines if line.strip())


# What parsing an address removes from between its characters (see header_may_contain):
# a comment, quoting, an escape, a tab, a run of spaces, space around "@", and "<" after
# anything but a space (the last in `rewrites_address`).
_REWRITTEN = (b"(", b'"', b"\\", b"\t", b"  ", b" @", b"@ ")


def rewrites_address(flat: bytes) -> bool:
    """Whether parsing an address list (unfolded, `flat`) may remove something from between
    its characters, by substring tests (a regex trying the five alternatives at each
    position cost 3 us a message on a first header fetch; tests/imap/
    test_address_prefilter.py holds the two equal). "<" after anything but a space: every
    "<" but those after a space and one at the start."""
    if any(piece in flat for piece in _REWRITTEN):
        return True
    return flat.count(b"<") > flat.count(b" <") + flat.startswith(b"<")


_ADDRESS_FIELD = re.compile(rb"^(?:from|to|cc|bcc)[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_FOLD = re.compile(rb"\r?\n(?=[ \t])")
_MAILBOX_AT = re.compile(rb"[^\s<,@]@")


def adds_placeholders(header: bytes) -> bool:
    """Whether parsing the From/To/Cc/Bcc fields may add text the block does not hold: an
    address without "@" or without a local part gets a placeholder host or mailbox
    (envelope.MISSING_DOMAIN, MISSING_MAILBOX), so a search for "@" or "missing" can match
    what no line holds. Conservative: any comma-separated piece without "x@" counts (a
    group, a quoted comma)."""
    unfolded = _FOLD.sub(b"", header)
    return any(not _is_placeholder_free(m[1]) for m in _ADDRESS_FIELD.finditer(unfolded))


def address_lines_add_placeholders(lines: Iterable[bytes]) -> bool:
    """`adds_placeholders` of header lines already known to be From/To/Cc/Bcc fields, each
    with its folded continuation lines (what a first header fetch has in hand: no regex
    over the block to find them)."""
    return any(not _is_placeholder_free(line.partition(b":")[2]) for line in lines)


_NOT_BEFORE_AT = frozenset(b" \t\n\r\x0b\x0c<,@")  # what `_MAILBOX_AT` refuses before "@"


def _is_placeholder_free(value: bytes) -> bool:
    """No piece of this address field's value (folded or not: a fold never joins a
    mailbox's last character and its "@") lacks a "x@"."""
    if b"," not in value:  # one piece: most From and To fields
        at = value.find(b"@")
        if at > 0 and value[at - 1] not in _NOT_BEFORE_AT:  # the usual "x@": no regex
            return True
        return _MAILBOX_AT.search(value) is not None or not value.strip()
    return all(
        _MAILBOX_AT.search(piece) is not None or not piece.strip() for piece in value.split(b",")
    )


def _render_addresses(addresses: Value) -> str:
    """An address list from `envelope.parse_addresses` as text to search in."""
    out = []
    for address in addresses if isinstance(addresses, tuple) else ():
        if not isinstance(address, tuple) or len(address) != 4:  # pragma: no cover
            continue
        name, _adl, mailbox, host = address
        if not isinstance(mailbox, str):  # a group's end: all NIL
            continue
        if not isinstance(host, str):  # a group's start: its name in the mailbox slot
            out.append(decode_words(mailbox) + ":")
            continue
        spec = f"{mailbox}@{host}"
        out.append(f"{decode_words(name)} <{spec}>" if isinstance(name, str) else spec)
    return ", ".join(out)


def _contains(haystack: Iterable[str], needle: str) -> bool:
    folded = needle.casefold()
    return any(folded in h.casefold() for h in haystack)


def sent_date(text: MessageText) -> datetime.date | None:
    """The calendar date of the Date: header as written (its own zone), None if unparsable."""
    values = text.header_values("Date")
    if not values:
        return None
    try:
        parsed = email.utils.parsedate_tz(values[0])
        if parsed is None:
            return None
        return datetime.date(parsed[0], parsed[1], parsed[2])
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def internal_day(timestamp: float, tz: datetime.tzinfo | None) -> datetime.date:
    """The calendar date INTERNALDATE shows (see the module docstring)."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).astimezone(tz).date()


def _compare(op: str, day: datetime.date, wanted: datetime.date) -> bool:
    if op == "BEFORE":
        return day < wanted
    if op == "ON":
        return day == wanted
    return day >= wanted  # SINCE


def plan(key: SearchKey) -> SearchKey:
    """The same key with cheap operands first (And children and Or sides ordered by what
    they read), so evaluation short-circuits before opening messages. Done once per SEARCH:
    `matches` evaluates in the order given."""
    match key:
        case SearchNot(key=inner):
            return SearchNot(plan(inner))
        case SearchOr(left=left, right=right):
            a, b = plan(left), plan(right)
            return SearchOr(a, b) if needed(a) <= needed(b) else SearchOr(b, a)
        case SearchAnd(keys=keys):
            return SearchAnd(tuple(sorted((plan(k) for k in keys), key=needed)))
    return key


def matches(key: SearchKey, message: Candidate, scope: Scope, text: MessageText) -> bool:
    """Does `message` satisfy `key`? Reads through `text` only what the key needs."""
    match key:
        case SearchAll():
            return True
        case SearchFlag(flag=flag, is_set=is_set):
            if flag == RECENT:
                return message.is_recent == is_set
            has = flag.casefold() in {f.casefold() for f in message.info.flags}
            return has == is_set
        case SearchSize(op=op, size=size):
            return message.size > size if op == "LARGER" else message.size < size
        case SearchModseq(modseq=modseq):
            return message.info.modseq >= modseq  # RFC 7162 §3.1.5
        case SearchSeq(seqset=seqset, uid=uid):
            if uid:
                return seqset.contains(message.info.uid, scope.largest_uid)
            return seqset.contains(message.seq, scope.largest_seq)
        case SearchDate(op=op, date=wanted, sent=sent):
            day = sent_date(text) if sent else None
            if day is None:
                day = internal_day(message.info.internal_date, scope.tz)
            return _compare(op, day, wanted)
        case SearchHeader(field=name, value=value, address=True):
            if value and not text.header_may_contain(value.casefold(), is_address=True):
                return False
            values = text.address_values(name)
            return bool(values) and (not value or _contains(values, value))
        case SearchHeader(field=name, value=value):
            if value and not text.header_may_contain(value.casefold()):
                return False
            values = text.header_values(name)
            # RFC 9051 §6.4.4: an empty string matches every message that has the field.
            return bool(values) and (not value or _contains(values, value))
        case SearchText(where=where, value=value):
            folded = value.casefold()
            if where == "TEXT" and (
                folded in text.header_text() or folded in text.mime_header_text()
            ):
                return True
            return folded in text.body_text()
        case SearchNot(key=inner):
            return not matches(inner, message, scope, text)
        case SearchOr(left=left, right=right):
            return matches(left, message, scope, text) or matches(right, message, scope, text)
        case SearchAnd(keys=keys):
            return all(matches(k, message, scope, text) for k in keys)
    assert_never(key)


def reads_size(key: SearchKey) -> bool:
    """Does `key` compare sizes (LARGER/SMALLER) anywhere? The session then finds the
    sizes a client without UTF8=ACCEPT sees (imap/downgrade_size.py) before searching."""
    match key:
        case SearchSize():
            return True
        case SearchNot(key=inner):
            return reads_size(inner)
        case SearchOr(left=left, right=right):
            return reads_size(left) or reads_size(right)
        case SearchAnd(keys=keys):
            return any(reads_size(k) for k in keys)
    return False


def required_texts(key: SearchKey) -> list[str]:
    """Case-folded strings that every message matching `key` contains in its `fulltext`: the
    BODY/TEXT values of the key itself or of its top-level AND (not under OR or NOT). The
    full-text pre-filter narrows a search to the messages containing all of them."""
    match key:
        case SearchText(value=value):
            return [value.casefold()]
        case SearchAnd(keys=keys):
            return [t for k in keys for t in required_texts(k)]
    return []


def search(
    key: SearchKey,
    messages: Iterable[MessageInfo],
    scope: Scope,
    read_message: Callable[[int], bytes],
    *,
    recent_uids: frozenset[int] = frozenset(),
    read_header: Callable[[int], bytes] | None = None,
    only_uids: Container[int] | None = None,
    on_loaded: Callable[[int, MessageText], None] | None = None,
    sizes: Mapping[int, int] | None = None,
) -> list[Candidate]:
    """Messages (in order, numbered from 1) that satisfy `key`.

    `read_message(uid)` / `read_header(uid)` are called only for messages whose evaluation
    needs them; exceptions they raise (e.g. MessageGoneError) propagate to the session.
    `only_uids`: the pre-filter's verdict; other messages cannot match and are skipped.
    `on_loaded(uid, text)` is told of each message that had to be read in full (the session
    indexes its text then, while it is at hand).
    `sizes`: {uid: RFC822.SIZE} where the client sees another size than the stored one.
    """
    key = plan(key)
    found: list[Candidate] = []
    for seq, info in enumerate(messages, start=1):
        if only_uids is not None and info.uid not in only_uids:
            continue
        seen = None if sizes is None else sizes.get(info.uid)
        candidate = Candidate(seq, info, info.uid in recent_uids, seen)
        text = MessageText(
            functools.partial(read_message, info.uid),
            None if read_header is None else functools.partial(read_header, info.uid),
        )
        if matches(key, candidate, scope, text):
            found.append(candidate)
        if on_loaded is not None and text.loaded():
            on_loaded(info.uid, text)
    return found
