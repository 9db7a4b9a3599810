"""`check --network`: are our own addresses on the common DNS blocklists? The same rule as the
MX's (mailstack.smtp.dnsbl), asked through the configured resolver."""

from __future__ import annotations

import dataclasses
import ipaddress

from mailstack.base.config import Config
from mailstack.base.dns import DnsClient, DnsTempError, make_resolver
from mailstack.checks import Finding, failed, passed, skipped
from mailstack.smtp.dnsbl import dnsbl_name, listing_codes

# Used when [smtp] dnsbl is empty: widely consulted lists that answer anyone.
DEFAULT_DNSBLS = ("zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org")


def check_dnsbl(cfg: Config, resolver_override: str = "") -> list[Finding]:
    dns_cfg = dataclasses.replace(cfg.dns, resolver=resolver_override or cfg.dns.resolver)
    client = DnsClient(make_resolver(dns_cfg))
    lists = list(cfg.smtp.dnsbl) or list(DEFAULT_DNSBLS)
    addresses = [a for a in (cfg.server.ipv4, cfg.server.ipv6) if a]
    if not addresses:
        return [skipped("network.dnsbl", "no server.ipv4 or server.ipv6 in the config")]
    out: list[Finding] = []
    for address in addresses:
        ip = ipaddress.ip_address(address)
        if ip.is_private or ip.is_loopback or ip.is_link_local:
            out.append(
                skipped(
                    "network.dnsbl", f"{address} is not a public address: no blocklist lists it"
                )
            )
            continue
        listed: list[str] = []
        unknown: list[str] = []
        for zone in lists:
            try:
                answers = [r.address for r in client.lookup(dnsbl_name(address, zone), "A")]
            except DnsTempError as exc:
                unknown.append(f"{zone} ({exc})")
                continue
            codes = listing_codes(answers)
            if codes:
                listed.append(f"{zone} ({', '.join(codes)})")
            elif answers:
                unknown.append(f"{zone} (refused the query: {', '.join(answers)})")
        if listed:
            out.append(
                failed(
                    "network.dnsbl",
                    f"{address} is listed on {'; '.join(listed)}: "
                    "receivers using these lists refuse our mail",
                    "find and stop the cause (an open relay, a compromised account, "
                    "a spamming script), then request removal on each list's web "
                    "site",
                )
            )
        elif len(unknown) == len(lists):
            out.append(
                skipped("network.dnsbl", f"{address}: no list could be asked: {'; '.join(unknown)}")
            )
        else:
            asked = len(lists) - len(unknown)
            out.append(
                passed(
                    "network.dnsbl",
                    f"{address} is on none of {asked} blocklist(s)"
                    + (f" (not asked: {'; '.join(unknown)})" if unknown else ""),
                )
            )
    return out
