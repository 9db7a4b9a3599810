"""The queue runner's connection reuse (delivery/queue_runner.py, delivery/remote.py
`deliver_batch`): a backlog to one destination goes over a few connections, and a reused
connection that the server ends before MAIL FROM hands its message back unattempted."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.queue_runner import MAX_PER_DOMAIN, GroupSync

from mailstack.base.paths import StatePaths
from tests.delivery.test_queue import MESSAGE, make_queue
from tests.delivery.test_remote import Double, dns_server, double, queue_config

pytestmark = pytest.mark.external
_fixtures = (dns_server, double)  # used by name


class Peers:
    """Wraps a Double's MAIL hook: which client connection (its port) sent each MAIL FROM."""

    def __init__(self, double: Double, *, close_after: int = 0) -> None:
        self.ports: list[int] = []
        self.close_after = close_after  # per connection; 0: never
        double.handle_MAIL = self.handle_MAIL  # type: ignore[attr-defined]

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        port = session.peer[1]
        if self.close_after and self.ports.count(port) >= self.close_after:
            return "421 4.3.2 closing this connection, come back"
        self.ports.append(port)
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 ok"


async def test_a_backlog_shares_connections(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    peers = Peers(double)
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    for n in range(8):
        queue.enqueue("alice@sender.test", [f"r{n}@a.test"], MESSAGE)
    await queue.run_once()
    assert queue.list() == []
    assert len(double.received) == 8
    assert len(peers.ports) == 8
    assert len(set(peers.ports)) <= MAX_PER_DOMAIN  # not one connection per message


async def test_a_connection_closed_before_mail_gives_the_message_back(
    tmp_path: Path, dns_server: tuple[str, int], double: Double
) -> None:
    # The server takes one message per connection and answers the next MAIL FROM with 421:
    # that message was never attempted, so it is neither deferred nor counted, and goes
    # out over a fresh connection in the same run.
    peers = Peers(double, close_after=1)
    queue = make_queue(tmp_path, queue_config(dns_server[1], double.port))
    for n in range(4):
        queue.enqueue("alice@sender.test", [f"r{n}@a.test"], MESSAGE)
    await queue.run_once()
    assert queue.list() == []  # none deferred by the 421
    assert sorted(r.rcpts[0] for r in double.received) == [f"r{n}@a.test" for n in range(4)]
    assert len(set(peers.ports)) == 4


def test_group_sync_shares_fsyncs(tmp_path: Path) -> None:
    sync = GroupSync(tmp_path)
    start = threading.Barrier(16)

    def one() -> None:
        start.wait()
        for _ in range(10):
            sync.sync()

    threads = [threading.Thread(target=one) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 10 <= sync.fsyncs < 160  # each call covered by one fsync; callers shared them


@pytest.mark.skipif(os.geteuid() != 0, reason="the owner check runs for root only")
def test_enqueue_survives_the_runner_delivering_first(tmp_path: Path) -> None:
    # The runner can see a state file once it is renamed into place, deliver the message
    # and remove it while enqueue still waits for its directory fsync: enqueue must still
    # report success (a 451 after a delivery would make the client send it again).
    class Racing(OutboundQueue):
        def _sync_dir(self, path: Path) -> None:
            super()._sync_dir(path)
            if path.name == "state":
                for state in path.glob("*.json"):
                    self._remove(state.stem)  # delivered and recorded meanwhile

    queue = Racing(queue_config(53, 25), StatePaths(tmp_path))
    qid = queue.enqueue("alice@sender.test", ["x@a.test"], MESSAGE, sign=False)
    assert len(qid) == 20
    assert queue.list() == []
