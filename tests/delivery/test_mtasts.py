"""MTA-STS for outbound mail (RFC 8461) over loopback: real nsd serving the `_mta-sts` TXT and
MX records, a real HTTPS server with a test CA serving the policies, aiosmtpd MXes offering
STARTTLS with certificates from that CA (or from one nobody trusts).

Domains (all MX and mta-sts hosts resolve to 127.0.0.1):
  sts.test      enforce, mx: mx.sts.test          (the MX is in the policy)
  wrongmx.test  enforce, mx: mx.elsewhere.test    (its MX is not)
  testing.test  testing, mx: mx.elsewhere.test    (report, deliver anyway)
  gone.test     TXT published, no policy served   (no policy: deliver as before)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailstack.delivery import remote
from mailstack.delivery.queue import GIVE_UP_S, OutboundQueue
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config, config_from_dict
from mailstack.base.paths import StatePaths
from tests.delivery.outsec_support import Pki, PolicyServer, TlsMx, domain_records, policy, zone
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external

MESSAGE = b"From: alice@sender.test\r\nTo: bob@x\r\nSubject: sts\r\n\r\nhello\r\n"
NAMES = ["sts", "wrongmx", "testing", "gone"]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    records = "".join(domain_records(n, sts_id="20261206") for n in NAMES)
    server = NsdServer(tmp_path_factory.mktemp("nsd"), {"test": zone(records)})
    try:
        yield server.start()[1]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def policies(pki: Pki) -> Iterator[PolicyServer]:
    ctx, _ = pki.server_context(*(f"mta-sts.{n}.test" for n in NAMES))
    with PolicyServer(ctx) as server:
        server.policies = {
            "mta-sts.sts.test": policy("enforce", "mx.sts.test"),
            "mta-sts.wrongmx.test": policy("enforce", "mx.elsewhere.test"),
            "mta-sts.testing.test": policy("testing", "mx.elsewhere.test"),
        }
        yield server


async def _mx(ctx: Any) -> AsyncIterator[TlsMx]:
    mx = TlsMx(ctx)
    server = await mx.start()
    try:
        yield mx
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def good_mx(pki: Pki) -> AsyncIterator[TlsMx]:
    ctx, _ = pki.server_context(*(f"mx.{n}.test" for n in NAMES))
    async for mx in _mx(ctx):
        yield mx


@pytest.fixture
async def untrusted_mx(pki: Pki) -> AsyncIterator[TlsMx]:
    ctx, _ = pki.server_context(*(f"mx.{n}.test" for n in NAMES), ca=pki.untrusted)
    async for mx in _mx(ctx):
        yield mx


def config(dns_port: int, mx: TlsMx, policies: PolicyServer, pki: Pki, tmp: Path) -> Config:
    return config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": ["sender.test"]},
            "dns": {"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
            "outbound": {
                "mx_port": mx.port,
                "mta_sts_port": policies.port,
                "ca_file": pki.ca_file(tmp),
            },
        }
    )


def send(cfg: Config, domain: str, security: OutboundSecurity) -> remote.RcptResult:
    (result,) = remote.deliver(
        cfg, domain, "alice@sender.test", [f"bob@{domain}"], MESSAGE, security=security
    )
    return result


async def test_enforce_delivers_over_verified_tls_and_caches_the_policy(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    security = OutboundSecurity(tmp_path / "spool")
    before = policies.fetches("sts.test")
    result = await asyncio.to_thread(send, cfg, "sts.test", security)
    assert result.kind == "delivered", result.reply
    assert [g.over_tls for g in good_mx.received] == [True]
    assert policies.fetches("sts.test") == before + 1
    # The same id in DNS and a fresh policy: no second fetch, not even from a new process
    # (the cache is on disk).
    again = OutboundSecurity(tmp_path / "spool")
    result = await asyncio.to_thread(send, cfg, "sts.test", again)
    assert result.kind == "delivered", result.reply
    assert policies.fetches("sts.test") == before + 1
    assert (tmp_path / "spool" / "mta-sts" / "sts.test.json").exists()


async def test_enforce_refuses_an_mx_not_in_the_policy(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    result = await asyncio.to_thread(send, cfg, "wrongmx.test", OutboundSecurity(None))
    assert (result.kind, result.reply[:9]) == ("temporary", "451 4.7.5"), result.reply
    assert "mx.wrongmx.test (not an mx of its MTA-STS policy)" in result.reply
    assert good_mx.received == []


async def test_enforce_refuses_an_unverifiable_certificate(
    dns_port: int, untrusted_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, untrusted_mx, policies, pki, tmp_path)
    security = OutboundSecurity(None)
    result = await asyncio.to_thread(send, cfg, "sts.test", security)
    assert result.kind == "temporary", result.reply
    assert "TLS required (sts)" in result.reply and "certificate verify failed" in result.reply
    assert untrusted_mx.received == []  # and no plain-text retry either


async def test_no_starttls_under_enforce_is_refused(
    dns_port: int, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    async for plain in _mx(None):
        cfg = config(dns_port, plain, policies, pki, tmp_path)
        result = await asyncio.to_thread(send, cfg, "sts.test", OutboundSecurity(None))
        assert result.kind == "temporary"
        assert "STARTTLS not offered" in result.reply
        assert plain.received == []


async def test_testing_mode_delivers_and_records_the_failures(
    dns_port: int, untrusted_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, untrusted_mx, policies, pki, tmp_path)
    security = OutboundSecurity(tmp_path / "spool")
    result = await asyncio.to_thread(send, cfg, "testing.test", security)
    assert result.kind == "delivered", result.reply
    assert [g.over_tls for g in untrusted_mx.received] == [True]  # unverified, still TLS
    day = security.reports.finished_days(security.clock() + 86400)
    assert day and day[0][1] == "testing.test"
    results = {row[4] for row in security.reports.rows(*day[0])}
    assert {"validation-failure", "certificate-not-trusted"} <= results


async def test_a_published_record_without_a_policy_delivers_as_before(
    dns_port: int, untrusted_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, untrusted_mx, policies, pki, tmp_path)
    security = OutboundSecurity(None)
    result = await asyncio.to_thread(send, cfg, "gone.test", security)
    assert result.kind == "delivered", result.reply
    rows = security.reports.rows(*security.reports.finished_days(security.clock() + 86400)[0])
    assert ("sts", "[]", "", "", "sts-policy-fetch-error", 1) in rows


async def test_the_queue_keeps_the_message_then_bounces_with_the_reason(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    now = [1_800_000_000.0]
    queue = OutboundQueue(cfg, StatePaths(tmp_path / "state"), clock=lambda: now[0])
    qid = queue.enqueue("alice@sender.test", ["bob@wrongmx.test"], MESSAGE, sign=False)
    await queue.run_once()
    (rcpt,) = queue.get(qid).recipients
    assert rcpt.status == "pending"
    assert "451 4.7.5" in rcpt.last_reply and "MTA-STS" in rcpt.last_reply
    now[0] += GIVE_UP_S
    queue.flush()
    await queue.run_once()
    dsns = [e for e in queue.list() if e.mail_from == ""]
    assert [r.address for d in dsns for r in d.recipients][:1] == ["alice@sender.test"]
    dsn = queue.message(dsns[0].id)
    assert b"not an mx of its MTA-STS policy" in dsn
    assert good_mx.received == [] or all(
        "bob@wrongmx.test" not in g.rcpts for g in good_mx.received
    )
