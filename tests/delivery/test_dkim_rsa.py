"""delivery.dkim_rsa: our DKIM-Signature field, checked by an independent verifier (dkimpy)
on the inputs where canonicalisation goes wrong first."""

from __future__ import annotations

import base64
import re
import time

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dkim.canonicalization import Relaxed
from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.delivery.dkim_rsa import BadKeyError, relaxed_body, signature_field

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
)
HEADERS = ["from", "subject", "to", "to", "to", "date", "from"]


def sign(message: bytes) -> bytes:
    return signature_field(
        message,
        domain="x.test",
        selector="s1",
        key_pem=PEM,
        signed_headers=HEADERS,
        timestamp=int(time.time()),  # dkimpy refuses a t= in the future
    )


@pytest.mark.parametrize(
    "message",
    [
        # folded value, WSP runs, trailing WSP, a repeated field, body WSP and trailing blanks
        b"From: a@x.test\r\nSubject:  folded\r\n  \tmore  \r\nTo: b@y.test\r\nTo: c@y.test\r\n"
        b"\r\nbody  \t x \r\n\r\n\r\n",
        b"From: a@x.test\r\nSubject: empty body\r\n\r\n",  # empty body: hash of ""
        b"From: a@x.test\r\nSubject: no body at all\r\n",
        b"From:a@x.test\r\nSUBJECT:s\r\n\r\n\r\n  \r\nlast line without CRLF",
        b"From: a@x.test\r\nSubject: " + b"long " * 40 + b"\r\n\r\n" + b"x" * 10_000 + b"\r\n",
    ],
)
def test_dkimpy_verifies_what_we_sign(message: bytes) -> None:
    field = sign(message)
    assert field.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=x.test")
    assert all(len(line) <= 78 for line in field.split(b"\r\n"))
    assert dkim.verify(field + message, dnsfunc=lambda _name, timeout=5: RECORD)
    # a changed signed field or body breaks it
    assert not dkim.verify(
        field + message.replace(b"a@x.test", b"z@x.test", 1),
        dnsfunc=lambda _name, timeout=5: RECORD,
    )


def _relaxed_body_by_lines(body: bytes) -> bytes:
    """RFC 6376 §3.4.3-3.4.4 line by line, as the RFC words it: the reference."""
    lines = [re.sub(rb"[ \t]+", b" ", line).rstrip(b" ") for line in body.split(b"\r\n")]
    while lines and not lines[-1]:
        lines.pop()
    return b"".join(line + b"\r\n" for line in lines)


@given(
    st.lists(st.sampled_from([b"a", b" ", b"\t", b"\r\n", b"\r", b"\n", b"\xc3\xa4"])).map(b"".join)
)
def test_relaxed_body_equals_the_line_by_line_rule(body: bytes) -> None:
    assert relaxed_body(body) == _relaxed_body_by_lines(body)


def test_relaxed_body() -> None:
    assert relaxed_body(b"") == b""
    assert relaxed_body(b"\r\n\r\n") == b""
    assert relaxed_body(b" a \t b \r\n\r\nc\t\r\n\r\n") == b" a b\r\n\r\nc\r\n"


def test_a_bad_key_is_a_value_error() -> None:
    with pytest.raises(BadKeyError):
        signature_field(
            b"From: a@x.test\r\n\r\n",
            domain="x.test",
            selector="s1",
            key_pem=b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n",
            signed_headers=["from"],
            timestamp=1,
        )


_WSP_TEXT = st.text(alphabet=" \t", min_size=0, max_size=3)
_VALUE = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=20
)


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    """Header fields with folding and WSP runs in any place, repeated names, odd bodies."""
    fields = [b"From: a@x.test\r\n"]
    for _ in range(draw(st.integers(0, 6))):
        # One From only: with several, dkimpy refuses even its own signatures.
        name = draw(st.sampled_from(["Subject", "To", "subject", "DATE", "X-Other", "to"]))
        parts = draw(st.lists(st.tuples(_WSP_TEXT, _VALUE), min_size=1, max_size=4))
        value = ""
        for i, (wsp, text) in enumerate(parts):
            value += ("\r\n " + wsp if i and draw(st.booleans()) else wsp) + text
        fields.append(f"{name}:{value}\r\n".encode())  # dkimpy refuses WSP before ":"
    lines = draw(st.lists(st.tuples(_WSP_TEXT, _VALUE, _WSP_TEXT), max_size=6))
    body = b"".join(f"{a}{b}{c}\r\n".encode() for a, b, c in lines)
    return b"".join(fields) + b"\r\n" + body


@settings(max_examples=60, deadline=None)
@given(_messages())
def test_dkimpy_verifies_any_generated_message(message: bytes) -> None:
    field = sign(message)
    assert dkim.verify(field + message, dnsfunc=lambda _name, timeout=5: RECORD)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_WSP_TEXT, _VALUE, _WSP_TEXT), min_size=1, max_size=4))
def test_a_body_without_final_crlf_is_canonicalised_as_it_is_sent(
    lines: list[tuple[str, str, str]],
) -> None:
    """A BDAT message may end without CRLF; DATA adds one on the way out (RFC 5321 §4.1.1.4).
    dkimpy keeps the white space ending such a last line, we drop it (RFC 6376 §3.4.4 reads
    both ways): what must agree is the canonical form of the body as it is sent."""
    body = "\r\n".join(a + b + c for a, b, c in lines).encode()
    sent = body + b"\r\n"
    assert relaxed_body(body) == relaxed_body(sent) == Relaxed.canonicalize_body(sent)
    message = b"From: a@x.test\r\nSubject: no final CRLF\r\n\r\n" + body
    field = sign(message)
    assert dkim.verify(field + message + b"\r\n", dnsfunc=lambda _name, timeout=5: RECORD)
