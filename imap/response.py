"""Builds IMAP server responses: the only place that quotes strings or emits literals.

RFC 9051 §7 (and RFC 3501 §7): untagged `* ...`, tagged `tag OK|NO|BAD [CODE] text`,
continuation `+ text`. Strings go out as an atom where the grammar allows one (astring),
as a quoted string when they are 7-bit and free of CR, LF and NUL, and as a literal
otherwise (RFC 9051 §4.3), so every value survives `imap.parser` unchanged
(tests/imap/test_response.py checks that round trip with hypothesis).

Everything returns bytes ready for the socket. Pure: no I/O.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.imap.fetch import Structure
from mailstack.imap.values import Bodies, Value

# ASTRING-CHAR minus nothing: what may go out bare where the grammar says astring.
_ATOM_SAFE = re.compile(r"[^(){ \x00-\x1f\x7f%*\"\\\x80-\U0010ffff]+")
# QUOTED-CHAR (RFC 3501): any 7-bit TEXT-CHAR; "\" and DQUOTE are escaped.
_QUOTABLE = re.compile(r"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_QUOTABLE_BYTES = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_TEXT_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")  # resp-text must be a single line of TEXT-CHAR
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTHS_B = tuple(m.encode("ascii") for m in _MONTHS)

# Quoted strings longer than this go out as literals: easier on clients' line buffers.
_MAX_QUOTED = 1024


def literal(data: bytes) -> bytes:
    """A synchronizing-literal form `{n}\\r\\n<data>` (servers never wait for "+")."""
    return b"{%d}\r\n" % len(data) + data


def string(value: str | bytes) -> bytes:
    """A quoted string if possible, else a literal (RFC 9051 §4.3)."""
    if len(value) > _MAX_QUOTED:  # message bodies: skip decoding megabytes to decide
        return literal(value.encode("utf-8") if isinstance(value, str) else value)
    if isinstance(value, bytes):
        # Bytes as they are, no decode and encode: ENVELOPE renders a few per message.
        if not value.isascii():
            return literal(value)
        if _QUOTABLE_BYTES.fullmatch(value):
            if b"\\" in value or b'"' in value:
                value = value.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            return b'"' + value + b'"'
        return literal(value)
    text = value
    if len(text) <= _MAX_QUOTED and _QUOTABLE.fullmatch(text):
        if "\\" in text or '"' in text:
            text = text.replace("\\", "\\\\").replace('"', '\\"')
        return b'"' + text.encode("ascii") + b'"'
    return literal(text.encode("utf-8") if isinstance(value, str) else value)


def value(item: Value) -> bytes:
    """Render a FETCH value tree (see imap/fetch.py): None NIL, int number, str/bytes string,
    tuple a parenthesised list, `Bodies` the child bodies of a multipart back to back.
    Bytes holding NUL can only be a literal8 (RFC 3516 §4.2, BINARY content)."""
    # Exact-type checks first: ENVELOPE/BODYSTRUCTURE trees are mostly str, None and plain
    # tuples, and a cold FETCH of a folder renders a few hundred of them per message.
    kind = type(item)
    if kind is str:
        return string(item)  # type: ignore[arg-type]
    if item is None:
        return b"NIL"
    if kind is tuple:
        return b"(" + b" ".join([value(v) for v in item]) + b")"  # type: ignore[union-attr]
    if isinstance(item, bool):  # pragma: no cover - not a Value, but bool is an int
        raise TypeError("bool is not an IMAP value")
    if isinstance(item, int):
        return b"%d" % item
    if isinstance(item, str):
        return string(item)
    if isinstance(item, bytes):
        if b"\x00" in item:
            return b"~{%d}\r\n" % len(item) + item
        return string(item)
    if isinstance(item, Bodies):
        return b"".join([value(v) for v in item])
    return b"(" + b" ".join([value(v) for v in item]) + b")"


def nstring(value: str | bytes | None) -> bytes:
    return b"NIL" if value is None else string(value)


def astring(value: str) -> bytes:
    """An atom when the text is one (and not NIL, which would read as nil), else a string."""
    if _ATOM_SAFE.fullmatch(value) and value.upper() != "NIL":
        return value.encode("ascii")
    return string(value)


def mailbox(name: str) -> bytes:
    """A mailbox name as LIST/STATUS print it (astring; "]" is allowed in atoms there)."""
    return astring(name)


def flag_list(flags: Iterable[str]) -> bytes:
    """'(\\Seen $Forwarded)'. Flags are atoms by construction (the parser and store ensure)."""
    return b"(" + " ".join(flags).encode("ascii", "replace") + b")"


def date_time(ts: float, tz: datetime.tzinfo | None = None) -> bytes:
    """INTERNALDATE: DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE."""
    if tz is None:
        # The server's local zone, as Dovecot reports it, through the C library: a client's
        # header fetch asks this of every message, and datetime's zone arithmetic cost a
        # fifth of it.
        t = time.localtime(ts)
        minutes = t.tm_gmtoff // 60
        sign = "+" if minutes >= 0 else "-"
        minutes = abs(minutes)
        return b'"%2d-%s-%04d %02d:%02d:%02d %s%02d%02d"' % (
            t.tm_mday,
            _MONTHS_B[t.tm_mon - 1],
            t.tm_year,
            t.tm_hour,
            t.tm_min,
            t.tm_sec,
            sign.encode(),
            minutes // 60,
            minutes % 60,
        )
    when = datetime.datetime.fromtimestamp(ts, tz)
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    return (
        f'"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} '
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    ).encode("ascii")


def _text(text: str) -> bytes:
    # resp-text is one line; never let a message (e.g. an exception's) break the framing.
    return _TEXT_UNSAFE.sub(" ", text).encode("utf-8", "replace")


def _code(code: str | None) -> bytes:
    return b"[" + _text(code).replace(b"]", b" ") + b"] " if code else b""


def untagged(data: bytes | str) -> bytes:
    """`* <data>\\r\\n`; `data` is already-formatted response data (may contain literals)."""
    return b"* " + (data.encode("ascii") if isinstance(data, str) else data) + b"\r\n"


def untagged_status(status: str, text: str, code: str | None = None) -> bytes:
    """`* OK [CODE] text` / `* NO` / `* BAD` / `* BYE` / `* PREAUTH`."""
    return b"* " + status.encode("ascii") + b" " + _code(code) + _text(text) + b"\r\n"


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """`tag OK|NO|BAD [CODE] text`."""
    return (
        tag.encode("ascii", "replace")
        + b" "
        + status.encode("ascii")
        + b" "
        + _code(code)
        + _text(text)
        + b"\r\n"
    )


def ok(tag: str, text: str, code: str | None = None) -> bytes:
    return tagged(tag, "OK", text, code)


def no(tag: str, text: str, code: str | None = None) -> bytes:
    return tagged(tag, "NO", text, code)


def bad(tag: str, text: str, code: str | None = None) -> bytes:
    return tagged(tag, "BAD", text, code)


def bye(text: str, code: str | None = None) -> bytes:
    return untagged_status("BYE", text, code)


def continuation(text: str | bytes = "") -> bytes:
    """`+ text` (a base64 SASL challenge is passed as bytes)."""
    body = text if isinstance(text, bytes) else _text(text)
    return b"+ " + body + b"\r\n" if body else b"+ \r\n"


def exists(count: int) -> bytes:
    return b"* %d EXISTS\r\n" % count


def recent(count: int) -> bytes:
    return b"* %d RECENT\r\n" % count


def expunge(seq: int) -> bytes:
    return b"* %d EXPUNGE\r\n" % seq


def fetch(seq: int, items: Iterable[bytes]) -> bytes:
    """`* seq FETCH (item item ...)`; each item already formatted (`FLAGS (\\Seen)`)."""
    return b"* %d FETCH (" % seq + b" ".join(items) + b")\r\n"


def capability(caps: Iterable[str]) -> bytes:
    return untagged("CAPABILITY " + " ".join(caps))


def now() -> float:
    return time.time()


_GLOBAL = re.compile(rb'"message" "global"', re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class RenderedStructure:
    """ENVELOPE, BODY and BODYSTRUCTURE of one message as they go on the wire.

    What the structure cache (imap/cache.py) keeps: a warm FETCH of these items then only
    copies bytes (rendering a `Structure` costs about as much as decoding it again). The
    rendering depends on nothing but the message (no ENABLEd extension changes it)."""

    envelope: bytes
    body: bytes
    bodystructure: bytes

    _FORMAT = "r1"  # bump when the rendering changes: old cache rows then fail from_json

    @classmethod
    def of(cls, structure: Structure) -> RenderedStructure:
        return cls(value(structure.envelope), value(structure.body), value(structure.bodystructure))

    @property
    def has_8bit(self) -> bool:
        """Raw 8-bit header text inside (imap/downgrade.py: a UTF-8 header, RFC 6532)."""
        return not (self.envelope.isascii() and self.bodystructure.isascii())

    @property
    def has_global(self) -> bool:
        """A message/global part inside, which a UTF-8 client sees opened (imap/mime.py
        `parse_message`); the cached rendering is the IMAP4rev1 one, where it is a leaf.
        A false positive (the words in a parameter) only costs a parse."""
        return _GLOBAL.search(self.bodystructure) is not None

    def item(self, name: str) -> bytes:
        """ENVELOPE, BODY (no section) or BODYSTRUCTURE."""
        match name:
            case "ENVELOPE":
                return self.envelope
            case "BODY":
                return self.body
            case "BODYSTRUCTURE":
                return self.bodystructure
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(
            [
                self._FORMAT,
                self.envelope.decode("latin-1"),
                self.body.decode("latin-1"),
                self.bodystructure.decode("latin-1"),
            ]
        )

    @classmethod
    def from_json(cls, text: str) -> RenderedStructure:
        """Inverse of `to_json`. Raises ValueError on anything `to_json` did not produce."""
        try:
            fmt, *parts = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a cached structure: {exc}") from exc
        if fmt != cls._FORMAT or len(parts) != 3 or not all(isinstance(p, str) for p in parts):
            raise ValueError("not a cached structure of this version")
        try:
            envelope, body, bodystructure = (p.encode("latin-1") for p in parts)
        except UnicodeEncodeError as exc:
            raise ValueError(f"not a cached structure: {exc}") from exc
        return cls(envelope, body, bodystructure)
