"""Crash safety: SIGKILL a process in the middle of the queue runner; nothing is lost, and
nothing is sent more often than at-least-once needs (RFC 5321 §6.1).

The runner runs in a child process (`python -c`, the queue over the test's spool). One
recipient is delivered and recorded; the other's remote holds the final "." unanswered, so
the child is killed after the remote has the message but before it could record the result.
A fresh runner then sends that one again (the one unavoidable duplicate) and never the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailstack.base.config import config_to_dict
from tests.delivery.test_queue import MESSAGE, make_queue
from tests.delivery.test_remote import Double, dns_server, double, queue_config

pytestmark = pytest.mark.external
_fixtures = (dns_server, double)  # used by name

CHILD = """
import asyncio, json, sys
from pathlib import Path
from mailstack.delivery.queue import OutboundQueue
from mailstack.base.config import config_from_dict
from mailstack.base.paths import StatePaths
config = config_from_dict(json.loads(sys.argv[2]))
asyncio.run(OutboundQueue(config, StatePaths(Path(sys.argv[1]))).run_once())
"""


async def test_sigkill_mid_run_loses_nothing(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    config = queue_config(dns_server[1], double.port)
    queue = make_queue(tmp_path, config)
    qid = queue.enqueue("alice@sender.test", ["ok@a.test", "hang@b.test"], MESSAGE)
    stored = queue.message(qid)
    child = subprocess.Popen(
        [sys.executable, "-P", "-c", CHILD, str(tmp_path), json.dumps(config_to_dict(config))],
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        await double.wait_for("ok@a.test")
        await asyncio.wait_for(double.data_started.wait(), 60)  # hang@ is mid-DATA
        deadline = time.monotonic() + 60  # the child records ok@'s 250 right after it
        while queue.get(qid).recipients[0].status != "delivered":
            assert time.monotonic() < deadline, "the child never recorded ok@a.test"
            assert child.poll() is None
            await asyncio.sleep(0.02)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        await asyncio.to_thread(child.wait, 30)
    assert child.returncode == -signal.SIGKILL

    ok, hang = queue.get(qid).recipients
    assert (ok.status, ok.attempts) == ("delivered", 1)
    assert (hang.status, hang.attempts) == ("pending", 0)  # the kill came before its result
    assert queue.message(qid) == stored

    assert len(double.to("hang@b.test")) == 1  # the remote has it, we never heard its 250
    double.release.set()
    await queue.run_once()  # a fresh runner after the "crash"
    assert queue.list() == []
    assert len(double.to("hang@b.test")) == 2  # once unacknowledged, once for real
    assert len(double.to("ok@a.test")) == 1  # recorded delivered: never sent again
    assert {r.content for r in double.received} == {stored}
