"""SASL PLAIN (RFC 4616) and the base64 responses that carry it, for IMAP and SMTP alike.

One parser, so that IMAP AUTHENTICATE and SMTP AUTH accept exactly the same messages. Pure: no
I/O; every malformed input raises `SaslSyntaxError`, a forbidden identity `SaslProxyError`,
nothing else (tests/fuzz/fuzz_sasl.py checks that on any bytes).

RFC 4616 §2:
    message   = [authzid] UTF8NUL authcid UTF8NUL passwd
    authcid   = 1*SAFE ; MUST accept up to 255 octets
    authzid   = 1*SAFE ; MUST accept up to 255 octets
    passwd    = 1*SAFE ; MUST accept up to 255 octets
    SAFE      = UTF1 / UTF2 / UTF3 / UTF4  ; any UTF-8 character except NUL
So an empty authcid or passwd is malformed, and the three parts are valid UTF-8 without NUL.
We do not let one user act for another: an authzid must be empty or name the authcid itself
(compared ignoring case, as addresses are; the login path canonicalises the authcid).
A password never appears in a repr, an exception or a log line.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

# Our own bound, far above RFC 4616's "MUST accept up to 255 octets" per part: a client cannot
# make us decode or hash megabytes (argon2 takes any length) before anything is checked.
MAX_PART_BYTES = 1024


class SaslError(Exception):
    """A SASL message or response we refuse; `str()` says why (never echoing a password)."""


class SaslSyntaxError(SaslError):
    """Not base64, not three NUL-separated UTF-8 parts, or an empty authcid or passwd."""


class SaslProxyError(SaslError):
    """An authzid other than the authcid: acting for another user is not allowed."""


@dataclass(frozen=True, slots=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: str = field(repr=False)


def decode_response(text: str) -> bytes:
    """One client response in base64. A lone `=` is an empty initial response (RFC 4954 §4,
    RFC 4959 §3); the caller handles `*` (cancel), which differs per protocol."""
    text = text.strip()
    if text == "=":
        return b""
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise SaslSyntaxError("cannot decode the response (base64)") from None


def utf8_part(raw: bytes, what: str) -> str:
    """One non-empty SAFE part (RFC 4616 §2) as text."""
    if not raw:
        raise SaslSyntaxError(f"empty {what}")
    if len(raw) > MAX_PART_BYTES:
        raise SaslSyntaxError(f"{what} longer than {MAX_PART_BYTES} octets")
    if b"\0" in raw:
        raise SaslSyntaxError(f"NUL in {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslSyntaxError(f"{what} is not UTF-8") from None


def parse_plain(message: bytes) -> PlainCredentials:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslSyntaxError("expected [authzid] NUL authcid NUL passwd")
    authzid = utf8_part(parts[0], "authorization identity") if parts[0] else ""
    authcid = utf8_part(parts[1], "user name")
    password = utf8_part(parts[2], "password")
    if authzid and authzid.casefold() != authcid.casefold():
        raise SaslProxyError("authorization identity must be empty or the user itself")
    return PlainCredentials(authzid, authcid, password)
