"""imap/utf7.py: modified UTF-7 (RFC 3501 §5.1.3)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap import utf7


@pytest.mark.parametrize(
    ("text", "wire"),
    [
        pytest.param("INBOX", "INBOX", id="ascii"),
        pytest.param("&", "&-", id="ampersand"),
        pytest.param("Entwürfe", "Entw&APw-rfe", id="umlaut"),
        pytest.param(
            "~peter/mail/日本語/台北", "~peter/mail/&ZeVnLIqe-/&U,BTFw-", id="rfc-example"
        ),
        pytest.param("😀", "&2D3eAA-", id="astral"),
    ],
)
def test_known_encodings(text: str, wire: str) -> None:
    assert utf7.encode(text) == wire
    assert utf7.decode(wire) == text


@given(st.text(st.characters(codec="utf-8", exclude_categories=["Cc"])))
def test_round_trip(text: str) -> None:
    encoded = utf7.encode(text)
    assert encoded.isascii()
    assert utf7.decode(encoded) == text


@pytest.mark.parametrize(
    "wire",
    [
        pytest.param("&", id="unterminated"),
        pytest.param("&AGE-", id="encodes-printable-ascii"),
        pytest.param("&AOQ-&APY-", id="split-run"),
        pytest.param("&APw", id="no-dash"),
        pytest.param("&AP/-", id="slash-not-comma"),
        pytest.param("ä", id="raw-8bit"),
        pytest.param("&A-", id="bad-length"),
        pytest.param("&AAA-", id="nul"),
        pytest.param("x&AB8-", id="unit-separator"),
        pytest.param("&AIU-", id="c1-next-line"),
        pytest.param("&AH8-", id="del"),
    ],
)
def test_malformed_is_rejected(wire: str) -> None:
    assert not utf7.is_valid(wire)
    with pytest.raises(utf7.Utf7Error):
        utf7.decode(wire)


@given(st.text(max_size=30))
def test_decode_any_text_returns_or_raises_utf7_error(text: str) -> None:
    with contextlib.suppress(utf7.Utf7Error):
        assert isinstance(utf7.decode(text), str)
