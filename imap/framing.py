"""Cuts the client's byte stream into whole IMAP commands, literals included. No I/O.

RFC 9051 §4.3: a literal is announced at the end of a line by `{n}` (synchronizing: the
client waits for our "+" continuation before sending the n octets) or `{n+}` (RFC 7888
LITERAL+: the octets follow at once). After the literal the command line goes on, possibly
announcing more literals; a command ends at a CRLF that is not followed by a literal.

    literal = "{" number64 ["+"] "}" CRLF *CHAR8

Shape (h11's): `receive_data(bytes)` only buffers; `next_event()` returns the next event or
None when more bytes are needed. Limits, each raising `RemoteProtocolError` (the transport
answers `* BYE` and closes, because the stream can no longer be resynchronised):
- a line (outside literals) of more than `max_line_bytes`: 64 KiB, far above RFC 7162 §4's
  advice that servers accept lines of at least 8192 octets;
- a LITERAL+ literal above `max_literal_bytes` (code TOOBIG, RFC 7888 §4: the client is
  already sending it, so we cannot refuse it politely);
- a whole command (lines plus literals) above `max_literal_bytes + max_command_overhead`.
A synchronizing literal above the limit is refused with `LiteralRefused` instead: the client
has not sent it, so the session answers `tag NO [TOOBIG]` and the connection stays usable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# RFC 9051 §4.3 (number64 fits 19 digits); "+" is LITERAL+ (RFC 7888), "~" is a literal8
# (RFC 3516 BINARY) which we accept in APPEND.
_LITERAL = re.compile(rb"~?\{(\d{1,19})(\+?)\}\r\n\Z")

DEFAULT_MAX_LINE_BYTES = 64 * 1024
DEFAULT_MAX_LITERAL_BYTES = 50 * 1024 * 1024  # as smtp.max_message_size's default
DEFAULT_MAX_COMMAND_OVERHEAD = 1024 * 1024


class RemoteProtocolError(Exception):
    """The client broke the framing rules; the connection must be closed after `* BYE`."""

    def __init__(self, reason: str, *, code: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


@dataclass(frozen=True, slots=True)
class CommandBytes:
    """One whole command: its lines and literal octets exactly as received, final CRLF kept."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ContinuationRequired:
    """The client announced a synchronizing literal of `size` octets and waits for "+"."""

    size: int


@dataclass(frozen=True, slots=True)
class LiteralRefused:
    """A synchronizing literal was too large; `data` is the command so far (for the tag).
    The client will not send the literal; the command is abandoned."""

    data: bytes
    size: int


FramingEvent = CommandBytes | ContinuationRequired | LiteralRefused


class Framer:
    """Buffers client bytes and yields whole commands. Never writes anything anywhere."""

    def __init__(
        self,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_literal_bytes: int = DEFAULT_MAX_LITERAL_BYTES,
        max_command_overhead: int = DEFAULT_MAX_COMMAND_OVERHEAD,
    ) -> None:
        self._max_line = max_line_bytes
        self._max_literal = max_literal_bytes
        self._max_command = max_literal_bytes + max_command_overhead
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._want = 0  # octets of literal still to take
        self._scanned = 0  # bytes of _buf already searched for CRLF (bounded work per call)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def set_max_literal_bytes(self, max_literal_bytes: int) -> None:
        """Change the literal limit (the session raises it once the client has logged in)."""
        self._max_command += max_literal_bytes - self._max_literal
        self._max_literal = max_literal_bytes

    @property
    def is_idle(self) -> bool:
        """True when no partial command is buffered (safe point to switch to TLS)."""
        return not self._buf and not self._parts and not self._want

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not framed yet: after COMPRESS (RFC 4978) they are
        DEFLATE data the transport inflates and feeds back in."""
        data, self._buf, self._scanned = bytes(self._buf), bytearray(), 0
        return data

    @property
    def buffered(self) -> bytes:
        """Bytes received but not yet framed (the transport checks none follow STARTTLS)."""
        return bytes(self._buf)

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        self._scanned = 0
        self._parts_size += n
        if self._parts_size > self._max_command:
            raise RemoteProtocolError("command too large", code="TOOBIG")
        return chunk

    def next_event(self) -> FramingEvent | None:
        while True:
            if self._want:  # inside a literal: raw octets, CRLF has no meaning here
                if len(self._buf) < self._want:
                    return None
                self._parts.append(self._take(self._want))
                self._want = 0
            # Search only bytes not searched before (minus one, for a CR split from its LF).
            start = max(self._scanned - 1, 0)
            end = self._buf.find(b"\r\n", start, self._max_line)
            if end < 0:
                if len(self._buf) >= self._max_line:
                    raise RemoteProtocolError("command line too long")
                self._scanned = len(self._buf)
                return None
            line = self._take(end + 2)
            self._parts.append(line)
            m = _LITERAL.search(line)
            if m is None:
                command = b"".join(self._parts)
                self._parts, self._parts_size = [], 0
                return CommandBytes(command)
            size = int(m[1])
            is_sync = not m[2]
            if size > self._max_literal:
                if is_sync:
                    refused = b"".join(self._parts)
                    self._parts, self._parts_size = [], 0
                    return LiteralRefused(refused, size)
                raise RemoteProtocolError("literal too large", code="TOOBIG")
            if self._parts_size + size > self._max_command:
                raise RemoteProtocolError("command too large", code="TOOBIG")
            self._want = size
            if is_sync:
                return ContinuationRequired(size)
