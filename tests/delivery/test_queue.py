"""delivery.queue: enqueue, the runner, retries, DSNs and DKIM against real DNS and SMTP.

DNS is nsd on loopback (zones in test_remote.py); remotes are our own MX (`start_smtp`) and
aiosmtpd doubles of foreign MTAs. The queue's clock is injected where time matters.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dkim
import dns.resolver
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.queue_runner import MAX_PER_DOMAIN, local_delivery
from mailstack.delivery.queue_spool import (
    DELAY_WARN_S,
    GIVE_UP_S,
    ORPHAN_S,
    SCHEDULE_S,
    retry_delay_s,
)
from mailstack.delivery.queue_state import Entry, Recipient
from mailstack.delivery.remote_session import RcptResult

from mailstack.base.config import Config
from mailstack.base.errors import NotFoundError, UsageError
from mailstack.base.paths import StatePaths
from tests.delivery.test_remote import (
    SELECTOR,
    SENDER_DOMAIN,
    Double,
    dkim_key,
    dns_server,
    double,
    queue_config,
)
from tests.support.smtpserver import build_context, running_smtp

pytestmark = pytest.mark.external
_fixtures = (dns_server, double)  # used by name

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\nTo: someone@a.test\r\nSubject: hello\r\n"
    b"Date: Sun, 22 Nov 2026 15:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\n"
    b"\r\nhello there\r\n"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def make_queue(root: Path, config: Config, clock: Callable[[], float] = time.time) -> OutboundQueue:
    paths = StatePaths(root)
    paths.dkim_dir.mkdir(parents=True, exist_ok=True)
    paths.dkim_key(SELECTOR, SENDER_DOMAIN).write_bytes(dkim_key())
    return OutboundQueue(config, paths, clock=clock)


def dnsfunc(port: int) -> Callable[..., bytes]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = ["127.0.0.1"]
    resolver.port = port

    def get_txt(name: bytes, timeout: float = 5) -> bytes:
        answer = resolver.resolve(name.decode("ascii").rstrip("."), "TXT")
        return b"".join(answer[0].strings)

    return get_txt


def parse(raw: bytes) -> Any:  # email's Message typing does not follow get_payload()
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def delivery_status(dsn: Any) -> list[Any]:
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    part = dsn.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return list(part.get_payload())


async def test_enqueue_stores_signs_and_lists(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, queue_config(53, 25))
    qid = queue.enqueue("alice@sender.test", ["x@a.test", "y@b.test", "x@a.test"], MESSAGE)
    assert (tmp_path / "queue" / "msg" / qid).read_bytes().startswith(b"DKIM-Signature:")
    (entry,) = queue.list()
    assert entry.id == qid
    assert entry.mail_from == "alice@sender.test"
    assert [(r.address, r.status, r.attempts) for r in entry.recipients] == [
        ("x@a.test", "pending", 0),
        ("y@b.test", "pending", 0),
    ]
    assert queue.get(qid) == entry
    # A foreign From: domain is not ours to sign.
    other = queue.enqueue(
        "bob@else.test", ["x@a.test"], MESSAGE.replace(b"sender.test", b"else.test")
    )
    assert not queue.message(other).startswith(b"DKIM-Signature:")
    queue.delete(qid)
    with pytest.raises(NotFoundError):
        queue.get(qid)
    with pytest.raises(NotFoundError):
        queue.delete("../../etc/passwd")
    for bad in (["x@a.test\r\nDATA"], [""], []):
        with pytest.raises(UsageError):
            queue.enqueue("alice@sender.test", bad, MESSAGE)
    with pytest.raises(UsageError):
        queue.enqueue("a@b.test>\r\nRSET", ["x@a.test"], MESSAGE)


async def test_delivered_to_our_mx_and_signed(tmp_path: Path, dns_server: tuple[str, int]) -> None:
    async with running_smtp(tmp_path / "mx") as mx:
        queue = make_queue(tmp_path / "state", queue_config(dns_server[1], mx.port))
        queue.enqueue("alice@sender.test", ["alice@example.com", "bob@example.com"], MESSAGE)
        await queue.run_once()
        assert queue.list() == []  # all delivered: the entry is gone
        (got,) = mx.messages("alice@example.com")
        assert len(mx.messages("bob@example.com")) == 1
    body = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else got.split(b"\n\n", 1)[1]
    assert body.replace(b"\r\n", b"\n") == b"hello there\n"
    received = got[: got.index(b"DKIM-Signature:")]  # what our MX added above the signature
    assert b"from mail.sender.test" in received  # our EHLO name
    assert b"with ESMTPS" in received  # opportunistic STARTTLS happened (RFC 3848)
    signed = got[got.index(b"DKIM-Signature:") :]
    assert dkim.verify(signed, dnsfunc=dnsfunc(dns_server[1]))
    sig = parse(signed)["DKIM-Signature"]
    tags = dict(t.strip().split("=", 1) for t in "".join(sig.split()).split(";") if t.strip())
    assert tags["c"] == "relaxed/relaxed"
    assert tags["a"] == "rsa-sha256"
    assert (tags["d"], tags["s"]) == (SENDER_DOMAIN, SELECTOR)
    assert tags["h"].lower().split(":").count("from") == 2  # oversigned
    assert {"subject", "date", "to", "message-id"} <= set(tags["h"].lower().split(":"))


async def test_temporary_failure_then_success_on_flush(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    clock = Clock()
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port), clock)
    qid = queue.enqueue("alice@sender.test", ["flaky@a.test", "ok@b.test"], MESSAGE)
    await queue.run_once()
    (entry,) = queue.list()
    flaky, ok = entry.recipients
    assert (ok.status, ok.attempts) == ("delivered", 1)
    assert (flaky.status, flaky.attempts) == ("pending", 1)
    assert flaky.last_reply == "451 4.7.1 greylisted, try again later"
    assert flaky.next_attempt == clock.now + SCHEDULE_S[0]
    double.flaky = False
    await queue.run_once()  # not due yet: nothing is attempted
    assert queue.get(qid).recipients[0].attempts == 1
    assert queue.flush() == 1
    await queue.run_once()
    assert queue.list() == []
    assert len(double.to("flaky@a.test")) == 1
    assert len(double.to("ok@b.test")) == 1  # the delivered one was not sent again


async def test_permanent_failure_sends_a_dsn(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    queue.enqueue("alice@sender.test", ["perm@a.test", "ok@a.test"], MESSAGE)
    await queue.run_once()  # perm fails, the DSN is queued
    (dsn_entry,) = queue.list()
    assert dsn_entry.mail_from == ""  # RFC 5321 §4.5.5: a null reverse-path
    await queue.run_once()  # the DSN goes to sender.test's MX
    assert queue.list() == []
    (got,) = double.to("alice@sender.test")
    assert got.mail_from in ("", "<>")
    dsn = parse(got.content)
    assert dsn["To"] == "<alice@sender.test>"
    per_message, rcpt = delivery_status(dsn)
    assert per_message["Reporting-MTA"] == "dns; mail.sender.test"
    assert rcpt["Final-Recipient"] == "rfc822; perm@a.test"
    assert rcpt["Action"] == "failed"
    assert rcpt["Status"] == "5.1.1"
    assert rcpt["Remote-MTA"] == "dns; mx.a.test"
    assert rcpt["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user here"
    headers = dsn.get_payload()[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Message-ID: <m1@sender.test>" in headers.get_payload()
    assert dkim.verify(got.content, dnsfunc=dnsfunc(dns_server[1]))  # our DSNs are signed too


async def test_bounce_to_a_local_user_is_stored_locally(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    ctx, _ = build_context(tmp_path / "local")  # accounts and Maildirs for example.com
    try:
        queue = OutboundQueue(
            queue_config(dns_server[1], double.port),
            ctx.paths,
            hosted_domains=lambda: {SENDER_DOMAIN, "example.com", "example.org"},
            local=local_delivery(ctx.accounts, ctx.store, "mail.sender.test"),
        )
        message = MESSAGE.replace(b"alice@sender.test", b"alice@example.com")
        queue.enqueue("alice@example.com", ["perm@a.test"], message)
        queue.enqueue("", ["nobody@example.com"], message)  # no such user, null sender
        await queue.run_once()  # perm@ fails (DSN queued), nobody@ fails (no DSN)
        await queue.run_once()  # the DSN goes into alice's INBOX, not over SMTP
        assert queue.list() == []
        assert [r.rcpts for r in double.received] == []  # perm@ was refused at RCPT
        root = ctx.paths.maildir("alice@example.com")
        (stored,) = [p.read_bytes() for p in (root / "new").iterdir()]
    finally:
        ctx.accounts.close()
    assert stored.startswith(b"Return-Path: <>")
    assert b"Delivered-To: alice@example.com" in stored
    _, rcpt = delivery_status(parse(stored))
    assert (rcpt["Final-Recipient"], rcpt["Status"]) == ("rfc822; perm@a.test", "5.1.1")


async def test_no_dsn_for_the_null_sender(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    queue.enqueue("", ["perm@a.test"], MESSAGE)
    await queue.run_once()
    assert queue.list() == []
    assert double.received == []


async def test_null_mx_bounces(tmp_path: Path, dns_server: tuple[str, int], double: Double) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    queue.enqueue("alice@sender.test", ["x@nullmx.test"], MESSAGE)
    await queue.run_once()
    await queue.run_once()
    (got,) = double.to("alice@sender.test")
    _, rcpt = delivery_status(parse(got.content))
    assert (rcpt["Final-Recipient"], rcpt["Status"]) == ("rfc822; x@nullmx.test", "5.1.10")
    assert "Remote-MTA" not in rcpt


async def test_delay_warning_then_give_up(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    clock = Clock()
    start = clock.now
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port), clock)
    qid = queue.enqueue("alice@sender.test", ["temp@a.test"], MESSAGE)
    await queue.run_once()
    assert queue.get(qid).recipients[0].status == "pending"
    clock.now = start + DELAY_WARN_S
    await queue.run_once()  # due again; still 451; past the warning time: "delayed" DSN
    await queue.run_once()  # delivers the DSN
    (warning,) = double.to("alice@sender.test")
    _, rcpt = delivery_status(parse(warning.content))
    assert (rcpt["Action"], rcpt["Status"]) == ("delayed", "4.7.1")
    assert queue.get(qid).recipients[0].warned
    clock.now = start + GIVE_UP_S - 1
    queue.flush()
    await queue.run_once()  # not yet given up, and no second warning
    assert queue.get(qid).recipients[0].status == "pending"
    clock.now = start + GIVE_UP_S
    queue.flush()
    await queue.run_once()  # gives up: a "failed" DSN
    await queue.run_once()
    assert queue.list() == []
    warning2, failure = double.to("alice@sender.test")
    assert warning2 == warning
    _, rcpt = delivery_status(parse(failure.content))
    assert (rcpt["Action"], rcpt["Status"]) == ("failed", "4.7.1")
    assert "gave up after 5 days" in rcpt["Diagnostic-Code"]
    assert len(double.received) == 2  # temp@ never accepted anything


def test_schedule_follows_rfc_5321_advice() -> None:
    assert [retry_delay_s(n) for n in range(1, 10)] == [
        60,
        300,
        900,
        1800,
        3600,
        7200,
        14400,
        14400,
        14400,
    ]
    assert all(s >= 1800 for s in SCHEDULE_S[3:])  # RFC 5321 §4.5.4.1: at least 30 minutes
    assert GIVE_UP_S >= 4 * 86400  # "at least 4-5 days"


async def test_runner_wakes_on_enqueue(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    stop = asyncio.Event()
    runner = asyncio.create_task(queue.run(stop))
    try:
        await asyncio.sleep(0)  # let the runner bind to the loop
        await asyncio.to_thread(queue.enqueue, "alice@sender.test", ["ok@a.test"], MESSAGE)
        await double.wait_for("ok@a.test")
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)
    assert queue.list() == []


async def test_stop_interrupts_a_stalled_attempt(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    queue.stop_grace_s = 0.1
    qid = queue.enqueue("alice@sender.test", ["hang@a.test"], MESSAGE)
    stop = asyncio.Event()
    runner = asyncio.create_task(queue.run(stop))
    await asyncio.wait_for(double.data_started.wait(), 60)  # the remote never answers "."
    stop.set()
    await asyncio.wait_for(runner, 60)  # without the abort this waits for SESSION_TIMEOUT_S
    (rcpt,) = queue.get(qid).recipients
    assert (rcpt.status, rcpt.attempts) == ("pending", 1)
    assert rcpt.last_reply.startswith("451 4.4.2 mx.a.test: connection lost")


async def test_concurrency_per_domain(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    for _ in range(MAX_PER_DOMAIN + 1):
        queue.enqueue("alice@sender.test", ["hang@a.test"], MESSAGE)
    in_data = 0
    reached = asyncio.Event()
    original = double.handle_DATA

    async def counting(server: Any, session: Any, envelope: Any) -> str:
        nonlocal in_data
        in_data += 1
        if in_data == MAX_PER_DOMAIN:
            reached.set()
        try:
            return await original(server, session, envelope)
        finally:
            in_data -= 1

    double.handle_DATA = counting  # type: ignore[method-assign]
    run = asyncio.create_task(queue.run_once())
    await asyncio.wait_for(reached.wait(), 60)
    runner = queue._runner
    assert len(runner.inflight) == MAX_PER_DOMAIN + 1  # all dispatched ...
    assert runner.active["a.test"] == MAX_PER_DOMAIN  # ... to this many connections
    assert len(runner.waiting["a.test"]) == 1  # the last waits for one of them
    assert in_data == MAX_PER_DOMAIN
    double.release.set()
    await asyncio.wait_for(run, 60)
    assert len(double.to("hang@a.test")) == MAX_PER_DOMAIN + 1
    assert queue.list() == []


async def test_missing_message_file_backs_off(tmp_path: Path) -> None:
    clock = Clock()
    queue = make_queue(tmp_path, queue_config(53, 25), clock)
    qid = queue.enqueue("alice@sender.test", ["x@a.test"], MESSAGE)
    (tmp_path / "queue" / "msg" / qid).unlink()
    await queue.run_once()
    (rcpt,) = queue.get(qid).recipients
    assert (rcpt.status, rcpt.attempts) == ("pending", 1)
    assert rcpt.last_reply == "451 4.3.0 the queued message file is missing"


async def test_an_unexpected_error_does_not_spin(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(*args: object, **kwargs: object) -> list[RcptResult]:
        calls.append(str(args[1]))
        raise RuntimeError("bug")

    clock = Clock()
    queue = OutboundQueue(queue_config(53, 25), StatePaths(tmp_path), clock=clock, deliver=broken)
    qid = queue.enqueue("alice@sender.test", ["x@a.test"], MESSAGE, sign=False)
    await queue.run_once()
    await queue.run_once()  # the failed group waits; no second call
    assert calls == ["a.test"]
    assert "attempt for a.test failed unexpectedly" in caplog.text
    assert queue.get(qid).recipients[0].status == "pending"
    clock.now += SCHEDULE_S[0]
    await queue.run_once()
    assert calls == ["a.test", "a.test"]


def test_root_keeps_the_spool_owned_by_its_owner(tmp_path: Path) -> None:
    # The code under test acts only as root (`mailstack queue` run by root on serve's spool).
    if os.geteuid() != 0:
        pytest.fail("needs root to chown: run the suite as root, as scripts/test documents")
    nobody = 65534
    (tmp_path / "queue").mkdir(mode=0o700)
    os.chown(tmp_path / "queue", nobody, nobody)
    queue = make_queue(tmp_path, queue_config(53, 25))
    qid = queue.enqueue("alice@sender.test", ["x@a.test"], MESSAGE)
    queue.flush()
    spool = tmp_path / "queue"
    made = [
        spool / "msg",
        spool / "state",
        spool / "msg" / qid,
        spool / "state" / f"{qid}.json",
        spool / "lock",
        spool / "wakeup",
    ]
    assert {(p.name, p.stat().st_uid, p.stat().st_gid) for p in made} == {
        (p.name, nobody, nobody) for p in made
    }


async def test_orphans_and_corrupt_state(tmp_path: Path) -> None:
    queue = make_queue(tmp_path, queue_config(53, 25))
    qid = queue.enqueue("alice@sender.test", ["x@a.test"], MESSAGE)
    # An enqueue that crashed before writing its state: nobody was told 250.
    orphan = tmp_path / "queue" / "msg" / "0123456789abcdef0123"
    orphan.write_bytes(MESSAGE)
    assert queue.remove_orphans() == []  # too young: may be an enqueue in progress
    old = time.time() - ORPHAN_S - 1
    os.utime(orphan, (old, old))
    assert queue.remove_orphans() == ["0123456789abcdef0123"]
    (tmp_path / "queue" / "state" / "ffffffffffffffffffff.json").write_text("{oops")
    assert [e.id for e in queue.list()] == [qid]


ADDRESS = st.from_regex(r"[a-z0-9.+-]{1,10}@[a-z0-9-]{1,10}\.[a-z]{2,4}", fullmatch=True)
RECIPIENT = st.builds(
    Recipient,
    address=ADDRESS | st.text(max_size=20),
    status=st.sampled_from(["pending", "delivered", "failed"]),
    attempts=st.integers(min_value=0, max_value=10**6),
    next_attempt=st.floats(min_value=0, max_value=1e10, allow_nan=False),
    last_reply=st.text(max_size=100),
    remote_mta=st.text(max_size=30),
    warned=st.booleans(),
)
ENTRY = st.builds(
    Entry,
    id=st.from_regex(r"[0-9a-f]{20}", fullmatch=True),
    mail_from=st.just("") | ADDRESS | st.text(max_size=30),
    created=st.floats(min_value=0, max_value=1e10, allow_nan=False),
    recipients=st.lists(RECIPIENT, min_size=1, max_size=5).map(tuple),
    size=st.integers(min_value=0, max_value=10**9),
)


@given(ENTRY)
def test_state_round_trip(entry: Entry) -> None:
    assert Entry.from_json(entry.to_json()) == entry


@given(st.text(max_size=300) | ENTRY.map(lambda e: e.to_json()[:-7]))
@settings(max_examples=200)
def test_state_parse_or_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):  # anything else is a bug
        assert isinstance(Entry.from_json(text), Entry)


class CountingQueue(OutboundQueue):
    """The real queue, counting state-file parses."""

    parses = 0

    def _read(self, qid: str) -> Entry | None:
        self.parses += 1
        return super()._read(qid)


def test_list_parses_only_changed_state_files(tmp_path: Path) -> None:
    """The runner lists the queue after every attempt: a burst of N messages must not cost
    N² parses. An unchanged file is taken from memory; a replaced one is read again, also
    when another process replaced it."""
    paths = StatePaths(tmp_path)
    queue = CountingQueue(queue_config(53, 25), paths, clock=Clock())
    ids = [queue.enqueue("a@sender.test", [f"r{i}@a.test"], MESSAGE, sign=False) for i in range(5)]
    assert sorted(e.id for e in queue.list()) == sorted(ids)
    first = queue.parses
    assert sorted(e.id for e in queue.list()) == sorted(ids)
    assert queue.parses == first  # nothing changed: nothing parsed
    queue.record(ids[2], [RcptResult("r2@a.test", "delivered", "250 ok")])
    changed = {e.id: e for e in queue.list()}
    assert ids[2] not in changed  # delivered to everyone: gone
    other = OutboundQueue(queue_config(53, 25), paths, clock=Clock())  # another process
    other.record(ids[0], [RcptResult("r0@a.test", "temporary", "451 later")])
    before = queue.parses
    entry = {e.id: e for e in queue.list()}[ids[0]]
    assert queue.parses == before + 1  # only the file the other process replaced
    assert entry.recipients[0].attempts == 1 and entry.recipients[0].last_reply == "451 later"
