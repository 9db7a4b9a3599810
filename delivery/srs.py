"""The Sender Rewriting Scheme, as postsrsd (and libsrs2, which it embeds) writes it. Pure: no
I/O; the secret and the time come from the caller.

When an alias forwards mail outside, we are the sending host, but the envelope sender is still
someone else's (`alice@example.net`), whose SPF record does not list us: the final hop's SPF
check fails. SRS makes the sender an address at our domain that only we can have made and
that leads back to the original one, so SPF passes and bounces come to us to pass on:

    SRS0=HHHH=TT=example.net=alice@our.domain          (we forward alice's mail)
    SRS1=HHHH=hop1.example==HHHH=TT=orig.example=bob@our.domain
                                                       (we forward mail another SRS host forwarded)

HHHH is the start of base64(HMAC-SHA1(secret, lowercase(the fields it covers))): the time
stamp, domain and local part for SRS0; the first hop and the rest of its SRS0 for SRS1. TT is
the day number modulo 1024 in two base-32 characters. Addresses that pass through mail
systems may change case, so hashes compare case-insensitively and TT decodes in either case.
A reverse refuses a hash that is not ours (forged) and a stamp older than `max_age_days`
(expired), so the address cannot serve as an open relay for ever.

Compatibility: the same secret gives the same addresses as postsrsd 1.x with its defaults
(separator "=", hash length 4, 21 days); tests/delivery/test_srs.py checks it against the real
postsrsd.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

TIME_PRECISION_S = 86400  # a stamp counts days
TIME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # base 32, 5 bits a character
TIME_SLOTS = 1 << 10  # two characters
MAX_AGE_DAYS = 21  # postsrsd's default: bounces come within days, not months

_SRS = re.compile(r"(?i)srs([01])[-+=](.*)", re.DOTALL)


class SrsError(ValueError):
    """An address that looks like SRS but is not one of ours to reverse (forged, expired,
    malformed); its message says which, for the SMTP reply."""


def is_srs(local_part: str) -> bool:
    """Whether a local part is an SRS0/SRS1 address (any case, any separator)."""
    return _SRS.match(local_part) is not None


def timestamp(now: float) -> str:
    day = int(now // TIME_PRECISION_S)
    return TIME_CHARS[(day >> 5) & 31] + TIME_CHARS[day & 31]


def _stamp_age_days(stamp: str, now: float) -> int:
    if len(stamp) != 2:
        raise SrsError("malformed SRS timestamp")
    try:
        then = TIME_CHARS.index(stamp[0].upper()) << 5 | TIME_CHARS.index(stamp[1].upper())
    except ValueError:
        raise SrsError("malformed SRS timestamp") from None
    today = int(now // TIME_PRECISION_S) % TIME_SLOTS
    return (today - then) % TIME_SLOTS  # a stamp "from the future" is very old


@dataclass(frozen=True, slots=True)
class SrsCodec:
    """`secrets[0]` signs; every one of them verifies (so a secret can be rotated)."""

    secrets: tuple[bytes, ...]
    domain: str  # the domain of the addresses we make (one of ours, with SPF for us)
    hash_length: int = 4
    max_age_days: int = MAX_AGE_DAYS

    def _hash(self, secret: bytes, *fields: str) -> str:
        data = "".join(fields).lower().encode("utf-8", "surrogateescape")
        digest = hmac.new(secret, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii")[: self.hash_length]

    def _check_hash(self, given: str, *fields: str) -> None:
        if len(given) < self.hash_length:
            raise SrsError("SRS hash too short")
        for secret in self.secrets:
            # Case-insensitive, as postsrsd: relays may change the case of a local part.
            ours = self._hash(secret, *fields)
            given_bytes = given.lower().encode("utf-8", "surrogateescape")  # bytes as received
            if hmac.compare_digest(given_bytes, ours.lower().encode("ascii")):
                return
        raise SrsError("SRS hash invalid (forged address)")

    def forward(self, sender: str, now: float) -> str:
        """The envelope sender to use when forwarding mail from `sender` (RFC 5321 path, no
        brackets). `<>` and our own domain's addresses stay as they are."""
        local, at, host = sender.rpartition("@")
        if not sender or not at or not local or host.lower() == self.domain.lower():
            return sender
        if not host or "=" in host:  # no domain name has one; the reverse could not split it
            raise SrsError("malformed sender domain")
        m = _SRS.match(local)
        if m is not None and m[1] == "0":
            # SRS0 from another forwarder: SRS1 naming that host and keeping its part intact,
            # from the separator after "SRS0" on (libsrs2 hashes and writes it so).
            rest = local[4:]
            if len(rest) < 2:
                raise SrsError("malformed SRS0 sender")
            return f"SRS1={self._hash(self.secrets[0], host, rest)}={host}={rest}@{self.domain}"
        if m is not None:
            # SRS1 already: keep its first hop and the opaque rest; sign them anew.
            hop, rest = _srs1_fields(m[2])[1:]
            return f"SRS1={self._hash(self.secrets[0], hop, rest)}={hop}={rest}@{self.domain}"
        stamp = timestamp(now)
        digest = self._hash(self.secrets[0], stamp, host, local)
        return f"SRS0={digest}={stamp}={host}={local}@{self.domain}"

    def reverse(self, address: str, now: float) -> str:
        """The address an SRS address of ours stands for (SRS1: the first hop's SRS0
        address). SrsError if it is not SRS, not ours, forged or expired."""
        local, at, _host = address.rpartition("@")
        m = _SRS.match(local) if at else None
        if m is None:
            raise SrsError("not an SRS address")
        if m[1] == "1":
            digest, hop, rest = _srs1_fields(m[2])
            self._check_hash(digest, hop, rest)
            return f"SRS0{rest}@{hop}"
        fields = m[2].split("=", 3)
        if len(fields) != 4 or not all(fields):
            raise SrsError("malformed SRS0 address")
        digest, stamp, host, original_local = fields
        self._check_hash(digest, stamp, host, original_local)
        if _stamp_age_days(stamp, now) > self.max_age_days:
            raise SrsError("SRS address expired")
        return f"{original_local}@{host}"


def _srs1_fields(after_separator: str) -> tuple[str, str, str]:
    """'HASH=hop==HH=TT=d=l' -> ('HASH', 'hop', '=HH=TT=d=l'): the rest keeps the separator
    that followed its "SRS0"."""
    digest, _, tail = after_separator.partition("=")
    hop, sep, rest = tail.partition("=")
    if not digest or not hop or not sep or len(rest) < 2 or rest[0] not in "-+=":
        raise SrsError("malformed SRS1 address")
    return digest, hop, rest
