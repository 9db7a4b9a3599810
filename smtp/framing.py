"""SMTP framing: command lines (`check_command_line`, `parse_command`), DATA after `354` (found
with bytes.find, not per line) and BDAT chunks' line endings (`LineEndings`).

RFC 5321 §4.1.1.4: the message ends at `<CRLF>.<CRLF>`; §4.5.2: a line starting with "." has
that dot removed (transparency). aiosmtpd reads DATA one line at a time with a coroutine step
per line, which on a 25 MB message keeps the event loop busy for seconds; this framer does
O(chunk) C-level work (find, count, split, replace) per chunk instead.

Invariants:
- Only `<CR><LF>.<CR><LF>` ends the message. `<LF>.<LF>` or `<CR>.<CR>` never do: that is the
  SMTP smuggling attack (CVE-2023-51764/5/6). Any bare <CR> or <LF> in the message is an error
  reported at once (`BARE_NEWLINE`), as Postfix's `smtpd_forbid_bare_newline`; the transport
  then replies and closes, since the client's idea of where the message ends is not ours.
- Lines longer than 1000 octets (RFC 5321 §4.5.3.1.6; 1001 with a transparency dot) or a
  message over `max_bytes` are errors reported after the terminator (§4.2.5: reply to the
  whole DATA), and the buffered content is dropped at once so memory stays bounded.
- Bytes after the terminator (pipelined commands) are returned in `leftover`.
Pure: no I/O, usable byte by byte (tests/smtp/test_framing.py checks chunking invariance).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from mailstack.smtp import replies
from mailstack.smtp.replies import Reply

TERMINATOR = b"\r\n.\r\n"
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF, plus one for the dot.
MAX_LINE_BYTES = 1001


# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. MAIL may carry
# SIZE= (RFC 1870 §3: +26), BODY=8BITMIME (+15) and SMTPUTF8 (RFC 6531 §3.4: +10).
MAX_COMMAND_BYTES = 512
MAX_MAIL_COMMAND_BYTES = 512 + 26 + 15 + 10
_VERB = re.compile(rb"^[A-Za-z]{1,16}$")


@dataclass(frozen=True, slots=True)
class Command:
    verb: str  # upper case
    arg: str | None  # stripped; bytes that are not UTF-8 as surrogate escapes


def check_command_line(line: bytes) -> bytes | Reply:
    """A line as cut at its LF -> the line without CRLF, or the Reply that refuses it.

    RFC 5321 §2.3.8: lines end with <CRLF>; a bare <LF> or <CR> or a NUL is refused.
    """
    if len(line) > MAX_MAIL_COMMAND_BYTES:
        return replies.LINE_TOO_LONG
    if not line.endswith(b"\r\n"):
        return replies.BARE_LF_IN_COMMAND
    line = line[:-2]
    if b"\0" in line:
        return replies.NUL_IN_COMMAND
    if b"\r" in line:
        return replies.BARE_LF_IN_COMMAND.with_text("Bare <CR> in command")
    return line


def parse_command(line: bytes) -> Command | Reply:
    """RFC 5321 §4.1.1: `verb [SP argument]` (a line `check_command_line` passed)."""
    verb, _, arg_bytes = line.partition(b" ")
    if not _VERB.match(verb):
        return replies.COMMAND_UNRECOGNIZED
    command = verb.decode("ascii").upper()
    if len(line) + 2 > MAX_COMMAND_BYTES and command != "MAIL":
        return replies.LINE_TOO_LONG
    # Bytes that are not UTF-8 stay surrogate escapes: smtp.arguments refuses them in paths.
    arg = arg_bytes.strip().decode("utf-8", "surrogateescape") or None
    return Command(command, arg)


# RFC 3030 §2: bdat-cmd = "BDAT" SP chunk-size [ SP end-marker ] CRLF; chunk-size = 1*DIGIT;
# end-marker = "LAST". 15 digits: more than any message we take, and int() stays cheap.
_BDAT_ARG = re.compile(r"^(\d{1,15})(?:[ \t]+(LAST))?[ \t]*$", re.IGNORECASE)


def parse_bdat(arg: str | None) -> tuple[int, bool] | None:
    """BDAT's argument -> (chunk size, is last); None when malformed."""
    m = _BDAT_ARG.match(arg or "")
    return None if m is None else (int(m[1]), m[2] is not None)


