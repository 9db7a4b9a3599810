"""`lf_slices` gives what one CRLF->LF replace over the whole message gives, however it is cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery import layout
from mailstack.delivery.layout import lf_slices

ALPHABET = st.sampled_from([b"\r", b"\n", b"\r\n", b"a", b".", b"\r\r\n", b"xyz"])


@given(st.lists(st.lists(ALPHABET, max_size=12).map(b"".join), max_size=8))
def test_pieces_cut_anywhere_convert_as_the_whole(pieces: list[bytes]) -> None:
    whole = b"".join(pieces)
    assert b"".join(lf_slices(pieces)) == whole.replace(b"\r\n", b"\n")
    assert b"".join(lf_slices(whole)) == whole.replace(b"\r\n", b"\n")


def test_no_slice_is_larger_than_the_slice_size() -> None:
    message = (b"x" * 73 + b"\r\n") * (3 * layout._SLICE_BYTES // 75)
    slices = lf_slices([message[:12345], message[12345:]])
    assert max(len(s) for s in slices) <= layout._SLICE_BYTES
    assert b"".join(slices) == message.replace(b"\r\n", b"\n")
