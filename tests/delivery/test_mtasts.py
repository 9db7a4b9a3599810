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
import dataclasses
import json
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from mailstack.delivery import remote
from mailstack.delivery.mtasts_fetch import PolicyStore, StsLookup
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.queue_spool import GIVE_UP_S
from mailstack.delivery.remote_session import RcptResult
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config, config_from_dict
from mailstack.base.dns import DnsClient, make_resolver
from mailstack.base.paths import StatePaths
from tests.delivery.outsec_support import Pki, PolicyServer, TlsMx, domain_records, policy, zone
from tests.support.nsd import NsdServer
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.external

MESSAGE = b"From: alice@sender.test\r\nTo: bob@x\r\nSubject: sts\r\n\r\nhello\r\n"
NAMES = ["sts", "wrongmx", "testing", "gone"]


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    records = "".join(domain_records(n, sts_id="20261206") for n in NAMES)
    records += "mta-sts.nosts IN A 127.0.0.1\n"  # a policy host, no _mta-sts record
    server = NsdServer(tmp_path_factory.mktemp("nsd"), {"test": zone(records)})
    try:
        yield server.start()[1]
    finally:
        server.stop()


@pytest.fixture(scope="module")
def policies(pki: Pki) -> Iterator[PolicyServer]:
    ctx, _ = pki.server_context(*(f"mta-sts.{n}.test" for n in [*NAMES, "nosts"]))
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


def send(cfg: Config, domain: str, security: OutboundSecurity) -> RcptResult:
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


@pytest.fixture(
    params=[
        pytest.param(("untrusted", "certificate-not-trusted"), id="untrusted-certificate"),
        pytest.param(("trusted", "validation-failure"), id="mx-not-in-policy"),
    ]
)
async def testing_mx(request: pytest.FixtureRequest, pki: Pki) -> AsyncIterator[tuple[TlsMx, str]]:
    which, failure = request.param
    ca = pki.untrusted if which == "untrusted" else pki.trusted
    ctx, _ = pki.server_context(*(f"mx.{n}.test" for n in NAMES), ca=ca)
    async for mx in _mx(ctx):
        yield mx, failure


async def test_testing_mode_delivers_and_records_the_failure(
    dns_port: int,
    policies: PolicyServer,
    pki: Pki,
    tmp_path: Path,
    testing_mx: tuple[TlsMx, str],
) -> None:
    mx, failure = testing_mx
    cfg = config(dns_port, mx, policies, pki, tmp_path)
    security = OutboundSecurity(tmp_path / "spool")
    result = await asyncio.to_thread(send, cfg, "testing.test", security)
    assert result.kind == "delivered", result.reply
    assert [g.over_tls for g in mx.received] == [True]  # TLS all the same
    (day,) = security.reports.finished_days(security.clock() + 86400)
    assert day[1] == "testing.test"
    # one session, one failure of the sts policy (RFC 8460 counts sessions)
    ((kind, strings, host, _, result_type, count),) = security.reports.rows(*day)
    assert (kind, host, result_type, count) == ("sts", "mx.testing.test", failure, 1)
    assert "mode: testing" in strings


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


def _lookup(store: PolicyStore, cfg: Config, domain: str, now: float) -> StsLookup:
    client = DnsClient(make_resolver(cfg.dns))
    return store.lookup(
        domain,
        client,
        port=cfg.outbound.mta_sts_port,
        ca_file=cfg.outbound.ca_file,
        now=now,
    )


def _seed(directory: Path, domain: str, record_id: str, fetched_at: float, body: bytes) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    entry = {"id": record_id, "fetched_at": fetched_at, "body": body.decode()}
    (directory / f"{domain}.json").write_text(json.dumps(entry))


