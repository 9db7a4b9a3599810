"""DNS blocklist lookups for the MX (RFC 5782): is the client address listed?

Asked once per connection, before the greeting; a listed client is refused at RCPT time with
554 5.7.1 naming the list (Postfix's reject_rbl_client), so the refusal is logged with the
envelope. Uses dnspython's async resolver with `[dns] resolver` when set.
"""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.resolver
import dns.reversename


async def dnsbl_listing(
    resolver: dns.asyncresolver.Resolver, ip: str, zones: list[str]
) -> str | None:
    """The first DNSBL zone listing `ip` (an A record in 127.0.0.0/8, RFC 5782 §2.1), or None.

    A lookup that fails or times out counts as not listed: a broken blocklist must not stop mail.
    """
    try:
        reversed_name = dns.reversename.from_address(ip)
    except (ValueError, dns.exception.SyntaxError):
        return None
    # in-addr.arpa / ip6.arpa labels without the suffix: 1.2.0.192.zen.spamhaus.org
    labels = reversed_name.relativize(
        dns.reversename.ipv4_reverse_domain
        if ":" not in ip
        else dns.reversename.ipv6_reverse_domain
    )

    async def query(zone: str) -> str | None:
        name = f"{labels.to_text()}.{zone.strip('.')}."
        try:
            answer = await resolver.resolve(name, "A")  # lifetime: [dns] timeout_s
        except (dns.exception.DNSException, OSError):
            return None
        for rdata in answer:
            if str(rdata.address).startswith("127."):
                return zone
        return None

    results = await asyncio.gather(*(query(z) for z in zones))
    return next((z for z in results if z is not None), None)
