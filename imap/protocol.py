"""The IMAP connection as a sans-IO state machine: bytes in, events out (h11's shape).

    not authenticated --LOGIN/AUTHENTICATE--> authenticated --SELECT/EXAMINE--> selected
          |                                    ^     |                            |
          |                                    +-----+--CLOSE/UNSELECT/failed SELECT
          +------------------- LOGOUT (any state) -------------------------> logout

RFC 9051 §3 defines the states; §6 says which commands each accepts. `ImapProtocol` frames
client bytes (`imap.framing`), parses commands (`imap.parser`), refuses commands that are
not valid in the current state (`BadCommand`, answered with `tag BAD`), and knows the two
places where a client line is not a command: the SASL exchange of AUTHENTICATE (RFC 9051
§6.2.2) and the "DONE" that ends IDLE (RFC 2177). The session executes commands and moves
the state; this module never performs I/O and never touches the store.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mailstack.imap import commands as c
from mailstack.imap.framing import (
    CommandBytes,
    ContinuationRequired,
    Framer,
    FramingEvent,
    LiteralRefused,
    RemoteProtocolError,
)
from mailstack.imap.parser import ParseError, parse_command

CONTINUATION = b"+ Ready for literal data\r\n"
_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+\x80-\xff]+')


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


class Mode(enum.Enum):
    """What the next client line is."""

    COMMAND = "command"
    SASL = "sasl"  # a base64 response to our "+ challenge" (or "*" to cancel)
    IDLE = "idle"  # "DONE"


@dataclass(frozen=True, slots=True)
class CommandReceived:
    command: c.Command


@dataclass(frozen=True, slots=True)
class BadCommand:
    """Answer `tag BAD reason`; the connection goes on."""

    tag: str
    reason: str


@dataclass(frozen=True, slots=True)
class TooBig:
    """A synchronizing literal above the limit: answer `tag NO [TOOBIG]` (RFC 7888 §4)."""

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class SendContinuation:
    """The client waits for "+" before sending a literal: write `data` now."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """One line of the AUTHENTICATE exchange, CRLF removed; `is_cancel` for "*"."""

    data: str

    @property
    def is_cancel(self) -> bool:
        return self.data == "*"


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The client ended IDLE; `is_valid` False when it sent something other than DONE."""

    is_valid: bool = True


Event = CommandReceived | BadCommand | TooBig | SendContinuation | SaslResponse | IdleDone


def allowed_in(command: c.Command, state: State) -> bool:
    """RFC 9051 §6: is `command` valid in `state`?"""
    if isinstance(command, c.ANY_STATE):
        return state is not State.LOGOUT
    if state is State.NOT_AUTHENTICATED:
        return isinstance(command, c.NOT_AUTHENTICATED)
    if state is State.AUTHENTICATED:
        return isinstance(command, c.AUTHENTICATED)
    if state is State.SELECTED:
        # RFC 5161 §3.1: ENABLE is valid only before any mailbox is selected.
        return isinstance(command, c.AUTHENTICATED + c.SELECTED) and not isinstance(
            command, c.Enable
        )
    return False


def _tag_of(data: bytes) -> str:
    m = _TAG.match(data)
    return m[0].decode("ascii") if m else "*"


class ImapProtocol:
    """One client connection's protocol state. `receive_data` buffers; `next_event` parses."""

    def __init__(self, *, max_literal_bytes: int, max_line_bytes: int = 64 * 1024) -> None:
        self.framer = Framer(max_line_bytes=max_line_bytes, max_literal_bytes=max_literal_bytes)
        self.state = State.NOT_AUTHENTICATED
        self.mode = Mode.COMMAND
        self._ahead: FramingEvent | RemoteProtocolError | None = None  # see continuation_now

    def receive_data(self, data: bytes) -> None:
        self.framer.receive_data(data)

    @property
    def is_idle(self) -> bool:
        """No partial command buffered, nor one framed ahead (`continuation_now`)."""
        return self._ahead is None and self.framer.is_idle

    def continuation_now(self) -> bytes | None:
        """The "+" to send at once when the next thing the buffered bytes hold is the
        announcement of a synchronizing literal (the transport answers it from its read
        callback, not when the session's task next runs: under load that wait is a whole
        round of every other session's work, in every APPEND). Anything else it framed waits
        for `next_event`, in order."""
        if self._ahead is not None:
            return None
        try:
            event = self.framer.next_event()
        except RemoteProtocolError as exc:
            self._ahead = exc
            return None
        if isinstance(event, ContinuationRequired):
            return CONTINUATION
        self._ahead = event
        return None

    def next_event(self) -> Event | None:
        """The next event, or None when more bytes are needed.

        Raises `imap.framing.RemoteProtocolError` when the stream cannot be resynchronised.
        """
        event, self._ahead = self._ahead, None
        if isinstance(event, RemoteProtocolError):
            raise event
        if event is None:
            event = self.framer.next_event()
        match event:
            case None:
                return None
            case ContinuationRequired():
                return SendContinuation(CONTINUATION)
            case LiteralRefused(data, size):
                return TooBig(_tag_of(data), size)
            case CommandBytes(data):
                return self._line(data)
        raise AssertionError(f"unexpected framing event {event!r}")  # pragma: no cover

    def _line(self, data: bytes) -> Event:
        if self.mode is Mode.SASL:
            self.mode = Mode.COMMAND
            return SaslResponse(data.removesuffix(b"\r\n").decode("ascii", "replace").strip())
        if self.mode is Mode.IDLE:
            self.mode = Mode.COMMAND
            return IdleDone(data.removesuffix(b"\r\n").strip().upper() == b"DONE")
        try:
            command = parse_command(data)
        except ParseError as exc:
            return BadCommand(exc.tag, exc.reason)
        if not allowed_in(command, self.state):
            name = type(command).__name__.upper()
            return BadCommand(command.tag, f"{name} is not valid in the {self.state.value} state")
        return CommandReceived(command)

    # -- transitions the session makes -------------------------------------------------------
    def expect_sasl_response(self) -> None:
        self.mode = Mode.SASL

    def expect_done(self) -> None:
        self.mode = Mode.IDLE


# -- mailbox name rules (RFC 9051 §6.3.9) ------------------------------------------------------


def list_pattern(reference: str, pattern: str, delimiter: str = ".") -> re.Pattern[str]:
    """A regex for LIST's `reference` + `pattern`: "*" matches anything, "%" anything but the
    hierarchy delimiter. INBOX matches case-insensitively (RFC 9051 §5.1)."""
    full = (
        reference + pattern
        if not pattern.startswith(delimiter) or not reference
        else reference.rstrip(delimiter) + pattern
    )
    parts = []
    for ch in full:
        if ch == "*":
            parts.append(".*")
        elif ch == "%":
            parts.append(f"[^{re.escape(delimiter)}]*")
        else:
            parts.append(re.escape(ch))
    body = "".join(parts)
    # "inbox*" must find INBOX and its children whatever the client's case.
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (delimiter, "*", "%")):
        body = "INBOX" + "".join(parts[5:])
    return re.compile(body, re.DOTALL)


def matches_pattern(name: str, pattern: re.Pattern[str]) -> bool:
    return pattern.fullmatch(name) is not None
