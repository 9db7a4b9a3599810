"""The token level of the IMAP command grammar: `Reader`, a cursor over one command's bytes
that reads RFC 9051 §9 terminals (atoms, astrings, quoted strings, literals, numbers, sequence
sets, flags, date-times), and `ParseError`. imap/parser.py builds the command grammar on it.

Pure: no I/O. A syntax error inside a grammar function is `BadSyntaxError` (no tag known
there); `parse_command` turns it into `ParseError` with the command's tag.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from typing import TypeVar

from mailstack.imap.sequence import SequenceSet, SequenceSetError, parse_sequence_set

from mailstack.base.flags import Flag

# RFC 9051 §9: ATOM-CHAR = <any CHAR except atom-specials>
#   atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\\]\x80-\xff]+')
_ASTRING_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\\x80-\xff]+')  # ASTRING-CHAR adds "]"
_LIST_ATOM = re.compile(rb'[^(){ \x00-\x1f\x7f"\\\x80-\xff]+')  # list-char adds % * ]
_NUMBER = re.compile(rb"\d+")
_SEQSET = re.compile(rb"[0-9:*,$]+")
_LITERAL = re.compile(rb"~?\{(\d{1,19})\+?\}\r\n")

# date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone DQUOTE
_DATE_TIME = re.compile(
    r" ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}
_SYSTEM_FLAGS = {f.value.upper(): f.value for f in Flag} | {"\\RECENT": "\\Recent"}


class ParseError(Exception):
    """The command is malformed; answer `tag BAD reason` (the connection stays usable)."""

    def __init__(self, tag: str, reason: str) -> None:
        super().__init__(f"{tag} BAD {reason}")
        self.tag = tag
        self.reason = reason


class BadSyntaxError(Exception):
    """Internal: a syntax error at the current position (becomes ParseError with the tag)."""


def normalize_mailbox(name: str) -> str:
    """RFC 9051 §5.1: "INBOX" is case-insensitive; every other name is case-sensitive."""
    return "INBOX" if name.upper() == "INBOX" else name


def canonical_flag(flag: str) -> str:
    """'\\seen' -> '\\Seen' (system flags are case-insensitive, RFC 9051 §2.3.2)."""
    return _SYSTEM_FLAGS.get(flag.upper(), flag) if flag.startswith("\\") else flag


def _decode(raw: bytes) -> str:
    # RFC 9051 allows UTF-8 in quoted strings; legacy clients send Latin-1 passwords, which
    # cannot be valid UTF-8 in most cases, so fall back rather than refuse.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class Reader:
    """A cursor over one command's bytes with the grammar's terminals."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    # -- low level -----------------------------------------------------------------------------
    def peek(self, n: int = 1) -> bytes:
        return self.data[self.pos : self.pos + n]

    def at(self, text: bytes) -> bool:
        return self.data[self.pos : self.pos + len(text)].upper() == text

    def accept(self, text: bytes) -> bool:
        if self.at(text):
            self.pos += len(text)
            return True
        return False

    def expect(self, text: bytes, what: str | None = None) -> None:
        if not self.accept(text):
            raise BadSyntaxError(f"expected {what or text.decode()}")

    def sp(self) -> None:
        if not self.accept(b" "):
            raise BadSyntaxError("expected a space")

    def match(self, pattern: re.Pattern[bytes], what: str) -> bytes:
        m = pattern.match(self.data, self.pos)
        if m is None:
            raise BadSyntaxError(f"expected {what}")
        self.pos = m.end()
        return m[0]

    def at_end(self) -> bool:
        return self.data[self.pos :] == b"\r\n"

    def end(self) -> None:
        if not self.at_end():
            if self.pos >= len(self.data) - 2:
                raise BadSyntaxError("unexpected end of command")
            raise BadSyntaxError(f"unexpected characters at position {self.pos}")

    # -- terminals -----------------------------------------------------------------------------
    def atom(self, what: str = "an atom") -> str:
        return self.match(_ATOM, what).decode("ascii")

    def keyword(self, what: str = "a keyword") -> str:
        return self.atom(what).upper()

    def number(self, what: str = "a number") -> int:
        digits = self.match(_NUMBER, what)
        if len(digits) > 19:
            raise BadSyntaxError(f"{what} is too large")
        return int(digits)

    def nz_number(self, what: str = "a non-zero number") -> int:
        n = self.number(what)
        if n == 0 or n > 2**32 - 1:
            raise BadSyntaxError(f"{what} must be in 1..4294967295")
        return n

    def quoted(self) -> str:
        """quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR escapes only "\\" and DQUOTE."""
        self.expect(b'"', "a quoted string")
        out = bytearray()
        while True:
            ch = self.data[self.pos : self.pos + 1]
            if not ch or ch in b"\r\n":
                raise BadSyntaxError("unterminated quoted string")
            self.pos += 1
            if ch == b'"':
                return _decode(bytes(out))
            if ch == b"\\":
                esc = self.data[self.pos : self.pos + 1]
                if esc not in (b"\\", b'"'):
                    raise BadSyntaxError("bad escape in quoted string")
                self.pos += 1
                out += esc
            elif ch == b"\x00":
                raise BadSyntaxError("NUL in quoted string")
            else:
                out += ch

    def literal_bytes(self) -> bytes:
        m = _LITERAL.match(self.data, self.pos)
        if m is None:
            raise BadSyntaxError("expected a literal")
        size = int(m[1])
        start = m.end()
        if start + size > len(self.data):
            raise BadSyntaxError("literal is shorter than announced")
        self.pos = start + size
        return self.data[start : start + size]

    def string(self) -> str:
        if self.peek() == b'"':
            return self.quoted()
        if self.peek() == b"{" or self.peek(2) == b"~{":
            raw = self.literal_bytes()
            if b"\x00" in raw:
                raise BadSyntaxError("NUL in a string literal")
            return _decode(raw)
        raise BadSyntaxError("expected a string")

    def _at_string(self) -> bool:
        """A quoted string or a literal starts here ("~" alone is an atom char; "~{" is a
        literal8, RFC 3516 §4.1)."""
        return self.peek() in (b'"', b"{") or self.peek(2) == b"~{"

    def astring(self, what: str = "a string") -> str:
        if self._at_string():
            return self.string()
        return _decode(self.match(_ASTRING_ATOM, what))

    def nstring(self) -> str | None:
        if self.at(b"NIL") and not _ATOM.match(self.data, self.pos + 3):
            self.pos += 3
            return None
        return self.string()

    def mailbox(self) -> str:
        return normalize_mailbox(self.astring("a mailbox name"))

    def list_mailbox(self) -> str:
        if self._at_string():
            return self.string()
        return _decode(self.match(_LIST_ATOM, "a mailbox pattern"))

    def seqset(self) -> SequenceSet:
        text = self.match(_SEQSET, "a sequence set").decode("ascii")
        try:
            return parse_sequence_set(text)
        except SequenceSetError as exc:
            raise BadSyntaxError(str(exc)) from None

    def flag(self) -> str:
        """flag = "\\Answered" / ... / flag-keyword / flag-extension ("\\" atom)."""
        if self.accept(b"\\"):
            return canonical_flag("\\" + self.atom("a flag"))
        return self.atom("a flag")

    def flag_list(self) -> tuple[str, ...]:
        self.expect(b"(", "a flag list")
        flags: list[str] = []
        if not self.accept(b")"):
            flags.append(self.flag())
            while not self.accept(b")"):
                self.sp()
                flags.append(self.flag())
        return tuple(flags)

    def paren_list(self, item: Callable[[], str], what: str) -> tuple[str, ...]:
        """ "(" item *(SP item) ")" with at least one item."""
        self.expect(b"(", f"a list of {what}")
        items = [item()]
        while not self.accept(b")"):
            self.sp()
            items.append(item())
        return tuple(items)

    def date(self) -> datetime.date:
        """date = date-text / DQUOTE date-text DQUOTE; date-text = d[d]-Mon-yyyy."""
        text = self.quoted() if self.peek() == b'"' else self.atom("a date")
        m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", text)
        if m is None or m[2].upper() not in _MONTHS:
            raise BadSyntaxError(f"expected a date such as 1-Feb-2024, got {text!r}")
        try:
            return datetime.date(int(m[3]), _MONTHS[m[2].upper()], int(m[1]))
        except ValueError:
            raise BadSyntaxError(f"no such date: {text!r}") from None

    def date_time(self) -> datetime.datetime:
        """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
        DQUOTE, e.g. " 1-Feb-2024 13:05:00 +0100"."""
        text = self.quoted()
        m = _DATE_TIME.fullmatch(text)
        if m is None or m[2].upper() not in _MONTHS:
            raise BadSyntaxError(
                f'expected a date-time such as "01-Feb-2024 13:05:00 +0100", got {text!r}'
            )
        offset = datetime.timedelta(hours=int(m[8]), minutes=int(m[9]))
        try:
            zone = datetime.timezone(-offset if m[7] == "-" else offset)
            return datetime.datetime(
                int(m[3]),
                _MONTHS[m[2].upper()],
                int(m[1]),
                int(m[4]),
                int(m[5]),
                int(m[6]),
                tzinfo=zone,
            )
        except ValueError:
            raise BadSyntaxError(f"no such date-time: {text!r}") from None


_T = TypeVar("_T")


def one_mailbox(cls: Callable[[str, str], _T]) -> Callable[[Reader, str], _T]:
    """The parser of a command whose only argument is a mailbox name (DELETE, GETACL, ...)."""

    def parse(r: Reader, tag: str) -> _T:
        r.sp()
        return cls(tag, r.mailbox())

    return parse
