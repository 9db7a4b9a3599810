"""atheris fuzz target: our DKIM signer (delivery/dkim_rsa.py) against dkimpy's verifier.

Run: `python tests/fuzz/fuzz_dkim.py -runs=100000 [corpus_dir]`. Not collected by pytest. Any
bytes become a message (header lines kept where they are valid RFC 5322 fields or continue
one, the rest as body); signing must not raise and dkimpy must verify what we signed.
"""

from __future__ import annotations

import base64

import atheris
import harness
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

with atheris.instrument_imports():
    from mailstack.delivery.dkim_rsa import signature_field

import dkim

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
)
RECORD = b"v=DKIM1; k=rsa; p=" + base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
)

SEEDS = [
    b"Subject:  a \t b\r\n  folded \r\nTo: x@y\r\n\r\nbody \t \r\n\r\n",
    b"TO:x\r\nto :y\r\n\r\n",
    b"Subject: s\r\n\r\n  \r\n\t\r\nlast",
]


def message_of(data: bytes) -> bytes:
    """A CRLF message with a From field, as the submission side hands it to the signer."""
    head, _, body = data.replace(b"\r", b"").partition(b"\n\n")
    fields = [b"From: a@x.test"]
    for line in head.split(b"\n"):
        if any((c < 32 and c != 9) or c == 127 for c in line):
            continue  # RFC 5322 §2.2: no controls in a field (dkimpy strips FF and VT as WSP)
        if line[:1] in (b" ", b"\t") and line.strip():
            fields.append(line)  # continues the field above
        elif b":" in line and line.split(b":", 1)[0].strip(b" \t") and not line[:1].isspace():
            name = line.split(b":", 1)[0]
            bare = name.rstrip(b" \t")
            # One From only (dkimpy refuses several), and no WSP before ":" (dkimpy refuses it).
            if bare == name and bare.lower() != b"from" and all(33 <= c <= 126 for c in bare):
                fields.append(line)
    # Lines end in CRLF, the last one too, as DATA delivers them. (For a last line without
    # CRLF that ends in WSP, RFC 6376 §3.4.4 drops the WSP and dkimpy keeps it.)
    return b"\r\n".join(fields) + b"\r\n\r\n" + b"".join(x + b"\r\n" for x in body.split(b"\n"))


def test_one_input(data: bytes) -> None:
    message = message_of(data)
    field = signature_field(
        message,
        domain="x.test",
        selector="s1",
        key_pem=PEM,
        signed_headers=["from", "subject", "to", "to", "date", "from"],
        timestamp=1_700_000_000,
    )
    ok = dkim.verify(field + message, dnsfunc=lambda _name, timeout=5: RECORD)
    assert ok, message


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
