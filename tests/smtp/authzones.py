"""Test DNS zones and DKIM keys for the inbound-authentication tests (served by real nsd).

Domains (all under TLDs the Public Suffix List does not know, or example.org/.net):
- example.org    p=reject; SPF allows 127.0.0.2 only (-all); DKIM selectors `sel` (our key)
                 and `wrong` (a different key); bounces.example.org has its own SPF (for
                 relaxed SPF alignment)
- example.net    p=quarantine; SPF ~all for 127.0.0.2 (softfail elsewhere)
- strict.example p=reject with aspf=s and adkim=s; SPF allows 127.0.0.2; DKIM `sel`
- nopolicy.example  no DMARC record, no SPF record
- sampled.example   p=reject pct=0
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

SOA = "@ IN SOA ns1.{zone}. hostmaster.{zone}. 1 3600 600 86400 300\n@ IN NS ns1.{zone}.\n"


@dataclass(frozen=True)
class DkimKey:
    private_pem: bytes
    txt: str  # "v=DKIM1; k=rsa; p=..."


def make_key(bits: int = 2048) -> DkimKey:
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return DkimKey(pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}")


def txt(value: str) -> str:
    """A TXT rdata, split into <=255-octet character-strings (RFC 1035 §3.3.14)."""
    chunks = [value[i : i + 250] for i in range(0, len(value), 250)]
    return "( " + " ".join(f'"{c}"' for c in chunks) + " )"


def zone(origin: str, records: list[str]) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 300\n"
        + SOA.format(zone=origin)
        + "ns1 IN A 127.0.0.1\n"
        + "".join(r + "\n" for r in records)
    )


def build_zones(good: DkimKey, other: DkimKey) -> dict[str, str]:
    return {
        "example.org": zone(
            "example.org",
            [
                f"@ IN TXT {txt('v=spf1 ip4:127.0.0.2 -all')}",
                f"_dmarc IN TXT {txt('v=DMARC1; p=reject; rua=mailto:d@example.org')}",
                f"sel._domainkey IN TXT {txt(good.txt)}",
                f"wrong._domainkey IN TXT {txt(other.txt)}",
                f"bounces IN TXT {txt('v=spf1 ip4:127.0.0.3 -all')}",
            ],
        ),
        "example.net": zone(
            "example.net",
            [
                f"@ IN TXT {txt('v=spf1 ip4:127.0.0.2 ~all')}",
                f"_dmarc IN TXT {txt('v=DMARC1; p=quarantine')}",
                f"sel._domainkey IN TXT {txt(good.txt)}",
            ],
        ),
        "strict.example": zone(
            "strict.example",
            [
                f"@ IN TXT {txt('v=spf1 ip4:127.0.0.2 -all')}",
                f"mail IN TXT {txt('v=spf1 ip4:127.0.0.2 -all')}",
                f"_dmarc IN TXT {txt('v=DMARC1; p=reject; aspf=s; adkim=s')}",
                f"sel._domainkey IN TXT {txt(good.txt)}",
                f"sel._domainkey.mail IN TXT {txt(good.txt)}",
            ],
        ),
        "nopolicy.example": zone(
            "nopolicy.example",
            [
                "@ IN A 127.0.0.1",
            ],
        ),
        "sampled.example": zone(
            "sampled.example",
            [
                f"@ IN TXT {txt('v=spf1 -all')}",
                f"_dmarc IN TXT {txt('v=DMARC1; p=reject; pct=0')}",
            ],
        ),
    }


def message(
    from_addr: str, *, subject: str = "Hello", body: str = "Hi there.\r\n", extra_headers: str = ""
) -> bytes:
    return (
        f"{extra_headers}From: Sender <{from_addr}>\r\n"
        "To: Rcpt <user@rcpt.example>\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <1@test>\r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\n"
        "\r\n"
        f"{body}"
    ).encode()


def sign(msg: bytes, key: DkimKey, domain: str, selector: str = "sel") -> bytes:
    sig: bytes = dkim.sign(
        msg,
        selector.encode(),
        domain.encode(),
        key.private_pem,
        include_headers=[b"from", b"to", b"subject", b"date", b"message-id"],
    )
    return sig + msg
