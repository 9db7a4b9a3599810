"""DANE with a real validating resolver (`[dns] dnssec = "trust-ad"`): the `test.` zone is
DNSSEC-signed (ldns) and served by nsd; unbound validates it against the zone's key (its
trust anchor) and sets the AD bit on what validates, SERVFAIL on what does not. No test-only
trust here: this is the production path with a local validating resolver.

  dane.test       TLSA 3 1 1 = the MX certificate's key        -> delivered over TLS
  danebad.test    TLSA 3 1 1 = another key (validly signed)    -> stays queued
  danebogus.test  TLSA altered after signing (an attacker's)   -> SERVFAIL: stays queued
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme
from mailstack.delivery import remote
from mailstack.delivery.remote_session import RcptResult
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config, config_from_dict
from tests.delivery.outsec_support import Pki, TlsMx, domain_records, zone
from tests.delivery.test_dane import spki_sha256
from tests.support.nsd import NsdServer
from tests.support.unbound import UnboundServer, sign_zone

pytestmark = pytest.mark.external

NAMES = ("dane", "danebad", "danebogus")
MESSAGE = b"From: alice@sender.test\r\nSubject: dane\r\n\r\nhello\r\n"


@pytest.fixture(scope="module")
def mx_cert() -> tuple[object, trustme.LeafCert]:
    pki = Pki()
    return pki.server_context(*(f"mx.{n}.test" for n in NAMES), ca=pki.untrusted)


@pytest.fixture(scope="module")
def resolver_port(
    tmp_path_factory: pytest.TempPathFactory, mx_cert: tuple[object, trustme.LeafCert]
) -> Iterator[int]:
    good = spki_sha256(mx_cert[1].cert_chain_pems[0].bytes())
    other = hashlib.sha256(b"another key").hexdigest()
    tlsa = {"dane": good, "danebad": other, "danebogus": other}
    records = "".join(
        domain_records(n, extra=f"_25._tcp.mx.{n} IN TLSA 3 1 1 {tlsa[n]}\n") for n in NAMES
    )
    base = tmp_path_factory.mktemp("dnssec")
    signed, ds = sign_zone(base / "keys", "test.", zone(records))
    # An attacker on the path to the authoritative server swaps in their own key's hash: the
    # record no longer matches its signature.
    forged = hashlib.sha256(b"attacker").hexdigest()
    tampered, count = re.subn(
        rf"(_25\._tcp\.mx\.danebogus\.test\.\s+\d+\s+IN\s+TLSA\s+3 1 1 ){other}",
        rf"\g<1>{forged}",
        signed,
    )
    assert count == 1, signed
    nsd = NsdServer(base / "nsd", {"test": tampered})
    unbound = UnboundServer(base / "unbound", anchors={"test.": ds}, stubs={"test.": 0})
    try:
        unbound.stubs = {"test.": nsd.start()[1]}
        yield unbound.start(probe="mx.dane.test")
    finally:
        unbound.stop()
        nsd.stop()


@pytest.fixture
async def mx(mx_cert: tuple[object, trustme.LeafCert]) -> AsyncIterator[TlsMx]:
    double = TlsMx(mx_cert[0])  # type: ignore[arg-type]
    server = await double.start()
    try:
        yield double
    finally:
        server.close()
        await server.wait_closed()


def config(resolver_port: int, mx_port: int) -> Config:
    return config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": ["sender.test"]},
            "dns": {
                "resolver": f"127.0.0.1:{resolver_port}",
                "timeout_s": 5.0,
                "dnssec": "trust-ad",
            },
            "outbound": {"mx_port": mx_port},
        }
    )


def send(cfg: Config, domain: str) -> RcptResult:
    (result,) = remote.deliver(
        cfg,
        domain,
        "alice@sender.test",
        [f"bob@{domain}"],
        MESSAGE,
        security=OutboundSecurity(None),
    )
    return result


async def test_validated_tlsa_that_matches_delivers(resolver_port: int, mx: TlsMx) -> None:
    result = await asyncio.to_thread(send, config(resolver_port, mx.port), "dane.test")
    assert result.kind == "delivered", result.reply
    assert [g.over_tls for g in mx.received] == [True]


async def test_validated_tlsa_that_does_not_match_keeps_the_message(
    resolver_port: int, mx: TlsMx
) -> None:
    result = await asyncio.to_thread(send, config(resolver_port, mx.port), "danebad.test")
    assert result.kind == "temporary", result.reply
    assert "matches the certificate" in result.reply
    assert mx.received == []


async def test_a_forged_tlsa_record_makes_the_host_unusable(resolver_port: int, mx: TlsMx) -> None:
    result = await asyncio.to_thread(send, config(resolver_port, mx.port), "danebogus.test")
    assert (result.kind, result.reply[:9]) == ("temporary", "451 4.7.5"), result.reply
    assert "TLSA lookup for mx.danebogus.test failed" in result.reply
    assert mx.received == []
