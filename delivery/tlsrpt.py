"""SMTP TLS Reporting (RFC 8460): count our outbound TLS sessions, mail a daily report.

    ReportStore(path).add(Session(...), now=)        one session's outcome, counted per UTC day
    parse_tlsrpt_record(txt_strings) -> [mailto addresses]          RFC 8460 §3 (pure)
    build_report(...) -> (json bytes), report_message(...) -> bytes  §4.4, §5.3 (pure)
    send_due_reports(store, queue, config, dns, now)                  past days, via the queue
    run(store, queue, config, stop)                                   the hourly task in serve

Counts live in `queue/tlsrpt.sqlite3` (the queue's spool: the same owner, the same backups),
one row per (day, policy domain, policy, MX host, address, result) with a count, so a busy day
costs rows per distinct outcome, not per session. After a day ends (UTC), each domain that
publishes `_smtp._tls.<domain>` TXT `v=TLSRPTv1; rua=mailto:...` gets one JSON report,
gzipped, in a multipart/report message through the outbound queue (DKIM-signed there as our
primary domain, as §5.3 asks); then that day's rows are deleted (for a domain without a rua
too). A crash between the enqueue and the delete sends a day's report twice; never loses one.
An `https:` rua gets the same gzipped JSON by POST (§3, Content-Type
application/tlsrpt+gzip; `post_report`), its host resolved through our resolver and its
certificate verified against the system CAs or `[outbound] ca_file`; a refused or failed POST
is logged and not retried (the mailto: copies still go). The envelope sender is null (RFC 5321
§4.5.5): a report that cannot be delivered must not bounce back into a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import http.client
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Any, Protocol

from mailstack.delivery.mtasts_fetch import HttpsConnection
from mailstack.delivery.transport import verified_context

from mailstack.base.config import Config
from mailstack.base.dns import DnsClient, DnsTempError, make_resolver
from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

CHECK_EVERY_S = 3600.0  # how often serve looks for a finished day to report
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    day TEXT NOT NULL, domain TEXT NOT NULL, policy_type TEXT NOT NULL,
    policy_strings TEXT NOT NULL, mx_host TEXT NOT NULL, address TEXT NOT NULL,
    result TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (day, domain, policy_type, policy_strings, mx_host, address, result)
)"""


@dataclass(frozen=True, slots=True)
class Session:
    domain: str  # the policy domain: the recipient domain (RFC 8460 §4.4 "policy-domain")
    policy_type: str  # "sts", "tlsa" or "no-policy-found" (§4.4)
    policy_strings: tuple[str, ...]
    mx_host: str
    address: str
    result: str | None  # None: TLS as the policy required; else a §4.3 result type


def _day(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).date().isoformat()


def _setup(db: sqlite3.Connection) -> None:
    # Statistics, not mail: WAL without an fsync per session keeps them off the delivery
    # path's critical disk time; a power cut may lose the last few counts.
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(_SCHEMA)


