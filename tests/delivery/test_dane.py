"""DANE for outbound SMTP (RFC 7672) over loopback: TLSA records served by a real nsd, an
aiosmtpd MX with a certificate from a CA nobody trusts (DANE needs no public CA).

nsd is authoritative and never sets the AD bit, so these tests run with `[dns] dnssec =
"trust-all"` (every answer of the configured resolver counts as validated; documented as a
test-only setting); one test shows that "trust-ad" with the same resolver does not apply DANE.

  dane.test     MX mx.dane.test,    TLSA 3 1 1 = the MX certificate's key      (matches)
  danebad.test  MX mx.danebad.test, TLSA 3 1 1 = another key                   (mismatch)
  daneta.test   MX mx.daneta.test,  TLSA 2 1 1 = the issuing CA's key          (matches)
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
from collections.abc import AsyncIterator, Iterator

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery import remote
from mailstack.delivery.dane import Tlsa, match
from mailstack.delivery.remote_session import RcptResult
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config, config_from_dict
from mailstack.base.errors import ConfigError
from tests.delivery.outsec_support import Pki, TlsMx, domain_records, zone
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external

MESSAGE = b"From: alice@sender.test\r\nSubject: dane\r\n\r\nhello\r\n"
NAMES = ("dane", "danebad", "daneta")


def spki_sha256(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def mx_cert(pki: Pki) -> tuple[object, trustme.LeafCert]:
    # The untrusted CA issues it and is sent in the chain (DANE-TA needs it served).
    return pki.server_context(*(f"mx.{n}.test" for n in NAMES), ca=pki.untrusted, with_root=True)


@pytest.fixture(scope="module")
def dns_port(
    tmp_path_factory: pytest.TempPathFactory, pki: Pki, mx_cert: tuple[object, trustme.LeafCert]
) -> Iterator[int]:
    leaf = mx_cert[1].cert_chain_pems[0].bytes()
    tlsa = {
        "dane": f"3 1 1 {spki_sha256(leaf)}",
        "danebad": f"3 1 1 {hashlib.sha256(b'some other key').hexdigest()}",
        "daneta": f"2 1 1 {spki_sha256(pki.untrusted.cert_pem.bytes())}",
    }
    records = "".join(
        domain_records(n, extra=f"_25._tcp.mx.{n} IN TLSA {tlsa[n]}\n") for n in NAMES
    )
    server = NsdServer(tmp_path_factory.mktemp("nsd"), {"test": zone(records)})
    try:
        yield server.start()[1]
    finally:
        server.stop()


@pytest.fixture
async def mx(mx_cert: tuple[object, trustme.LeafCert]) -> AsyncIterator[TlsMx]:
    double = TlsMx(mx_cert[0])  # type: ignore[arg-type]
    server = await double.start()
    try:
        yield double
    finally:
        server.close()
        await server.wait_closed()


def config(dns_port: int, mx_port: int, dnssec: str) -> Config:
    return config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": ["sender.test"]},
            "dns": {"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0, "dnssec": dnssec},
            "outbound": {"mx_port": mx_port},
        }
    )


def send(cfg: Config, domain: str, security: OutboundSecurity | None = None) -> RcptResult:
    (result,) = remote.deliver(
        cfg,
        domain,
        "alice@sender.test",
        [f"bob@{domain}"],
        MESSAGE,
        security=security or OutboundSecurity(None),
    )
    return result


@pytest.mark.parametrize("domain", ["dane.test", "daneta.test"], ids=["dane-ee", "dane-ta"])
async def test_a_matching_tlsa_record_delivers_over_tls(
    dns_port: int, mx: TlsMx, domain: str
) -> None:
    security = OutboundSecurity(None)
    result = await asyncio.to_thread(send, config(dns_port, mx.port, "trust-all"), domain, security)
    assert result.kind == "delivered", result.reply
    assert [g.over_tls for g in mx.received] == [True]
    (row,) = security.reports.rows(*security.reports.finished_days(security.clock() + 86400)[0])
    assert (row[0], row[4], row[5]) == ("tlsa", "", 1)  # one successful tlsa session
    assert row[1].startswith('["' + ("3" if domain == "dane.test" else "2") + " 1 1 ")


async def test_a_wrong_certificate_keeps_the_message_queued(dns_port: int, mx: TlsMx) -> None:
    result = await asyncio.to_thread(send, config(dns_port, mx.port, "trust-all"), "danebad.test")
    assert result.kind == "temporary", result.reply
    assert "no TLSA record of _25._tcp.mx.danebad.test matches the certificate" in result.reply
    assert mx.received == []  # and no retry without TLS or without the check


async def test_dnssec_off_does_not_use_dane(dns_port: int, mx: TlsMx) -> None:
    result = await asyncio.to_thread(send, config(dns_port, mx.port, "off"), "danebad.test")
    assert result.kind == "delivered", result.reply


async def test_trust_ad_needs_the_ad_bit(dns_port: int, mx: TlsMx) -> None:
    # nsd is no validating resolver: its answers carry no AD bit, so nothing is "secure".
    result = await asyncio.to_thread(send, config(dns_port, mx.port, "trust-ad"), "danebad.test")
    assert result.kind == "delivered", result.reply


async def test_dane_requires_starttls(dns_port: int) -> None:
    plain = TlsMx(None)
    server = await plain.start()
    try:
        cfg = config(dns_port, plain.port, "trust-all")
        result = await asyncio.to_thread(send, cfg, "dane.test")
    finally:
        server.close()
        await server.wait_closed()
    assert result.kind == "temporary"
    assert "STARTTLS not offered, but TLS is required (dane)" in result.reply
    assert plain.received == []


def test_a_bad_dnssec_setting_is_named() -> None:
    with pytest.raises(ConfigError, match=r"dns\.dnssec"):
        config(53, 25, "yes")


# -- the matching rules, without sockets ----------------------------------------------------

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def chain() -> tuple[trustme.CA, list[bytes]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("mx.example.test")
    der = [
        x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER)
        for p in [*leaf.cert_chain_pems, ca.cert_pem]
    ]
    return ca, der


def _tlsa(usage: int, selector: int, mtype: int, der: bytes) -> Tlsa:
    cert = x509.load_der_x509_certificate(der)
    data = (
        der
        if selector == 0
        else cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    )
    if mtype == 1:
        data = hashlib.sha256(data).digest()
    elif mtype == 2:
        data = hashlib.sha512(data).digest()
    return Tlsa(usage, selector, mtype, data)


@pytest.mark.parametrize(
    ("usage", "selector", "mtype", "which"),
    [(3, 1, 1, 0), (3, 0, 1, 0), (3, 1, 2, 0), (3, 0, 0, 0), (2, 1, 1, -1), (2, 0, 2, -1)],
)
def test_records_that_match(
    chain: tuple[trustme.CA, list[bytes]], usage: int, selector: int, mtype: int, which: int
) -> None:
    _, der = chain
    assert match([_tlsa(usage, selector, mtype, der[which])], der, "mx.example.test", NOW) is None


def test_dane_ta_checks_the_name(chain: tuple[trustme.CA, list[bytes]]) -> None:
    _, der = chain
    problem = match([_tlsa(2, 1, 1, der[-1])], der, "mx.other.test", NOW)
    assert problem is not None and "does not name mx.other.test" in problem
    # The anchor must be served: without it in the chain nothing matches (RFC 7671 §5.2.2).
    problem = match([_tlsa(2, 1, 1, der[-1])], der[:-1], "mx.example.test", NOW)
    assert problem is not None and "matches the certificate" in problem
    # A leaf from another CA does not chain to this anchor.
    stranger = trustme.CA().issue_cert("mx.example.test").cert_chain_pems[0].bytes()
    stranger_der = x509.load_pem_x509_certificate(stranger).public_bytes(Encoding.DER)
    problem = match([_tlsa(2, 1, 1, der[-1])], [stranger_der, der[-1]], "mx.example.test", NOW)
    assert problem is not None and "does not chain" in problem


def test_dane_ee_ignores_names_and_dates(chain: tuple[trustme.CA, list[bytes]]) -> None:
    _, der = chain
    later = NOW + datetime.timedelta(days=3650)  # long after the leaf expired
    assert match([_tlsa(3, 1, 1, der[0])], der, "mx.other.test", later) is None


def test_only_unusable_records_mean_tls_without_authentication(
    chain: tuple[trustme.CA, list[bytes]],
) -> None:
    _, der = chain
    # RFC 7672 §3.1.3: PKIX-* usages are unusable for SMTP, even when they would match
    assert match([_tlsa(1, 1, 1, der[-1])], [der[0]], "mx.example.test", NOW) is None
    assert match([_tlsa(3, 1, 1, der[0])], der[1:], "mx.example.test", NOW) is not None


@given(
    st.lists(st.binary(max_size=64), max_size=3),
    st.lists(st.tuples(st.integers(0, 4), st.integers(0, 2), st.integers(0, 3)), max_size=3),
)
def test_any_chain_bytes_give_a_verdict_not_an_exception(
    chain: list[bytes], params: list[tuple[int, int, int]]
) -> None:
    records = [Tlsa(u, s, m, b"\x00" * 32) for u, s, m in params]
    verdict = match(records, chain, "mx.example.test", NOW)
    assert verdict is None or isinstance(verdict, str)
