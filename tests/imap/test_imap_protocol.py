"""imap/protocol.py: events per state, the SASL exchange, IDLE's DONE, literal refusal."""

from __future__ import annotations

import contextlib
import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap import commands as c
from mailstack.imap.framing import RemoteProtocolError
from mailstack.imap.protocol import (
    BadCommand,
    CommandReceived,
    Event,
    IdleDone,
    ImapProtocol,
    SaslResponse,
    SendContinuation,
    State,
    TooBig,
)


def drain(proto: ImapProtocol, data: bytes) -> list[Event]:
    proto.receive_data(data)
    out = []
    while (event := proto.next_event()) is not None:
        out.append(event)
    return out


@pytest.mark.parametrize(
    ("state", "line", "ok"),
    [
        pytest.param(State.NOT_AUTHENTICATED, b"a LOGIN a b", True, id="login-before-auth"),
        pytest.param(State.NOT_AUTHENTICATED, b"a SELECT INBOX", False, id="select-before-auth"),
        pytest.param(State.NOT_AUTHENTICATED, b"a CAPABILITY", True, id="capability-any"),
        pytest.param(State.AUTHENTICATED, b"a LOGIN a b", False, id="login-twice"),
        pytest.param(State.AUTHENTICATED, b"a FETCH 1 FLAGS", False, id="fetch-unselected"),
        pytest.param(State.AUTHENTICATED, b"a IDLE", True, id="idle-authenticated"),
        pytest.param(State.SELECTED, b"a FETCH 1 FLAGS", True, id="fetch-selected"),
        pytest.param(State.SELECTED, b'a LIST "" *', True, id="list-selected"),
        pytest.param(State.SELECTED, b"a STARTTLS", False, id="starttls-selected"),
        pytest.param(State.SELECTED, b"a ENABLE X", False, id="enable-selected"),
    ],
)
def test_commands_are_checked_against_the_state(state: State, line: bytes, ok: bool) -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    proto.state = state
    (event,) = drain(proto, line + b"\r\n")
    assert isinstance(event, CommandReceived if ok else BadCommand)
    if not ok:
        assert isinstance(event, BadCommand)
        assert event.tag == "a"
        assert state.value in event.reason


def test_parse_error_becomes_bad_command_and_the_stream_goes_on() -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    events = drain(proto, b"a1 FROB\r\na2 NOOP\r\n")
    assert events == [BadCommand("a1", "unknown command FROB"), CommandReceived(c.Noop("a2"))]


def test_synchronizing_literal_asks_for_continuation() -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    assert drain(proto, b"a1 LOGIN {5}\r\n") == [SendContinuation(b"+ Ready for literal data\r\n")]
    assert drain(proto, b"alice pw\r\n") == [CommandReceived(c.Login("a1", "alice", "pw"))]


def test_too_big_literal_is_refused_with_the_tag() -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    assert drain(proto, b"a1 APPEND INBOX {101}\r\na2 NOOP\r\n") == [
        TooBig("a1", 101),
        CommandReceived(c.Noop("a2")),
    ]


def test_sasl_line_is_not_a_command() -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    (event,) = drain(proto, b"a1 AUTHENTICATE PLAIN\r\n")
    assert event == CommandReceived(c.Authenticate("a1", "PLAIN"))
    proto.expect_sasl_response()
    assert drain(proto, b"AGFsaWNlAHB3\r\na2 NOOP\r\n") == [
        SaslResponse("AGFsaWNlAHB3"),
        CommandReceived(c.Noop("a2")),
    ]
    proto.expect_sasl_response()
    (cancel,) = drain(proto, b"*\r\n")
    assert isinstance(cancel, SaslResponse)
    assert cancel.is_cancel


@pytest.mark.parametrize(("line", "valid"), [(b"DONE", True), (b"done", True), (b"a2 NOOP", False)])
def test_idle_ends_with_done(line: bytes, valid: bool) -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    proto.state = State.AUTHENTICATED
    proto.expect_done()
    assert drain(proto, line + b"\r\n") == [IdleDone(valid)]


@given(st.binary(max_size=500), st.sampled_from(list(State)))
def test_any_bytes_give_events_or_protocol_error(data: bytes, state: State) -> None:
    proto = ImapProtocol(max_literal_bytes=100, max_line_bytes=200)
    proto.state = state
    with contextlib.suppress(RemoteProtocolError):
        events = drain(proto, data)
        assert all(isinstance(e, typing.get_args(Event)) for e in events), events


_PIECES = st.sampled_from(
    [
        b"a NOOP\r\n",
        b"b APPEND INBOX {5}\r\n",
        b"hello\r\n",
        b"c LOGIN {3}\r\n",
        b"bob {2+}\r\npw\r\n",
        b"d APPEND INBOX {500}\r\n",  # above the limit: NO [TOOBIG], no "+"
        b"e SELECT",
        b" INBOX\r\n",
        b"{",
        b"}\r\n",
        b"\r\n",
    ]
)


def _transcript(chunks: list[bytes], *, early: bool) -> list[object]:
    """Events of a stream fed in `chunks`; with `early`, as the transport does while the
    session waits: `continuation_now` after each chunk, its "+" as a SendContinuation."""
    proto = ImapProtocol(max_literal_bytes=100, max_line_bytes=200)
    proto.state = State.AUTHENTICATED
    out: list[object] = []
    try:
        for chunk in chunks:
            proto.receive_data(chunk)
            if early and (plus := proto.continuation_now()) is not None:
                out.append(SendContinuation(plus))
            while (event := proto.next_event()) is not None:
                out.append(event)
    except RemoteProtocolError as exc:
        out.append(("error", exc.reason))
    return out


@given(st.lists(st.lists(_PIECES, min_size=1, max_size=4).map(b"".join), max_size=8))
def test_an_early_continuation_changes_nothing_but_when_it_is_sent(chunks: list[bytes]) -> None:
    # The transport asks continuation_now from its read callback (imap/server.py _early):
    # the same events must come out, in the same order, as when the session frames alone.
    assert _transcript(chunks, early=True) == _transcript(chunks, early=False)


def test_a_continuation_is_not_sent_ahead_of_an_earlier_command() -> None:
    proto = ImapProtocol(max_literal_bytes=100)
    proto.state = State.AUTHENTICATED
    proto.receive_data(b"a NOOP\r\nb APPEND INBOX {5}\r\n")
    assert proto.continuation_now() is None  # NOOP first: its answer precedes the "+"
    assert isinstance(proto.next_event(), CommandReceived)
    assert proto.next_event() == SendContinuation(b"+ Ready for literal data\r\n")
    proto.receive_data(b"hello\r\nc APPEND INBOX {4}\r\n")
    assert isinstance(proto.next_event(), CommandReceived)
    assert proto.continuation_now() == b"+ Ready for literal data\r\n"
    assert proto.next_event() is None
