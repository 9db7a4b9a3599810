"""TLS-RPT (RFC 8460): outbound sessions counted, the daily report mailed through the queue to
the `rua` a domain publishes (a real nsd serves `_smtp._tls.rpt.test`), received by an SMTP
sink, parsed, its DKIM signature verified against the key in DNS."""

from __future__ import annotations

import asyncio
import email
import email.policy
import gzip
import http.server
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.delivery import tlsrpt
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.tlsrpt import ReportStore, Session, parse_tlsrpt_record

from mailstack.base.config import Config, config_from_dict
from mailstack.base.dns import DnsClient, make_resolver
from mailstack.base.paths import StatePaths
from mailstack.keys import dkim_public_record
from tests.delivery.outsec_support import Pki, TlsMx, domain_records, zone
from tests.delivery.test_queue import dnsfunc
from tests.delivery.test_remote import _txt, dkim_key
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external

DAY_S = 86400.0
START = 1_800_000_000.0  # 2027-01-15, mid-day UTC
RUA = "v=TLSRPTv1; rua=mailto:tls@reports.test,https://reports.test/ignored"


class ReportSink:
    """HTTPS on 127.0.0.1 (a certificate for collector.reports.test from the test CA) that
    keeps every POST: what an https: rua receives."""

    def __init__(self, pki: Pki) -> None:
        self.posts: list[tuple[str, str, bytes]] = []  # (path, Content-Type, body)
        self.status = 200
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.posts.append((self.path, self.headers.get("Content-Type", ""), body))
                self.send_response(sink.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ctx, _ = pki.server_context("collector.reports.test")
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture(scope="module")
def report_sink(pki: Pki) -> Iterator[ReportSink]:
    sink = ReportSink(pki)
    try:
        yield sink
    finally:
        sink.httpd.shutdown()
        # shutdown() only stops serve_forever: the listening socket stays open until closed
        # (left to the collector, it failed a later test with a ResourceWarning).
        sink.httpd.server_close()


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory, report_sink: ReportSink) -> Iterator[int]:
    https_rua = f"v=TLSRPTv1; rua=https://collector.reports.test:{report_sink.port}/tlsrpt?d=1"
    records = (
        domain_records("rpt", extra=f'_smtp._tls.rpt IN TXT "{RUA}"\n')
        + domain_records("hrpt", extra=f'_smtp._tls.hrpt IN TXT "{https_rua}"\n')
        + "collector.reports IN A 127.0.0.1\n"
        + domain_records("quiet")
        + domain_records("reports")
        + f"mailstack._domainkey.sender IN TXT ( {_txt(dkim_public_record(dkim_key()))} )\n"
    )
    server = NsdServer(tmp_path_factory.mktemp("nsd"), {"test": zone(records)})
    try:
        yield server.start()[1]
    finally:
        server.stop()


async def _serve(mx: TlsMx) -> AsyncIterator[TlsMx]:
    server = await mx.start()
    try:
        yield mx
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def tls_mx() -> AsyncIterator[TlsMx]:
    ctx, _ = Pki().server_context("mx.rpt.test", "mx.reports.test", "mx.quiet.test")
    async for mx in _serve(TlsMx(ctx)):
        yield mx


@pytest.fixture
async def plain_mx() -> AsyncIterator[TlsMx]:
    async for mx in _serve(TlsMx(None)):
        yield mx


def config(dns_port: int, mx_port: int) -> Config:
    return config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": ["sender.test"]},
            "dns": {"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
            "outbound": {"mx_port": mx_port},
        }
    )


def _queue(cfg: Config, root: Path, now: list[float]) -> OutboundQueue:
    paths = StatePaths(root)
    paths.dkim_dir.mkdir(parents=True, exist_ok=True)
    paths.dkim_key("mailstack", "sender.test").write_bytes(dkim_key())
    queue = OutboundQueue(cfg, paths, clock=lambda: now[0])
    queue.security.clock = lambda: now[0]
    return queue


MESSAGE = b"From: alice@sender.test\r\nTo: bob@rpt.test\r\nSubject: hi\r\n\r\nhello\r\n"


def _report(raw: bytes) -> tuple[Any, dict[str, Any]]:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    (part,) = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
    return msg, json.loads(gzip.decompress(part.get_payload(decode=True)))


