"""The one DNS client: resolvers built from `[dns]` and lookups with one error rule.

Every lookup in mailstack (inbound SPF/DKIM/DMARC, DNSBLs, MX routing for the outbound queue,
`check`) goes through a resolver made here, so `[dns] resolver` ("host[:port]"; empty: the
system's /etc/resolv.conf, or 127.0.0.1 where there is none) and `[dns] timeout_s` mean the
same thing everywhere. Answers are cached per resolver, honouring each answer's TTL.

Lookup rule (`DnsClient.lookup`): NXDOMAIN and NODATA are an empty answer (the name has no such
record); anything else that is not an answer (SERVFAIL, REFUSED, timeout) is `DnsTempError`,
which callers turn into a temporary failure (451 4.4.3, a retry, a "could not check").
"""

from __future__ import annotations

from typing import Any, TypeVar

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from mailstack.base.config import DnsConfig, parse_resolver

CACHE_ENTRIES = 4096

R = TypeVar("R", dns.resolver.Resolver, dns.asyncresolver.Resolver)


class DnsTempError(Exception):
    """A lookup got no answer (SERVFAIL, REFUSED, timeout): try again later."""


def _configure(resolver: R, cfg: DnsConfig) -> R:
    if cfg.resolver:
        host, port = parse_resolver(cfg.resolver)
        resolver.nameservers = [host]
        resolver.port = port
    resolver.timeout = cfg.timeout_s
    resolver.lifetime = cfg.timeout_s
    resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
    return resolver


def _system_or_loopback(factory: type[R], cfg: DnsConfig) -> R:
    if cfg.resolver:
        return _configure(factory(configure=False), cfg)
    try:
        return _configure(factory(), cfg)
    except dns.resolver.NoResolverConfiguration:  # no /etc/resolv.conf: a local cache, if any
        resolver = factory(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        return _configure(resolver, cfg)


def make_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    """A blocking resolver for `[dns]` (run it in a thread from async code)."""
    return _system_or_loopback(dns.resolver.Resolver, cfg)


def make_async_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    """An asyncio resolver for `[dns]`, for lookups on the event loop (DNSBLs)."""
    return _system_or_loopback(dns.asyncresolver.Resolver, cfg)


class DnsClient:
    """Blocking lookups on one resolver: empty for NXDOMAIN/NODATA, DnsTempError otherwise."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def lookup(self, name: str, rdtype: str) -> list[Any]:
        try:
            answer = self.resolver.resolve(name, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer, dns.resolver.YXDOMAIN):
            return []
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.NameTooLong):
            return []  # not a name that can exist: same as NXDOMAIN
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None
        return list(answer)

    def txt(self, name: str) -> list[bytes]:
        """Each TXT record's character-strings joined (RFC 7208 §3.3, RFC 6376 §3.6.2.2)."""
        return [b"".join(r.strings) for r in self.lookup(name, "TXT")]
