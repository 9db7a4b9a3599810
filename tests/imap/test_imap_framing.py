"""imap/framing.py: bytes -> whole commands, literals, limits; chunking never matters."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.imap.framing import (
    CommandBytes,
    ContinuationRequired,
    Framer,
    LiteralRefused,
    RemoteProtocolError,
)

STREAM = (
    b'a1 NOOP\r\na2 LOGIN {5+}\r\nalice "pw"\r\na3 APPEND INBOX {3}\r\nhi!\r\n'
    b"a4 X {0}\r\n {2+}\r\n\r\n\r\n"
)


def events(data: bytes, cuts: list[int], **limits: int) -> list[object]:
    framer, out = Framer(**limits), list[object]()
    for a, b in itertools.pairwise(sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})):
        framer.receive_data(data[a:b])
        while (event := framer.next_event()) is not None:
            out.append(event)
    return out


def test_stream_is_cut_into_commands_and_continuations() -> None:
    assert events(STREAM, []) == [
        CommandBytes(b"a1 NOOP\r\n"),
        CommandBytes(b'a2 LOGIN {5+}\r\nalice "pw"\r\n'),
        ContinuationRequired(3),
        CommandBytes(b"a3 APPEND INBOX {3}\r\nhi!\r\n"),
        ContinuationRequired(0),
        CommandBytes(b"a4 X {0}\r\n {2+}\r\n\r\n\r\n"),
    ]


@given(st.lists(st.integers(min_value=0)))
def test_chunking_never_changes_events(cuts: list[int]) -> None:
    assert events(STREAM, cuts) == events(STREAM, [])


@given(st.binary(max_size=2048), st.lists(st.integers(min_value=0), max_size=20))
@example(b"a {99999999999999999999}\r\n", [])
@example(b"a {5+}\r\n\r\n\r\n\r\n", [1, 2])
def test_any_bytes_frame_or_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    with contextlib.suppress(RemoteProtocolError):  # any other exception is a bug
        out = events(data, cuts, max_line_bytes=256, max_literal_bytes=512)
        # Whatever was framed is a prefix of the input, in order.
        framed = b"".join(e.data for e in out if isinstance(e, CommandBytes | LiteralRefused))
        assert data.startswith(framed)


def test_crlf_inside_a_literal_does_not_end_the_command() -> None:
    data = b"a1 LOGIN {4+}\r\n\r\n\r\n x\r\n"
    assert events(data, []) == [CommandBytes(data)]


def test_bare_lf_does_not_end_a_line() -> None:
    assert events(b"a1 NOOP\n", []) == []


@pytest.mark.parametrize(
    ("data", "code"),
    [
        pytest.param(b"a" * 300, None, id="line-too-long-without-crlf"),
        pytest.param(b"a" * 300 + b"\r\n", None, id="line-too-long-with-crlf"),
        pytest.param(b"a1 APPEND INBOX {513+}\r\n", "TOOBIG", id="literal-plus-too-big"),
    ],
)
def test_limits_raise_protocol_error(data: bytes, code: str | None) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        events(data, [], max_line_bytes=256, max_literal_bytes=512)
    assert info.value.code == code


def test_synchronizing_literal_too_big_is_refused_and_framing_goes_on() -> None:
    data = b"a1 APPEND INBOX {513}\r\na2 NOOP\r\n"
    assert events(data, [], max_literal_bytes=512) == [
        LiteralRefused(b"a1 APPEND INBOX {513}\r\n", 513),
        CommandBytes(b"a2 NOOP\r\n"),
    ]


def test_many_small_literals_are_bounded_by_the_command_limit() -> None:
    data = b"a1 X {100+}\r\n" + (b"x" * 100 + b" {100+}\r\n") * 20
    with pytest.raises(RemoteProtocolError, match="command too large"):
        events(data, [], max_literal_bytes=200, max_command_overhead=500)


def test_literal_bytes_can_arrive_one_at_a_time() -> None:
    framer = Framer()
    framer.receive_data(b"a1 LOGIN {3}\r\n")
    assert framer.next_event() == ContinuationRequired(3)
    for byte in b"bob":
        assert framer.next_event() is None
        framer.receive_data(bytes([byte]))
    framer.receive_data(b" pw\r\n")
    assert framer.next_event() == CommandBytes(b"a1 LOGIN {3}\r\nbob pw\r\n")
    assert framer.is_idle
