"""DNS blocklist lookups (RFC 5782): is an address listed? One rule for the MX and `check`.

The MX asks once per connection, before the greeting; a listed client is refused at RCPT time
with 554 5.7.1 naming the list (Postfix's reject_rbl_client), so the refusal is logged with the
envelope. `mailstack check --network` asks the same question about our own addresses.

What counts as listed (`listing_codes`): an A record in 127.0.0.0/8 (RFC 5782 §2.1), except
127.255.255.x, which Spamhaus answers when it refuses the query (for example one that came
through a public resolver): that says nothing about the address, and treating it as a listing
would refuse every client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import dns.asyncresolver
import dns.exception
import dns.reversename

REFUSED_QUERY = "127.255.255."


def dnsbl_name(address: str, zone: str) -> str:
    """RFC 5782 §2.1 (IPv4: octets reversed) and §2.4 (IPv6: nibbles reversed) under `zone`.
    Raises ValueError for something that is not an IP address."""
    try:
        rev = dns.reversename.from_address(address).to_text()
    except dns.exception.SyntaxError as exc:
        raise ValueError(str(exc)) from None
    labels = rev.removesuffix("in-addr.arpa.").removesuffix("ip6.arpa.")
    return f"{labels}{zone.strip('.')}."


def listing_codes(answers: Iterable[str]) -> list[str]:
    """The answers that say "listed" (see the module docstring)."""
    return [a for a in answers if a.startswith("127.") and not a.startswith(REFUSED_QUERY)]


async def dnsbl_listing(
    resolver: dns.asyncresolver.Resolver, ip: str, zones: list[str]
) -> str | None:
    """The first DNSBL zone listing `ip`, or None.

    A lookup that fails or times out counts as not listed: a broken blocklist must not stop mail.
    """
    try:
        names = [(zone, dnsbl_name(ip, zone)) for zone in zones]
    except ValueError:
        return None

    async def query(zone: str, name: str) -> str | None:
        try:
            answer = await resolver.resolve(name, "A")  # lifetime: [dns] timeout_s
        except (dns.exception.DNSException, OSError):
            return None
        return zone if listing_codes(str(r.address) for r in answer) else None

    results = await asyncio.gather(*(query(zone, name) for zone, name in names))
    return next((z for z in results if z is not None), None)
