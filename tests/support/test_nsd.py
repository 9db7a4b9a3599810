"""The nsd test fixture itself: it serves what it is given, and stops when told."""

from __future__ import annotations

from pathlib import Path

import dns.exception
import dns.resolver
import pytest

from tests.support import nsd
from tests.support.nsd import NsdError, NsdFactory, NsdServer

nsd_server = nsd.nsd_server  # the fixture, by name

pytestmark = pytest.mark.external

EXAMPLE = """\
$ORIGIN example.com.
$TTL 300
@    IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@    IN NS  ns1.example.com.
ns1  IN A   127.0.0.1
@    IN MX  10 mail.example.com.
mail IN A   192.0.2.10
@    IN TXT "v=spf1 mx -all"
"""

REVERSE = """\
$TTL 300
@   IN SOA ns1.example.com. hostmaster.example.com. 1 3600 600 86400 300
@   IN NS  ns1.example.com.
10  IN PTR mail.example.com.
"""


def resolver(host: str, port: int) -> dns.resolver.Resolver:
    r = dns.resolver.Resolver(configure=False)
    r.nameservers = [host]
    r.port = port
    r.lifetime = 2.0
    return r


def test_serves_given_zones(nsd_server: NsdFactory) -> None:
    host, port = nsd_server({"example.com": EXAMPLE, "2.0.192.in-addr.arpa": REVERSE})
    assert host == "127.0.0.1"
    assert port > 1024
    r = resolver(host, port)
    assert [str(a) for a in r.resolve("mail.example.com", "A")] == ["192.0.2.10"]
    assert [a.exchange.to_text() for a in r.resolve("example.com", "MX")] == ["mail.example.com."]
    txt = r.resolve("example.com", "TXT")
    assert [b"".join(t.strings) for t in txt] == [b"v=spf1 mx -all"]
    ptr = r.resolve("10.2.0.192.in-addr.arpa", "PTR")
    assert [p.target.to_text() for p in ptr] == ["mail.example.com."]
    with pytest.raises(dns.resolver.NXDOMAIN):
        r.resolve("nothere.example.com", "A")
    # Over TCP as well (large TXT answers, e.g. DKIM keys, may need it).
    assert [str(a) for a in r.resolve("mail.example.com", "A", tcp=True)] == ["192.0.2.10"]


def test_two_servers_are_independent_and_stop(nsd_server: NsdFactory) -> None:
    first = nsd_server({"example.com": EXAMPLE})
    second = nsd_server({"example.com": EXAMPLE.replace("192.0.2.10", "192.0.2.99")})
    assert first != second
    assert [str(a) for a in resolver(*second).resolve("mail.example.com", "A")] == ["192.0.2.99"]
    server = nsd_server.servers[0]
    pid = server.process.pid if server.process else None
    server.stop()
    assert not server.is_running
    assert pid is not None
    with pytest.raises(dns.exception.Timeout):
        resolver(*first).resolve("mail.example.com", "A")
    # The other instance is unaffected.
    assert [str(a) for a in resolver(*second).resolve("mail.example.com", "A")] == ["192.0.2.99"]


def test_invalid_zone_is_reported(tmp_path: Path) -> None:
    server = NsdServer(tmp_path, {"example.com": "this is not a zone\n"})
    with pytest.raises(NsdError, match=r"example\.com is invalid"):
        server.start()
    assert not server.is_running


def test_zone_file_path_is_read(nsd_server: NsdFactory, tmp_path: Path) -> None:
    zone = tmp_path / "example.com.zone"
    zone.write_text(EXAMPLE)
    host, port = nsd_server({"example.com.": zone})
    assert [str(a) for a in resolver(host, port).resolve("ns1.example.com", "A")] == ["127.0.0.1"]
