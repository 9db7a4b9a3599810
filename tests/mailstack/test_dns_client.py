"""mailstack.base.dns: one resolver rule for every lookup, against a real nsd."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.resolver
import pytest

from mailstack.base.config import DnsConfig
from mailstack.base.dns import DnsClient, DnsTempError, make_async_resolver, make_resolver
from tests.support import nsd
from tests.support.nsd import NsdFactory

nsd_server = nsd.nsd_server

ZONE = """$TTL 300
@   IN SOA ns.example.com. admin.example.com. 1 3600 600 86400 300
@   IN NS  ns.example.com.
ns  IN A   127.0.0.1
@   IN TXT "v=spf1 " "-all"
mx  IN A   192.0.2.25
"""


@pytest.mark.parametrize("make", [make_resolver, make_async_resolver])
def test_both_resolvers_follow_the_config(
    make: type[dns.resolver.Resolver] | type[dns.asyncresolver.Resolver],
) -> None:
    resolver = make(DnsConfig(resolver="127.0.0.2:5300", timeout_s=1.5))  # type: ignore[operator]
    assert resolver.nameservers == ["127.0.0.2"]
    assert resolver.port == 5300
    assert (resolver.timeout, resolver.lifetime) == (1.5, 1.5)
    assert resolver.cache is not None


def test_lookups_through_a_real_server(nsd_server: NsdFactory) -> None:
    host, port = nsd_server({"example.com": ZONE})
    cfg = DnsConfig(resolver=f"{host}:{port}", timeout_s=3)
    client = DnsClient(make_resolver(cfg))
    assert client.txt("example.com") == [b"v=spf1 -all"]  # strings joined (RFC 7208 §3.3)
    assert [r.address for r in client.lookup("mx.example.com", "A")] == ["192.0.2.25"]
    assert client.lookup("nothing.example.com", "A") == []  # NXDOMAIN
    assert client.lookup("mx.example.com", "MX") == []  # NODATA
    assert client.lookup("a" * 70 + ".example.com", "A") == []  # cannot exist

    async def async_lookup() -> list[str]:
        answer = await make_async_resolver(cfg).resolve("mx.example.com", "A")
        return [r.address for r in answer]

    assert asyncio.run(async_lookup()) == ["192.0.2.25"]


def test_no_answer_is_a_temporary_error(nsd_server: NsdFactory) -> None:
    host, port = nsd_server({"example.com": ZONE})
    client = DnsClient(make_resolver(DnsConfig(resolver=f"{host}:{port}", timeout_s=1)))
    with pytest.raises(DnsTempError):
        client.lookup("example.org", "A")  # not our zone: REFUSED
    nsd_server.stop()
    with pytest.raises(DnsTempError):
        client.lookup("fresh.example.com", "A")  # nobody answers: timeout
