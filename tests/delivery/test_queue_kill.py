"""Crash safety under random SIGKILLs: the process running the queue dies at random points
of its deliveries to a loopback sink, again and again, then a fresh runner finishes.

For every seed the test proves (RFC 5321 §6.1, the queue's docstring):
- nothing is lost: every recipient the sink accepts reaches it at least once, every
  recipient it refuses gets a DSN, and the queue ends empty;
- at-least-once, not more: a recipient is sent again only after a kill that came before its
  result was recorded, so it reaches the sink at most once per round that began with it
  pending, and never again once the state file says delivered (or the message is gone);
- no debris: what a kill leaves half-written is cleaned up.

The sink is an aiosmtpd server in the test's loop that stores each message before it says 250
and waits a random few milliseconds around it, so the kills land in every phase: connecting,
mid-transaction, between the remote's 250 and our record, while a state file or DSN is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.queue_spool import ORPHAN_S

from mailstack.base.config import config_to_dict
from tests.delivery.test_queue import make_queue
from tests.delivery.test_remote import dns_server, queue_config

pytestmark = pytest.mark.external
_fixtures = (dns_server,)  # used by name

CHILD = """
import asyncio, json, sys
from pathlib import Path
from mailstack.delivery.queue import OutboundQueue
from mailstack.base.config import config_from_dict
from mailstack.base.paths import StatePaths
config = config_from_dict(json.loads(sys.argv[2]))
asyncio.run(OutboundQueue(config, StatePaths(Path(sys.argv[1]))).run(asyncio.Event()))
"""

MESSAGES = 10
RECIPIENTS = ("ok1@a.test", "ok2@a.test", "perm@a.test", "ok3@b.test")


class Sink:
    """A foreign MX: `perm*` refused at RCPT, everyone else stored, then answered 250."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.delivered: Counter[tuple[str, str]] = Counter()  # (Message-ID, rcpt)
        self.dsns: list[email.message.EmailMessage] = []
        self.events = 0
        self.changed = asyncio.Condition()

    async def _tick(self) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.015))
        async with self.changed:
            self.events += 1
            self.changed.notify_all()

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await self._tick()
        envelope.mail_from = address
        return "250 2.1.0 ok"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        await self._tick()
        if address.startswith("perm"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's
        await self._tick()
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        if msg.get_content_type() == "multipart/report":
            self.dsns.append(msg)  # type: ignore[arg-type]
        else:
            for rcpt in envelope.rcpt_tos:
                self.delivered[(str(msg["Message-ID"]), rcpt)] += 1
        await self._tick()  # stored; the 250 comes a little later, as on a busy remote
        return "250 2.0.0 queued"

    async def wait_events(self, count: int, timeout: float) -> None:
        async with self.changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait_for(lambda: self.events >= count), timeout)


@pytest.fixture
async def sink_server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink(random.Random(request.node.callspec.params["seed"]))
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(sink, hostname="mx.sink.test"), "127.0.0.1", 0
    )
    try:
        yield sink, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


def recorded(queue: OutboundQueue, msgid_of: dict[str, str]) -> set[tuple[str, str]]:
    """(Message-ID, rcpt) pairs the queue has recorded as done: delivered in a state file, or
    any recipient of a message whose state is gone (all done)."""
    states = {e.id: e for e in queue.list()}
    done: set[tuple[str, str]] = set()
    for qid, msgid in msgid_of.items():
        entry = states.get(qid)
        for rcpt in RECIPIENTS:
            if entry is None or any(
                r.address == rcpt and r.status != "pending" for r in entry.recipients
            ):
                done.add((msgid, rcpt))
    return done


def debris(queue: OutboundQueue) -> list[Path]:
    return [p for sub in ("msg", "state") for p in (queue.root / sub).glob(".*.tmp")]


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
async def test_random_sigkills_lose_nothing_and_repeat_only_unrecorded(
    tmp_path: Path, dns_server: tuple[str, int], sink_server: tuple[Sink, int], seed: int
) -> None:
    rng = random.Random(seed)
    sink, port = sink_server
    config = queue_config(dns_server[1], port)
    queue = make_queue(tmp_path, config)
    msgid_of: dict[str, str] = {}
    for i in range(MESSAGES):
        msgid = f"<m{i}.{seed}@sender.test>"
        body = (
            f"From: alice@sender.test\r\nTo: ok1@a.test\r\nSubject: {i}\r\n"
            f"Message-ID: {msgid}\r\n\r\nmessage {i}\r\n"
        ).encode()
        msgid_of[queue.enqueue("alice@sender.test", RECIPIENTS, body)] = msgid
    wanted = {(m, r) for m in msgid_of.values() for r in RECIPIENTS if not r.startswith("perm")}

    rounds_pending: Counter[tuple[str, str]] = Counter()
    frozen: dict[tuple[str, str], int] = {}  # recorded pairs and their count when recorded
    for _round in range(8):
        done = recorded(queue, msgid_of)
        if done >= wanted | {(m, "perm@a.test") for m in msgid_of.values()}:
            break
        for pair in wanted - done:
            rounds_pending[pair] += 1
        child = subprocess.Popen(
            [sys.executable, "-P", "-c", CHILD, str(tmp_path), json.dumps(config_to_dict(config))],
            cwd=tmp_path,
        )
        try:
            # Kill after a random number of the sink's steps (up to a whole run's worth), a
            # random few milliseconds off the step itself.
            await sink.wait_events(sink.events + rng.randint(1, 40), timeout=5)
            await asyncio.sleep(rng.uniform(0, 0.01))
        finally:
            os.kill(child.pid, signal.SIGKILL)
            await asyncio.to_thread(child.wait, 30)
        for pair in recorded(queue, msgid_of) & wanted:
            count = frozen.setdefault(pair, sink.delivered[pair])
            assert sink.delivered[pair] == count, f"{pair} sent again after it was recorded"

    for _ in range(5):  # a fresh runner that is left alone finishes the job
        if not queue.list():
            break
        await queue.run_once()
    assert queue.list() == []

    for pair in wanted:
        assert 1 <= sink.delivered[pair] <= max(rounds_pending[pair], 1), pair
        if pair in frozen:
            assert sink.delivered[pair] == frozen[pair], f"{pair} sent again after recorded"
    assert set(sink.delivered) == wanted
    bounced = Counter(
        str(part["Final-Recipient"])
        for dsn in sink.dsns
        for part in dsn.walk()
        if part["Final-Recipient"]
    )
    assert set(bounced) == {"rfc822; perm@a.test"}
    assert bounced["rfc822; perm@a.test"] >= MESSAGES  # one DSN each at least, never lost

    # What kills left behind: half-written files, and message files whose state went first
    # (a kill inside `_remove`, or an enqueue of a DSN cut before its state): cleaned once
    # stale. Age them as an hour would.
    old = time.time() - ORPHAN_S - 1
    for path in [*debris(queue), *(queue.root / "msg").iterdir()]:
        os.utime(path, (old, old))
    queue.remove_orphans()
    assert debris(queue) == []
    assert sorted(p.name for p in (queue.root / "msg").iterdir()) == []