async def test_a_new_id_or_an_expired_policy_is_fetched_again(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    cache = tmp_path / "cache"
    # Cached under an older id: the TXT record now says 20261206, so it is fetched again.
    _seed(cache, "sts.test", "older", 1000.0, policy("testing", "mx.sts.test", max_age=10**6))
    before = policies.fetches("sts.test")
    got = await asyncio.to_thread(_lookup, PolicyStore(cache), cfg, "sts.test", 2000.0)
    assert got.policy is not None and got.policy.mode == "enforce"
    assert policies.fetches("sts.test") == before + 1
    # Same id, within half its max_age (86400): from the cache; then refreshed before it
    # expires (RFC 8461 §5.1), and again once that copy is due in turn.
    store = PolicyStore(cache)
    await asyncio.to_thread(_lookup, store, cfg, "sts.test", 2000.0 + 43000)
    assert policies.fetches("sts.test") == before + 1
    await asyncio.to_thread(_lookup, store, cfg, "sts.test", 2000.0 + 43200)
    assert policies.fetches("sts.test") == before + 2
    await asyncio.to_thread(_lookup, store, cfg, "sts.test", 2000.0 + 86000)
    assert policies.fetches("sts.test") == before + 2
    await asyncio.to_thread(_lookup, store, cfg, "sts.test", 2000.0 + 86400)
    assert policies.fetches("sts.test") == before + 3


async def test_a_refresh_keeps_a_policy_whose_txt_record_is_gone(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    # nosts.test publishes no _mta-sts record (any more), but its policy host still serves
    # one: a cached policy due for refresh is fetched again and stays in force (§5.1).
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    cache = tmp_path / "cache"
    policies.policies["mta-sts.nosts.test"] = policy("enforce", "mx.nosts.test", max_age=1000)
    _seed(cache, "nosts.test", "old", 1000.0, policy("enforce", "mx.nosts.test", max_age=1000))
    store = PolicyStore(cache)
    got = await asyncio.to_thread(_lookup, store, cfg, "nosts.test", 1400.0)
    assert policies.fetches("nosts.test") == 0 and got.policy is not None
    got = await asyncio.to_thread(_lookup, store, cfg, "nosts.test", 1600.0)
    assert policies.fetches("nosts.test") == 1
    cached = store.cached("nosts.test")
    assert cached is not None and (cached.record_id, cached.fetched_at) == ("old", 1600.0)
    # Past the first copy's expiry (2000), the refreshed one is still in force.
    got = await asyncio.to_thread(_lookup, store, cfg, "nosts.test", 2050.0)
    assert got.policy is not None and got.policy.mode == "enforce"


async def test_a_failed_refresh_keeps_the_cached_policy_in_force(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    # gone.test publishes a new id but its policy cannot be fetched (404): someone blocking
    # the fetch must not switch enforcement off while the cached policy is unexpired (§5.1).
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    now = time.time()
    _seed(
        tmp_path / "spool" / "mta-sts",
        "gone.test",
        "older",
        now - 60,
        policy("enforce", "mx.elsewhere.test"),
    )
    result = await asyncio.to_thread(send, cfg, "gone.test", OutboundSecurity(tmp_path / "spool"))
    assert (result.kind, result.reply[:9]) == ("temporary", "451 4.7.5"), result.reply
    assert good_mx.received == []


async def test_a_policy_host_with_an_untrusted_certificate_gives_no_policy(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    # Without ca_file the policy server's certificate is trusted by nobody: no policy (RFC 8461
    # §3.3), delivery as without one, and the failure counted for TLS-RPT.
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    cfg = dataclasses.replace(cfg, outbound=dataclasses.replace(cfg.outbound, ca_file=""))
    security = OutboundSecurity(None)
    result = await asyncio.to_thread(send, cfg, "wrongmx.test", security)
    assert result.kind == "delivered", result.reply
    rows = security.reports.rows(*security.reports.finished_days(security.clock() + 86400)[0])
    assert ("sts", "[]", "", "", "sts-webpki-invalid", 1) in rows


# -- refreshing without traffic (RFC 8461 §5.1), delivery/mtasts_refresh.py ---------------------


def _client(cfg: Config) -> DnsClient:
    return DnsClient(make_resolver(cfg.dns))


async def test_due_policies_are_refreshed_without_any_mail(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    cache, now = tmp_path / "cache", 10_000_000.0
    body = policy("enforce", "mx.sts.test")  # max_age 86400: due at half, 43200 s old
    _seed(cache, "sts.test", "20261206", now - 50_000, body)  # due
    _seed(cache, "testing.test", "20261206", now - 100, policy("testing", "mx.elsewhere.test"))
    _seed(cache, "wrongmx.test", "20261206", now - 90_000, body)  # expired: mail fetches it
    before = {d: policies.fetches(d) for d in ("sts.test", "testing.test", "wrongmx.test")}
    store = PolicyStore(cache)  # a new process: the domains come from the files

    def refresh(at: float) -> list[str]:
        port, ca = cfg.outbound.mta_sts_port, cfg.outbound.ca_file
        return store.refresh_due(_client(cfg), port=port, ca_file=ca, now=at)

    assert await asyncio.to_thread(refresh, now) == ["sts.test"]
    after = {d: policies.fetches(d) for d in before}
    assert after == {**before, "sts.test": before["sts.test"] + 1}
    cached = store.cached("sts.test")
    assert cached is not None and cached.fetched_at == now
    assert json.loads((cache / "sts.test.json").read_text())["fetched_at"] == now
    # Fresh again: nothing due until half its max_age has passed once more.
    assert await asyncio.to_thread(refresh, now + 1000) == []
    assert policies.fetches("sts.test") == after["sts.test"]


async def test_a_failed_refresh_without_mail_keeps_the_policy_and_waits(
    dns_port: int, good_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    # gone.test serves no policy: the refresh fails, the cached one stays in force, and the
    # next pass within REFRESH_RETRY_S does not fetch again.
    cfg = config(dns_port, good_mx, policies, pki, tmp_path)
    cache, now = tmp_path / "cache", 10_000_000.0
    _seed(cache, "gone.test", "20261206", now - 50_000, policy("enforce", "mx.gone.test"))
    store = PolicyStore(cache)
    client, port, ca = _client(cfg), cfg.outbound.mta_sts_port, cfg.outbound.ca_file
    before = policies.fetches("gone.test")
    await asyncio.to_thread(store.refresh_due, client, port=port, ca_file=ca, now=now)
    await asyncio.to_thread(store.refresh_due, client, port=port, ca_file=ca, now=now + 60)
    assert policies.fetches("gone.test") == before + 1
    got = await asyncio.to_thread(_lookup, store, cfg, "gone.test", now + 60)
    assert got.policy is not None and got.policy.mode == "enforce"


async def test_serve_refreshes_a_cached_policy_with_an_empty_queue(
    dns_port: int, policies: PolicyServer, pki: Pki, deployment_dir: Path
) -> None:
    """The real `mailstack serve`: a policy cached by an earlier run, due for refresh, is
    fetched again at start although nothing is queued."""
    toml = deployment_dir / "mailstack.toml"
    text = toml.read_text()
    for key, value in (
        ("resolver", f'"127.0.0.1:{dns_port}"'),
        ("mta_sts_port", str(policies.port)),
        ("ca_file", f'"{pki.ca_file(deployment_dir)}"'),
    ):
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    toml.write_text(text)
    fetched_at = time.time() - 50_000  # max_age 86400: due, not expired
    _seed(
        StatePaths(deployment_dir).queue_dir / "mta-sts",
        "sts.test",
        "20261206",
        fetched_at,
        policy("enforce", "mx.sts.test"),
    )
    before = policies.fetches("sts.test")
    with ServeProcess(deployment_dir) as serve:
        serve.wait_for("mta-sts: refreshed cached policies of sts.test")
    assert policies.fetches("sts.test") == before + 1
    entry = json.loads((StatePaths(deployment_dir).queue_dir / "mta-sts/sts.test.json").read_text())
    assert entry["fetched_at"] > fetched_at + 49_000


# -- [outbound] ca_file read again when it changes (delivery/transport.py) ----------------------


async def test_a_ca_added_to_ca_file_is_trusted_by_the_next_connection(
    dns_port: int, untrusted_mx: TlsMx, policies: PolicyServer, pki: Pki, tmp_path: Path
) -> None:
    cfg = config(dns_port, untrusted_mx, policies, pki, tmp_path)
    security = OutboundSecurity(None)
    first = await asyncio.to_thread(send, cfg, "sts.test", security)
    assert first.kind == "temporary" and "certificate verify failed" in first.reply
    # The admin adds the MX's CA, as editors and config management write files (a new file
    # renamed over the old); no restart and no SIGHUP.
    ca_file = Path(cfg.outbound.ca_file)
    new = ca_file.with_name("ca.pem.new")
    new.write_bytes(ca_file.read_bytes() + pki.untrusted.cert_pem.bytes())
    os.replace(new, ca_file)
    second = await asyncio.to_thread(send, cfg, "sts.test", security)
    assert second.kind == "delivered", second.reply
    assert [g.over_tls for g in untrusted_mx.received] == [True]
