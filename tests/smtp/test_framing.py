"""The DATA framer (smtp/framing.py): terminator, transparency, bare newlines, limits."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.smtp.framing import DataEnd, DataError, DataFramer


def frame(
    data: bytes,
    cuts: list[int] | None = None,
    *,
    max_bytes: int = 10_000,
    max_line_bytes: int = 1001,
) -> DataEnd | None:
    framer = DataFramer(max_bytes=max_bytes, max_line_bytes=max_line_bytes)
    points = sorted({0, len(data), *((c % (len(data) + 1)) for c in (cuts or []))})
    for a, b in itertools.pairwise(points):
        framer.receive_data(data[a:b])
    return framer.next_event()


@pytest.mark.parametrize(
    ("data", "content", "leftover"),
    [
        pytest.param(b".\r\n", b"", b"", id="empty"),
        pytest.param(b"a\r\n.\r\n", b"a\r\n", b"", id="one-line"),
        pytest.param(b"a\r\n.\r\nQUIT\r\n", b"a\r\n", b"QUIT\r\n", id="pipelined-after"),
        pytest.param(b"..\r\n.\r\n", b".\r\n", b"", id="stuffed-dot-line"),
        pytest.param(b"a\r\n..b\r\n...\r\n.\r\n", b"a\r\n.b\r\n..\r\n", b"", id="stuffing"),
        pytest.param(b".x\r\n.\r\n", b"x\r\n", b"", id="unstuffed-leading-dot-removed"),
        pytest.param(b"a\r\n.\r\n.\r\n", b"a\r\n", b".\r\n", id="first-terminator-wins"),
        pytest.param(b"a\r\nb. \r\n.\r\n", b"a\r\nb. \r\n", b"", id="dot-inside-line"),
    ],
)
def test_frames(data: bytes, content: bytes, leftover: bytes) -> None:
    event = frame(data)
    assert event == DataEnd(content, None, len(data) - len(leftover) - 3, leftover)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"a\n.\nMAIL FROM:<x@y>\r\n", id="lf-dot-lf"),
        pytest.param(b"a\r\n.\nRCPT\r\n", id="crlf-dot-lf"),
        pytest.param(b"a\r.\rMAIL\r\n", id="cr-dot-cr"),
        pytest.param(b"a\rb\r\n", id="bare-cr"),
        pytest.param(b"a\nb\r\n", id="bare-lf"),
        pytest.param(b"\n", id="leading-lf"),
    ],
)
def test_bare_newlines_never_end_the_message_and_are_reported_at_once(data: bytes) -> None:
    # No terminator follows: a smuggled "<LF>.<LF>" must not be taken as one, and the error
    # must come without waiting for "<CRLF>.<CRLF>" (the client may never send it).
    for cuts in ([], [1], [2, 3], list(range(len(data)))):
        event = frame(data, cuts)
        assert event is not None
        assert event.error is DataError.BARE_NEWLINE
        assert event.content == b""


def test_too_big_reported_after_terminator() -> None:
    data = b"x" * 50 + b"\r\n" + b"y" * 50 + b"\r\n.\r\nQUIT\r\n"
    event = frame(data, max_bytes=60)
    assert event is not None
    assert (event.error, event.content, event.leftover) == (DataError.TOO_BIG, b"", b"QUIT\r\n")
    assert frame(data[:-11], max_bytes=60) is None  # no terminator yet: keep reading


def test_line_length_limit_counts_crlf() -> None:
    ok = b"a" * 998 + b"\r\n.\r\n"
    assert frame(ok, max_line_bytes=1000) == DataEnd(b"a" * 998 + b"\r\n", None, 1000, b"")
    too_long = b"a" * 999 + b"\r\n.\r\n"
    event = frame(too_long, max_line_bytes=1000, cuts=[500])
    assert event is not None
    assert event.error is DataError.LINE_TOO_LONG


def test_memory_is_dropped_once_too_big() -> None:
    framer = DataFramer(max_bytes=1000)
    for _ in range(100):
        framer.receive_data(b"z" * 998 + b"\r\n")
    assert framer.next_event() is None
    assert len(framer._buf) < 10 and not framer._out  # only the terminator look-behind
    framer.receive_data(b".\r\n")
    event = framer.next_event()
    assert event is not None
    assert event.error is DataError.TOO_BIG


MESSAGES = st.lists(
    st.one_of(
        st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        st.sampled_from([b".", b"..", b".\r", b"...x", b""]),
    ),
    max_size=12,
)


@given(MESSAGES, st.lists(st.integers(min_value=0), max_size=12))
def test_chunking_never_changes_the_result(lines: list[bytes], cuts: list[int]) -> None:
    if any(b"\r" in x for x in lines):
        return
    stuffed = b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)
    data = stuffed + b".\r\nNOOP\r\n"
    whole = frame(data)
    assert whole == frame(data, cuts)
    assert whole is not None
    assert whole.content == b"".join(x + b"\r\n" for x in lines)  # transparency round trip
    assert whole.leftover == b"NOOP\r\n"


# Arbitrary bytes, and streams built from the tokens framing cares about (found more bugs).
STREAMS = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"\r\n.\r\n", b"\x00"]),
        max_size=40,
    ).map(b"".join),
)


@given(STREAMS, st.lists(st.integers(min_value=0), max_size=8))
def test_any_bytes_give_a_consistent_result(data: bytes, cuts: list[int]) -> None:
    whole, chunked = frame(data), frame(data, cuts)
    if whole is not None and whole.error is DataError.BARE_NEWLINE:
        # Reported as soon as seen, so how much was read by then depends on the chunking.
        assert chunked is not None
        assert (chunked.error, chunked.content, chunked.leftover) == (whole.error, b"", b"")
        return
    assert chunked == whole
    if whole is not None and whole.error is None:
        assert b"\r\n.\r\n" in b"\r\n" + data  # only a real terminator ends a message


@pytest.mark.parametrize("step", [1, 2, 7, 1000, 5000])
def test_bare_newline_after_a_too_long_line_is_seen_however_the_bytes_are_cut(step: int) -> None:
    # Found by tests/fuzz/fuzz_smtp_data.py: once a line was too long, later chunks skipped the
    # bare CR/LF check, so a message cut in pieces waited for a terminator while the same bytes
    # in one piece ended DATA with BARE_NEWLINE.
    data = b"x" * 1100 + b"\r\n.\xd2\nMAIL FROM:<a@b>\r\n"
    framer = DataFramer(max_bytes=4096)
    for i in range(0, len(data), step):
        framer.receive_data(data[i : i + step])
    event = framer.next_event()
    assert event is not None
    assert event.error is DataError.BARE_NEWLINE
