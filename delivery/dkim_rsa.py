"""The DKIM-Signature field for rsa-sha256 with relaxed/relaxed canonicalisation (RFC 6376),
the RSA step done by OpenSSL (the `cryptography` package).

Why not dkimpy's `dkim.sign`: it computes RSA in Python integers, about 8 ms of CPU per message
with the interpreter lock held, which capped submission throughput (docs/benchmarks.md,
"Submission"); OpenSSL signs in well under 1 ms. dkimpy still verifies everything we sign in
the tests (tests/delivery/test_dkim.py), an independent check of this module.

Pure: no I/O; `delivery.dkim.sign` decides what to sign and with which key.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

_WSP = re.compile(rb"[ \t]+")
# The runs that relaxed canonicalization changes: any with a tab, or of two or more: a lone SP
# (most of any text) is left alone instead of being replaced by itself.
_WSP_CHANGED = re.compile(rb"\t[ \t]*| [ \t]+")
_FIELD_START = re.compile(rb"(?m)^(?=[^ \t])")  # a line that does not continue the last field
_KEYS_MAX = 16  # parsed keys kept (one per domain and selector in use)
_keys: dict[bytes, rsa.RSAPrivateKey] = {}
_keys_lock = threading.Lock()


class BadKeyError(ValueError):
    """The key file is not an RSA private key in PEM form."""


def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    """Parsed once per key: loading checks the key, which costs more than a signature."""
    # Imported here: an SMTP worker canonicalizes and hashes with this module but has the
    # main process do the RSA step (mailstack/workers/login_desk.py), and `cryptography`
    # costs a process about 10 MB.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    with _keys_lock:
        key = _keys.get(pem)
    if key is not None:
        return key
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise BadKeyError(f"not a PEM private key: {exc}") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise BadKeyError("not an RSA key")
    with _keys_lock:
        if len(_keys) >= _KEYS_MAX:
            _keys.clear()
        _keys[pem] = loaded
    return loaded


def split_message(message: bytes) -> tuple[list[bytes], bytes]:
    """(header fields, each with its folding and final CRLF; body), for a CRLF message."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        head, body = message, b""
    else:
        head, body = message[: end + 2], message[end + 4 :]
    return [f for f in _FIELD_START.split(head) if f], body


def relaxed_header(field: bytes) -> bytes:
    """RFC 6376 §3.4.2: name lower-cased, unfolded, runs of WSP as one SP, no WSP at the ends
    of the value nor around the colon; CRLF-terminated."""
    name, _, value = field.partition(b":")
    value = _WSP.sub(b" ", value.replace(b"\r\n", b"")).strip(b" ")
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 §3.4.3-3.4.4: WSP runs as one SP, none at line ends, no empty lines at the
    end, and a final CRLF unless the body is empty."""
    # On the whole body at once, in C (a regex and a split per line cost 1 ms per 10 KB):
    # WSP never spans a CRLF, so runs become one SP the same, and the only WSP left before a
    # line end is one SP.
    text = _WSP_CHANGED.sub(b" ", body).replace(b" \r\n", b"\r\n").rstrip(b" ")
    end = len(text)
    while text.endswith(b"\r\n", 0, end):  # empty lines at the end (only whole CRLFs)
        end -= 2
    return text[:end] + b"\r\n" if end else b""


def _selected(fields: list[bytes], names: Sequence[str]) -> list[bytes]:
    """RFC 6376 §5.4.2: for each name in h=, the last instance not yet used, from the bottom
    up; a name with no instance left (the oversigned From) contributes nothing."""
    by_name: dict[bytes, list[bytes]] = {}
    for field in fields:
        by_name.setdefault(field.partition(b":")[0].strip().lower(), []).append(field)
    chosen: list[bytes] = []
    for name in names:
        instances = by_name.get(name.lower().encode("ascii"))
        if instances:
            chosen.append(instances.pop())
    return chosen


def _fold(tags: list[bytes], width: int = 76) -> bytes:
    """Tags joined by "; ", folded before a tag when the line would pass `width` (relaxed
    canonicalisation turns each fold into one space, so the signed text is unaffected)."""
    out = b"DKIM-Signature:"
    line = len(out)
    for i, tag in enumerate(tags):
        sep = b";" if i else b""
        piece = tag
        if line + len(sep) + 1 + len(piece) > width:
            out += sep + b"\r\n\t" + piece
            line = 1 + len(piece)
        else:
            out += sep + b" " + piece
            line += len(sep) + 1 + len(piece)
    return out


def sign_digest(key_pem: bytes, digest: bytes) -> bytes:
    """The RSASSA-PKCS1-v1_5 signature of a SHA-256 `digest` (RFC 6376 §3.3.1, RFC 8017)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    key = _private_key(key_pem)
    return key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def signature_field(
    message: bytes,
    *,
    domain: str,
    selector: str,
    signed_headers: Sequence[str],
    timestamp: int,
    key_pem: bytes = b"",
    sign: Callable[[bytes], bytes] | None = None,
) -> bytes:
    """The DKIM-Signature field (CRLF-terminated) for `message` (CRLF line ends), signing
    the header fields named in `signed_headers`, in that order (RFC 6376 §3.5, §5). The RSA
    step: with the key `key_pem`, or `sign` given the SHA-256 digest of what is signed (an
    SMTP worker asks the main process). BadKeyError when the key is no RSA key."""
    if sign is None:
        _private_key(key_pem)  # a bad key fails before any work
    fields, body = split_message(message)
    body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
    tags = [
        b"v=1",
        b"a=rsa-sha256",
        b"c=relaxed/relaxed",
        b"d=" + domain.encode("ascii"),
        b"s=" + selector.encode("ascii"),
        b"t=%d" % timestamp,
        b"h=" + b":".join(h.lower().encode("ascii") for h in signed_headers),
        b"bh=" + body_hash,
        b"b=",
    ]
    unsigned = _fold(tags)
    # §3.7: the selected fields, then this field with an empty b= and without its CRLF
    signed = b"".join(relaxed_header(f) for f in _selected(fields, signed_headers))
    signed += relaxed_header(unsigned)[:-2]
    digest = hashlib.sha256(signed).digest()
    signature = sign(digest) if sign is not None else sign_digest(key_pem, digest)
    b64 = base64.b64encode(signature)
    chunks = [b64[i : i + 72] for i in range(0, len(b64), 72)]  # §3.5: WSP in b= is ignored
    return unsigned + b"".join(b"\r\n\t" + c for c in chunks) + b"\r\n"