async def test_the_daily_report_reaches_the_rua_signed_and_parsable(
    dns_port: int, tls_mx: TlsMx, plain_mx: TlsMx, tmp_path: Path
) -> None:
    now = [START]
    # One session with TLS (the sink offers STARTTLS), one to a sink without it: the same
    # spool, so the same counts.
    with_tls = _queue(config(dns_port, tls_mx.port), tmp_path, now)
    with_tls.enqueue("alice@sender.test", ["bob@rpt.test", "carol@quiet.test"], MESSAGE)
    await with_tls.run_once()
    without = _queue(config(dns_port, plain_mx.port), tmp_path, now)
    without.enqueue("alice@sender.test", ["dave@rpt.test"], MESSAGE)
    await without.run_once()
    assert len(tls_mx.received) == 2 and len(plain_mx.received) == 1

    client = DnsClient(make_resolver(with_tls.config.dns))
    store = with_tls.security.reports
    # Today is not over: nothing is sent yet.
    assert tlsrpt.send_due_reports(store, with_tls, with_tls.config, client, now[0]) == []
    now[0] += DAY_S
    queued = tlsrpt.send_due_reports(store, with_tls, with_tls.config, client, now[0])
    assert len(queued) == 1  # rpt.test publishes a rua; quiet.test does not
    assert store.finished_days(now[0]) == []  # both days' counts are gone once handled
    await with_tls.run_once()
    (got,) = [g for g in tls_mx.received if "tls@reports.test" in g.rcpts]
    assert (
        got.mail_from == "<>"
    )  # the null sender (as aiosmtpd writes it): a report never bounces back

    msg, report = _report(got.content)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "tlsrpt"
    assert msg["TLS-Report-Domain"] == "rpt.test"
    assert msg["TLS-Report-Submitter"] == "sender.test"
    assert msg["Subject"].startswith("Report Domain: rpt.test Submitter: sender.test Report-ID: <")
    assert dkim.verify(got.content, dnsfunc=dnsfunc(dns_port))
    day = "2027-01-15"
    assert report["date-range"] == {
        "start-datetime": f"{day}T00:00:00Z",
        "end-datetime": f"{day}T23:59:59Z",
    }
    assert report["organization-name"] == "sender.test"
    (policy,) = report["policies"]
    assert policy["policy"] == {
        "policy-type": "no-policy-found",
        "policy-string": [],
        "policy-domain": "rpt.test",
    }
    assert policy["summary"] == {
        "total-successful-session-count": 1,
        "total-failure-session-count": 1,
    }
    assert policy["failure-details"] == [
        {
            "result-type": "starttls-not-supported",
            "failed-session-count": 1,
            "receiving-mx-hostname": "mx.rpt.test",
            "receiving-ip": "127.0.0.1",
        }
    ]


async def test_serve_task_sends_what_finished_days_owe(dns_port: int, tls_mx: TlsMx) -> None:
    cfg = config(dns_port, tls_mx.port)
    store = ReportStore(None)
    store.add(
        Session("rpt.test", "no-policy-found", (), "mx.rpt.test", "127.0.0.1", None),
        now=time.time() - DAY_S,
    )
    sent: list[tuple[str, list[str]]] = []

    class Queue:
        def enqueue(self, mail_from: str, rcpts: Any, message: bytes, *, sign: bool = True) -> str:
            sent.append((mail_from, list(rcpts)))
            return "id"

    stop = asyncio.Event()
    task = asyncio.create_task(tlsrpt.run(store, Queue(), cfg, stop))
    while not sent:
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert sent == [("", ["tls@reports.test"])]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([RUA.encode()], ["tls@reports.test"], id="mailto-and-https"),
        pytest.param(
            [b"v=TLSRPTv1;rua=mailto:a@x.test,mailto:b@y.test"], ["a@x.test", "b@y.test"], id="two"
        ),
        pytest.param(
            [b"v=TLSRPTv1; rua=mailto:a@x.test", b"v=TLSRPTv1; rua=mailto:b@x.test"], [], id="twice"
        ),
        pytest.param([b"v=spf1 -all"], [], id="other-record"),
        pytest.param([b"v=TLSRPTv1; rua=mailto:not an address"], [], id="bad-address"),
        pytest.param([b"v=TLSRPTv1x; rua=mailto:a@x.test"], [], id="bad-version"),
    ],
)
def test_rua_records(records: list[bytes], expected: list[str]) -> None:
    assert parse_tlsrpt_record(records) == expected


@given(st.lists(st.binary(max_size=300), max_size=3))
@example([b"v=TLSRPTv1; rua=mailto:"])
@example([b"v=TLSRPTv1;rua=mailto:a@b?subject=x,mailto:\xff@x"])
def test_any_txt_records_give_addresses_or_nothing(records: list[bytes]) -> None:
    for address in parse_tlsrpt_record(records):
        local, _, domain = address.partition("@")
        assert local and domain and address.isascii()


async def test_an_https_rua_gets_the_gzipped_json_by_post(
    dns_port: int, report_sink: ReportSink, pki: Pki, tmp_path: Path
) -> None:
    # RFC 8460 §3: an https: rua receives the report as a POST of the gzipped JSON.
    cfg = config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": ["sender.test"]},
            "dns": {"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
            "outbound": {"ca_file": pki.ca_file(tmp_path)},
        }
    )
    store = ReportStore(None)
    store.add(Session("hrpt.test", "no-policy-found", (), "mx.hrpt.test", "127.0.0.1", None),
              now=START)  # fmt: skip
    client = DnsClient(make_resolver(cfg.dns))
    queue = _queue(cfg, tmp_path, [START])
    assert tlsrpt.send_due_reports(store, queue, cfg, client, START + DAY_S) == []  # no mailto
    (path, content_type, body) = report_sink.posts[-1]
    assert (path, content_type) == ("/tlsrpt?d=1", "application/tlsrpt+gzip")
    report = json.loads(gzip.decompress(body))
    (policy,) = report["policies"]
    assert policy["policy"]["policy-domain"] == "hrpt.test"
    assert policy["summary"]["total-successful-session-count"] == 1
    assert store.finished_days(START + DAY_S) == []
    # A collector that refuses is logged, not retried; the day is done all the same.
    report_sink.status = 500
    store.add(Session("hrpt.test", "no-policy-found", (), "mx.hrpt.test", "127.0.0.1", None),
              now=START)  # fmt: skip
    before = len(report_sink.posts)
    tlsrpt.send_due_reports(store, queue, cfg, client, START + DAY_S)
    assert len(report_sink.posts) == before + 1
    assert store.finished_days(START + DAY_S) == []
    report_sink.status = 200