class ReportStore:
    """Session counts in SQLite (`path`; None: in memory). Thread-safe; opened lazily so
    building a queue (`mailstack queue list`) creates no file."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path) if self.path is not None else ":memory:"
            self._db = open_shared(target, _setup, timeout_s=5.0, check_same_thread=False)
        return self._db

    def add(self, session: Session, *, now: float) -> None:
        row = (
            _day(now),
            session.domain,
            session.policy_type,
            json.dumps(list(session.policy_strings)),
            session.mx_host,
            session.address,
            session.result or "",
        )
        try:
            with self._lock:
                self._conn().execute(
                    "INSERT INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT DO UPDATE"
                    " SET count = count + 1",
                    row,
                )
        except sqlite3.Error as exc:  # reporting must never stop a delivery
            log.warning("tlsrpt: cannot record a session for %s: %s", session.domain, exc)

    def finished_days(self, now: float) -> list[tuple[str, str]]:
        """(day, domain) pairs with counts from days before today (UTC)."""
        with self._lock:
            rows = self._conn().execute(
                "SELECT DISTINCT day, domain FROM sessions WHERE day < ? ORDER BY day, domain",
                (_day(now),),
            )
            return [(str(d), str(n)) for d, n in rows]

    def rows(self, day: str, domain: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(
                self._conn().execute(
                    "SELECT policy_type, policy_strings, mx_host, address, result, count"
                    " FROM sessions WHERE day = ? AND domain = ?",
                    (day, domain),
                )
            )

    def forget(self, day: str, domain: str) -> None:
        with self._lock:
            self._conn().execute("DELETE FROM sessions WHERE day = ? AND domain = ?", (day, domain))


# -- the pure part ---------------------------------------------------------------------------

# RFC 8460 §3: tlsrpt-record = tlsrpt-version 1*(field-delim tlsrpt-field) [field-delim]
#   tlsrpt-version = %s"v=TLSRPTv1";  tlsrpt-rua = %s"rua=" tlsrpt-uri *("," tlsrpt-uri)
_FIELD_SEP = re.compile(r"[ \t]*;[ \t]*")


def _rua(records: Iterable[bytes]) -> list[str]:
    """The rua URIs of the one `_smtp._tls` record; [] when there is none usable (§3:
    records not starting with the version are ignored; more than one: no reporting)."""
    texts = [r for r in records if r.startswith(b"v=TLSRPTv1")]
    if len(texts) != 1:
        return []
    try:
        fields = _FIELD_SEP.split(texts[0].decode("ascii"))
    except UnicodeDecodeError:
        return []
    if fields[0] != "v=TLSRPTv1":
        return []
    rua = next((f[4:] for f in fields[1:] if f.startswith("rua=")), "")
    return [uri.strip() for uri in rua.split(",")]


def parse_tlsrpt_https(records: Iterable[bytes]) -> list[str]:
    """The https: URLs of the one `_smtp._tls` record (RFC 8460 §3)."""
    return [u for u in _rua(records) if re.fullmatch(r"(?i)https://[A-Za-z0-9.-]+(:\d+)?/\S*", u)]


def parse_tlsrpt_record(records: Iterable[bytes]) -> list[str]:
    """The mailto: addresses of the one `_smtp._tls` record (RFC 8460 §3)."""
    out: list[str] = []
    for uri in _rua(records):
        if uri.lower().startswith("mailto:"):
            address = uri[7:].split("?", 1)[0]
            if re.fullmatch(r"[^@\s,;<>]+@[A-Za-z0-9.-]+", address):
                out.append(address)
    return out


def build_report(
    *,
    organization: str,
    contact: str,
    report_id: str,
    day: str,
    domain: str,
    rows: Sequence[tuple[Any, ...]],
) -> dict[str, Any]:
    """The JSON report of one day for one policy domain (RFC 8460 §4.4)."""
    policies: dict[tuple[str, str], dict[str, Any]] = {}
    for policy_type, strings, mx_host, address, result, count in rows:
        entry = policies.setdefault(
            (policy_type, strings),
            {
                "policy": {
                    "policy-type": policy_type,
                    "policy-string": json.loads(strings),
                    "policy-domain": domain,
                },
                "summary": {"total-successful-session-count": 0, "total-failure-session-count": 0},
                "failure-details": [],
            },
        )
        if policy_type == "sts":
            mx = [s[4:] for s in json.loads(strings) if s.startswith("mx: ")]
            entry["policy"]["mx-host"] = mx
        if not result:
            entry["summary"]["total-successful-session-count"] += count
            continue
        entry["summary"]["total-failure-session-count"] += count
        detail: dict[str, Any] = {"result-type": result, "failed-session-count": count}
        if mx_host:
            detail["receiving-mx-hostname"] = mx_host
        if address:
            detail["receiving-ip"] = address
        entry["failure-details"].append(detail)
    for entry in policies.values():
        if not entry["failure-details"]:
            del entry["failure-details"]
    return {
        "organization-name": organization,
        "date-range": {"start-datetime": f"{day}T00:00:00Z", "end-datetime": f"{day}T23:59:59Z"},
        "contact-info": contact,
        "report-id": report_id,
        "policies": list(policies.values()),
    }


def report_message(
    *, report: dict[str, Any], submitter: str, from_address: str, to: Sequence[str], now: float
) -> bytes:
    """The report mail (RFC 8460 §5.3): multipart/report; report-type="tlsrpt", the JSON
    gzipped as application/tlsrpt+gzip, named as §5.1 asks."""
    domain = report["policies"][0]["policy"]["policy-domain"] if report["policies"] else ""
    day = report["date-range"]["start-datetime"][:10]
    begin = int(datetime.datetime.fromisoformat(f"{day}T00:00:00+00:00").timestamp())
    msg = EmailMessage()
    msg["From"] = from_address
    msg["To"] = ", ".join(to)
    msg["Subject"] = (
        f"Report Domain: {domain} Submitter: {submitter} Report-ID: <{report['report-id']}>"
    )
    msg["Date"] = format_datetime(datetime.datetime.fromtimestamp(now, datetime.UTC))
    msg["Message-ID"] = make_msgid(domain=submitter)
    msg["TLS-Report-Domain"] = domain
    msg["TLS-Report-Submitter"] = submitter
    msg.set_content(
        f"This is an aggregate TLS report (RFC 8460) from {submitter} for {domain}, {day}.\n"
    )
    # §5.1: sender "!" policy-domain "!" begin-timestamp "!" end-timestamp "!" unique-id
    name = f"{submitter}!{domain}!{begin}!{begin + 86399}!{report['report-id']}.json.gz"
    msg.add_attachment(
        gzip.compress(json.dumps(report).encode(), mtime=0),
        maintype="application",
        subtype="tlsrpt+gzip",
        filename=name,
    )
    msg.set_type("multipart/report")  # keeps the boundary add_attachment chose
    msg.set_param("report-type", "tlsrpt")
    return msg.as_bytes().replace(b"\n", b"\r\n")


# -- sending ---------------------------------------------------------------------------------


class Enqueue(Protocol):
    def enqueue(
        self, mail_from: str, rcpts: Sequence[str], message: bytes, *, sign: bool = True
    ) -> str: ...


def send_due_reports(
    store: ReportStore, queue: Enqueue, config: Config, dns: DnsClient, now: float
) -> list[str]:
    """Queue a report for every finished day and domain that asks for one; queue ids."""
    queued: list[str] = []
    submitter = config.server.domains[0]
    for day, domain in store.finished_days(now):
        try:
            records = dns.txt(f"_smtp._tls.{domain}")
        except DnsTempError as exc:
            log.info("tlsrpt: %s: cannot look up the rua now: %s", domain, exc)
            continue  # next time
        rua, urls = parse_tlsrpt_record(records), parse_tlsrpt_https(records)
        if rua or urls:
            report = build_report(
                organization=submitter,
                contact=f"postmaster@{submitter}",
                report_id=f"{day}.{domain}.{secrets.token_hex(8)}@{submitter}",
                day=day,
                domain=domain,
                rows=store.rows(day, domain),
            )
            for url in urls:
                try:
                    post_report(dns, url, report, ca_file=config.outbound.ca_file)
                except ReportPostError as exc:
                    log.warning("tlsrpt: %s report for %s not posted: %s", day, domain, exc)
                else:
                    log.info("tlsrpt: %s report for %s posted to %s", day, domain, url)
            if rua:
                message = report_message(
                    report=report,
                    submitter=submitter,
                    from_address=f"tlsrpt-noreply@{submitter}",
                    to=rua,
                    now=now,
                )
                queued.append(queue.enqueue("", rua, message))
                log.info("tlsrpt: %s report for %s queued to %s", day, domain, ", ".join(rua))
        store.forget(day, domain)
    return queued


class ReportPostError(Exception):
    """An https: rua did not take the report."""


def post_report(dns: DnsClient, url: str, report: dict[str, Any], *, ca_file: str) -> None:
    """POST the gzipped JSON report to an https: rua (RFC 8460 §3); 2xx is success.
    Blocking (DNS, HTTPS): send_due_reports runs in a thread."""
    parsed = urllib.parse.urlsplit(url)
    host, port = parsed.hostname or "", parsed.port or 443
    try:
        addresses = [str(r) for t in ("A", "AAAA") for r in dns.lookup(host, t)]
    except DnsTempError as exc:
        raise ReportPostError(f"{host}: {exc}") from None
    if not addresses:
        raise ReportPostError(f"{host} has no address")
    body = gzip.compress(json.dumps(report).encode(), mtime=0)
    path = parsed.path + (f"?{parsed.query}" if parsed.query else "")
    errors: list[str] = []
    for address in addresses:
        conn = HttpsConnection(host, address, port, verified_context(ca_file))
        try:
            conn.request("POST", path, body, headers={"Content-Type": "application/tlsrpt+gzip"})
            status = conn.getresponse().status
            if 200 <= status < 300:
                return
            raise ReportPostError(f"{url}: HTTP {status}")  # the server answered: no retry
        except (OSError, http.client.HTTPException) as exc:  # ssl.SSLError included
            errors.append(f"{address}: {exc}")
        finally:
            conn.close()
    raise ReportPostError(f"{url}: {'; '.join(errors)}")


async def run(store: ReportStore, queue: Enqueue, config: Config, stop: asyncio.Event) -> None:
    """serve's task: once an hour, send what finished days owe (a failure is logged)."""
    dns = DnsClient(make_resolver(config.dns))
    while not stop.is_set():
        try:
            await asyncio.to_thread(send_due_reports, store, queue, config, dns, time.time())
        except Exception:
            log.exception("tlsrpt: sending reports failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), CHECK_EVERY_S)
