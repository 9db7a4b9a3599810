"""The pure parts behind tests/imap/test_compliance.py: quoted-printable by RFC 2045 §6.7 and
binary APPEND content made safe for an LF Maildir (imap/binary.py)."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.imap import binary
from mailstack.imap.binary import store_safe
from mailstack.imap.fetch import ParsedMessage, binary_bytes
from mailstack.imap.mime import decode_quoted_printable


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        pytest.param(b"a=\r\nb", b"ab", id="soft-break"),
        pytest.param(b"a=  \r\nb", b"ab", id="soft-break-after-padding"),
        pytest.param(b"a= \t\nb", b"ab", id="soft-break-lf-tab"),
        pytest.param(b"a  \r\nb", b"a\r\nb", id="trailing-padding-removed"),
        pytest.param(b"a\nb\n", b"a\r\nb\r\n", id="lf-is-a-line-break"),
        pytest.param(b"=3D=3d=C3=A9", b"==\xc3\xa9", id="hex-either-case"),
        pytest.param(b"= x=ZZ=4", b"= x=ZZ=4", id="malformed-kept"),
        pytest.param(b"last=", b"last", id="soft-break-at-end"),
        pytest.param(b"tail   ", b"tail", id="padding-at-end"),
        pytest.param(b"", b"", id="empty"),
    ],
)
def test_quoted_printable(encoded: bytes, decoded: bytes) -> None:
    assert decode_quoted_printable(encoded) == decoded


def multipart(body: bytes, cte: bytes = b"binary") -> bytes:
    return (
        b"From: a@example.com\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
        b"Content-Type: application/octet-stream\nContent-Transfer-Encoding: "
        + cte
        + b"\r\n\r\n"
        + body
        + b"\r\n--XX\r\nContent-Type: text/plain\r\n\r\nafter\r\n--XX--\r\n"
    )


def as_stored(message: bytes) -> ParsedMessage:
    """What a FETCH sees after the Maildir stored `message` with LF endings."""
    return ParsedMessage.parse(message.replace(b"\r\n", b"\n"))


@given(st.binary(max_size=300))
@example(b"ab\ncd\ne")
@example(b"\r\r\n\n\x00")
def test_binary_parts_survive_the_lf_store(body: bytes) -> None:
    parsed = as_stored(store_safe(multipart(body)))
    assert binary_bytes(parsed.data, parsed.root, (1,)) == body
    assert binary_bytes(parsed.data, parsed.root, (2,)) == b"after"


@given(st.integers(0, 3 * binary._WINDOW), st.sampled_from([b"binary", b"BiNaRy", b"BINARX"]))
def test_the_word_binary_is_found_in_any_case_across_the_windows(at: int, word: bytes) -> None:
    raw = b"x" * at + word + b"y" * 7
    assert binary._mentions_binary(raw) == (word.lower() == b"binary")


def test_only_unsafe_binary_parts_change() -> None:
    safe = multipart(b"line one\r\nline two")
    assert store_safe(safe) == safe
    text = multipart(b"bare\nlf", cte=b"8bit")
    assert store_safe(text) == text
    changed = store_safe(multipart(b"bare\nlf"))
    assert b"Content-Transfer-Encoding: base64\r\n\r\nYmFyZQpsZg==\r\n--XX" in changed
    assert changed.startswith(b"From: a@example.com\r\n")


def test_single_part_message_and_nested_message() -> None:
    single = b"Subject: s\nContent-Transfer-Encoding: binary\n\n\x00\n\xff"
    parsed = as_stored(store_safe(single))
    assert binary_bytes(parsed.data, parsed.root, (1,)) == b"\x00\n\xff"
    nested = (
        b"Content-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nContent-Transfer-Encoding: Binary\r\n\r\nx\ny"
    )
    parsed = as_stored(store_safe(nested))
    assert binary_bytes(parsed.data, parsed.root, (1, 1)) == b"x\ny"
