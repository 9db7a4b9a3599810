"""mailstack/base/sasl.py: the one SASL PLAIN parser (RFC 4616) of IMAP and SMTP."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mailstack.base.sasl import (
    MAX_PART_BYTES,
    PlainCredentials,
    SaslError,
    SaslProxyError,
    SaslSyntaxError,
    decode_response,
    parse_plain,
)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            b"\0alice@example.test\0pw", ("", "alice@example.test", "pw"), id="no-authzid"
        ),
        pytest.param(
            b"alice@example.test\0alice@example.test\0pw",
            ("alice@example.test", "alice@example.test", "pw"),
            id="authzid-is-the-user",
        ),
        pytest.param(
            b"Alice@Example.TEST\0alice@example.test\0pw",
            ("Alice@Example.TEST", "alice@example.test", "pw"),
            id="authzid-other-case",
        ),
        pytest.param(
            "\0jos\u00e9@example.test\0p\u00e4ss w\u00f6rd".encode(),
            ("", "jos\u00e9@example.test", "p\u00e4ss w\u00f6rd"),
            id="utf8",
        ),
        pytest.param(b"\0 alice@example.test.\0pw", ("", " alice@example.test.", "pw"), id="raw"),
    ],
)
def test_parse_plain_accepts(message: bytes, expected: tuple[str, str, str]) -> None:
    assert parse_plain(message) == PlainCredentials(*expected)


@pytest.mark.parametrize(
    ("message", "error"),
    [
        pytest.param(b"", SaslSyntaxError, id="empty"),
        pytest.param(b"alice\0pw", SaslSyntaxError, id="one-nul"),
        pytest.param(b"\0\0alice\0pw", SaslSyntaxError, id="three-nuls"),
        pytest.param(b"\0\0pw", SaslSyntaxError, id="empty-authcid"),
        pytest.param(b"\0alice@example.test\0", SaslSyntaxError, id="empty-password"),
        pytest.param(b"\0\xffalice\0pw", SaslSyntaxError, id="authcid-not-utf8"),
        pytest.param(b"\0alice\0\xc3", SaslSyntaxError, id="password-not-utf8"),
        pytest.param(b"\xff\0alice\0pw", SaslSyntaxError, id="authzid-not-utf8"),
        pytest.param(b"\0" + b"a" * (MAX_PART_BYTES + 1) + b"\0pw", SaslSyntaxError, id="long"),
        pytest.param(b"bob@example.test\0alice@example.test\0pw", SaslProxyError, id="proxy"),
    ],
)
def test_parse_plain_refuses(message: bytes, error: type[SaslError]) -> None:
    with pytest.raises(error):
        parse_plain(message)


def test_a_refusal_never_shows_the_password() -> None:
    secret = "s3cret-\u00e9"
    for message in (b"\0\0" + secret.encode(), b"bob\0alice\0" + secret.encode()):
        with pytest.raises(SaslError) as info:
            parse_plain(message)
        assert secret not in str(info.value)
    assert secret not in repr(parse_plain(b"\0alice\0" + secret.encode()))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("=", b"", id="empty-initial-response"),
        pytest.param(" AGFsaWNlAHB3 ", b"\0alice\0pw", id="spaces-around"),
        pytest.param("", b"", id="empty-line"),
    ],
)
def test_decode_response(text: str, expected: bytes) -> None:
    assert decode_response(text) == expected


@pytest.mark.parametrize("text", ["!!!", "AGFsaWNl=AHB3", "\u00e9", "AGFsaWNlAHB"])
def test_decode_response_refuses(text: str) -> None:
    with pytest.raises(SaslSyntaxError):
        decode_response(text)


@given(st.text(max_size=40), st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_build_then_parse_round_trips(authzid: str, authcid: str, password: str) -> None:
    parts = [authzid, authcid, password]
    message = b"\0".join(p.encode("utf-8", "surrogatepass") for p in parts)
    try:
        creds = parse_plain(message)
    except SaslProxyError:
        assert authzid and authzid.casefold() != authcid.casefold()
    except SaslSyntaxError:
        assert any("\0" in p or not _is_utf8(p) for p in parts)
    else:
        assert (creds.authzid, creds.authcid, creds.password) == (authzid, authcid, password)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@given(st.binary(max_size=2048))
@example(b"\0\0")
@example(b"\xff\0\xff\0\xff")
def test_any_bytes_parse_or_raise_a_sasl_error(data: bytes) -> None:
    with contextlib.suppress(SaslError):  # anything else is a bug
        parse_plain(data)
    with contextlib.suppress(SaslError):
        decode_response(data.decode("latin-1"))
    assert decode_response(base64.b64encode(data).decode()) == data