class DataError(enum.Enum):
    TOO_BIG = "too big"
    LINE_TOO_LONG = "line too long"
    BARE_NEWLINE = "bare newline"


@dataclass(frozen=True, slots=True)
class DataEnd:
    """The framer's only event: the message ended (or was abandoned on BARE_NEWLINE)."""

    content: bytes  # dot-unstuffed message, CRLF line endings; b"" when `error` is set
    error: DataError | None
    size: int  # octets before the terminator, as sent (dot-stuffed); on BARE_NEWLINE: so far
    leftover: bytes  # bytes after the terminator (b"" on BARE_NEWLINE)
    # `content` in pieces (with join=False content is b""); the same message, so not compared.
    parts: tuple[bytes, ...] = field(default=(), compare=False)


class DataFramer:
    """Feeds on the bytes after `354`; yields one DataEnd."""

    def __init__(
        self, *, max_bytes: int, max_line_bytes: int = MAX_LINE_BYTES, join: bool = True
    ) -> None:
        self._join = join  # False: the caller takes `parts` (no join of 25 MB in one C call)
        self._max_bytes = max_bytes
        self._max_line = max_line_bytes
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._size = 0
        self._error: DataError | None = None
        self._at_line_start = True  # the next byte starts a line
        self._pending_cr = False  # the last processed byte was a CR awaiting its LF
        self._line_len = 0  # length of the unfinished line so far
        self._event: DataEnd | None = None

    def receive_data(self, data: bytes) -> None:
        if (ev := self._event) is not None:
            if ev.error is not DataError.BARE_NEWLINE:  # after the end: pipelined commands
                self._event = DataEnd(ev.content, ev.error, ev.size, ev.leftover + data, ev.parts)
            return  # after BARE_NEWLINE the session ends; what follows is not ours to parse
        self._buf += data
        self._advance()

    def next_event(self) -> DataEnd | None:
        return self._event

    # -- internals -----------------------------------------------------------------------------
    def _advance(self) -> None:
        buf = self._buf
        if self._at_line_start and not self._pending_cr and buf.startswith(b".\r\n"):
            self._finish(0, 3)  # the message ends right after a previous line's CRLF
            return
        # A terminator at the very start of the buffer with a CR left in the previous chunk:
        # "\r" | "\n.\r\n".
        if self._pending_cr and buf.startswith(b"\n.\r\n"):
            self._process(bytes(buf[:1]))
            self._finish(1, 4)
            return
        end = buf.find(TERMINATOR)
        if end >= 0:
            self._process(bytes(buf[: end + 2]))
            if self._event is None:
                self._finish(end + 2, 3)
            return
        keep = _held_back(buf, at_line_start=self._at_line_start)
        if len(buf) > keep:
            self._process(bytes(buf[: len(buf) - keep]))
            del buf[: len(buf) - keep]

    def _finish(self, start: int, length: int) -> None:
        leftover = bytes(self._buf[start + length :])
        self._buf = bytearray()
        parts = tuple(self._out) if self._error is None else ()
        content = b"".join(parts) if self._join else b""
        self._out = []
        self._event = DataEnd(content, self._error, self._size, leftover, parts)

    def _process(self, region: bytes) -> None:
        """Validate and unstuff a run of message bytes that contains no terminator."""
        if not region:
            return
        self._size += len(region)
        at_line_start, self._at_line_start = self._at_line_start, region.endswith(b"\n")
        # Bare CR / bare LF: every CR must be followed by LF and every LF preceded by CR.
        # Checked even after another error (a line too long, the size): where the message
        # ends must not depend on how its bytes were cut (tests/fuzz/fuzz_smtp_data.py).
        crlf = region.count(b"\r\n")
        joined = 1 if self._pending_cr and region.startswith(b"\n") else 0
        if self._pending_cr and not joined:
            return self._fail(DataError.BARE_NEWLINE)
        trailing_cr = 1 if region.endswith(b"\r") else 0
        if region.count(b"\n") != crlf + joined or region.count(b"\r") != crlf + trailing_cr:
            return self._fail(DataError.BARE_NEWLINE)
        self._pending_cr = bool(trailing_cr)
        if self._error is not None:
            return  # nothing more to keep or measure
        # Line lengths, counted with the line's CRLF.
        lines = region.split(b"\n")
        first = self._line_len + len(lines[0]) + (1 if len(lines) > 1 else 0)
        # map(len) runs in C: a genexpr here cost ~0.1 ms per 100 KB message on the loop.
        longest = max(first, max(map(len, lines[1:-1])) + 1) if len(lines) > 2 else first
        self._line_len = len(lines[-1]) if len(lines) > 1 else first
        if longest > self._max_line or self._line_len > self._max_line:
            return self._fail(DataError.LINE_TOO_LONG)
        if self._size > self._max_bytes:
            return self._fail(DataError.TOO_BIG)
        # Transparency (RFC 5321 §4.5.2): drop the first "." of every line.
        if at_line_start and region.startswith(b"."):
            region = region[1:]
        self._out.append(region.replace(b"\n.", b"\n"))

    def _fail(self, error: DataError) -> None:
        self._out = []  # drop what we have: memory stays bounded whatever the client sends
        if self._error is None:
            self._error = error
        if error is DataError.BARE_NEWLINE:
            # Reported at once: we no longer agree with the client on where the message ends.
            self._event = DataEnd(b"", error, self._size, b"")


def _held_back(buf: bytearray, *, at_line_start: bool) -> int:
    """How many trailing bytes could still become the terminator: keep them for later.

    Only a real prefix of "<CRLF>.<CRLF>" is held, so a client that ends its lines with bare
    <LF> gets its error at once instead of waiting for a terminator it will never send.
    """
    if at_line_start and len(buf) < 3 and b".\r\n".startswith(bytes(buf)):
        return len(buf)  # "." or ".\r" right after a line's CRLF
    for k in range(len(TERMINATOR) - 1, 0, -1):
        if buf.endswith(TERMINATOR[:k]):
            return k
    return 0


class LineEndings:
    """Finds a bare <CR> or <LF> in a message that arrives in pieces (BDAT chunks, RFC 3030).

    BDAT has no terminator to smuggle, but what we accept we may relay: a bare <CR> in a chunk
    reached the next hop unchanged (`hello<CR>.<CR>MAIL FROM:...`), which a lenient server reads
    as a second message from our address. So BDAT gets DATA's rule (Postfix's
    `smtpd_forbid_bare_newline` covers BDAT too): every CR is followed by LF, every LF
    preceded by CR, across piece boundaries. Pure.
    """

    def __init__(self) -> None:
        self._pending_cr = False  # the last piece ended in a CR awaiting its LF

    def feed(self, data: bytes) -> bool:
        """False once a bare <CR> or <LF> was seen (then stop feeding)."""
        if not data:
            return True
        joined = 1 if self._pending_cr and data.startswith(b"\n") else 0
        if self._pending_cr and not joined:
            return False
        crlf = data.count(b"\r\n")
        trailing_cr = 1 if data.endswith(b"\r") else 0
        if data.count(b"\n") != crlf + joined or data.count(b"\r") != crlf + trailing_cr:
            return False
        self._pending_cr = bool(trailing_cr)
        return True

    def finish(self) -> bool:
        """False when the message ended in a CR without its LF."""
        return not self._pending_cr
