"""What a command costs the event loop besides its own work: trips to a worker thread and
new tasks. With ten busy clients on one folder each trip puts the command behind every other
session's ready work once more, so a command's latency grows with its trips (docs/
benchmarks.md, "IMAP stress"). Counted here on a real server over loopback; the answers are
checked too, so a command that skipped its work to save a trip fails.
"""

from __future__ import annotations

import asyncio
import collections
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mailstack.delivery.store import INBOX
from mailstack.imap.protocol import Event, SendContinuation
from mailstack.imap.server import IMAP_THREADS
from mailstack.imap.session import Session, Write

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.support.imapserver import USER, ImapDeployment, ImapServerThread, make_deployment

MESSAGE = b"From: a@example.com\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Thread trips ("trip") and tasks ("task") the event loops make from now on."""
    found: collections.Counter[str] = collections.Counter()
    loop_class = asyncio.base_events.BaseEventLoop
    run_in_executor, create_task = loop_class.run_in_executor, loop_class.create_task

    def counted(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            found[name] += 1
            return method(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(loop_class, "run_in_executor", counted("trip", run_in_executor))
    monkeypatch.setattr(loop_class, "create_task", counted("task", create_task))
    return found


def deliver(dep: ImapDeployment, n: int) -> None:
    for _ in range(n):
        dep.store.deliver([(USER, INBOX)], MESSAGE)


def selected(server: ImapServerThread) -> RawClient:
    client = logged_in(server.imap_port)
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    return client


def during(counts: collections.Counter[str], action: Callable[[], object]) -> dict[str, int]:
    counts.clear()
    action()
    return {"trip": counts["trip"], "task": counts["task"]}


def test_commands_on_an_unchanged_folder_make_no_thread_trip(
    dep: ImapDeployment, server: ImapServerThread, counts: collections.Counter[str]
) -> None:
    deliver(dep, 3)
    client = selected(server)
    # Our own flag change: the index re-lists cur/ once its mtime has settled (2 s); until
    # then "nothing changed" must still be answered without a trip.
    assert client.tagged("STORE 1 +FLAGS (\\Flagged)").startswith(b"OK")
    assert during(counts, lambda: [client.tagged("NOOP") for _ in range(5)]) == {
        "trip": 0,
        "task": 0,
    }
    # Another session's change is read from the index this process keeps current: still
    # no trip, and reported. Another program's change needs a look at the disk.
    other = selected(server)
    assert other.tagged("STORE 2 +FLAGS (\\Seen)").startswith(b"OK")
    lines: list[bytes] = []
    assert during(counts, lambda: lines.extend(client.command("NOOP")))["trip"] == 0
    assert lines[0].startswith(b"* 2 FETCH (") and b"\\Seen" in lines[0]
    root = dep.paths.maildir(USER)
    (root / "tmp" / "1.foreign.host").write_bytes(MESSAGE)
    os.rename(root / "tmp" / "1.foreign.host", root / "new" / "1.foreign.host")
    assert b"* 4 EXISTS\r\n" in client.command("NOOP")


def test_expunge_and_append_report_their_change_in_one_trip(
    dep: ImapDeployment, server: ImapServerThread, counts: collections.Counter[str]
) -> None:
    deliver(dep, 3)
    client = selected(server)
    assert client.tagged("STORE 2 +FLAGS (\\Deleted)").startswith(b"OK")
    lines: list[bytes] = []
    assert during(counts, lambda: lines.extend(client.command("EXPUNGE")))["trip"] == 1
    assert lines[0] == b"* 2 EXPUNGE\r\n" and lines[-1].split()[1] == b"OK"

    def append() -> None:
        client.send(b"a1 APPEND INBOX {%d}\r\n" % len(MESSAGE))
        assert client.line().startswith(b"+ ")
        client.send(MESSAGE + b"\r\n")
        lines[:] = client.until_tagged(b"a1")

    assert during(counts, append)["trip"] == 1
    assert lines[0] == b"* 3 EXISTS\r\n" and b"APPENDUID" in lines[-1]
    assert len(dep.store.snapshot(USER, INBOX).messages) == 3


def test_a_session_that_waits_for_its_client_holds_no_task(
    dep: ImapDeployment, server: ImapServerThread, counts: collections.Counter[str]
) -> None:
    # Reading the next command used to start three tasks (the read, shutdown, NOTIFY) and
    # asyncio.wait: about a tenth of the server's CPU with ten busy clients.
    client = selected(server)
    assert during(counts, lambda: [client.tagged("NOOP") for _ in range(10)])["task"] == 0


def test_a_literal_is_invited_from_the_read_callback(
    dep: ImapDeployment, server: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An APPEND's "+" went out when the session's task next ran: with busy sessions a whole
    # round of their work, in every APPEND. It is written where the bytes arrive; the
    # session never sees the request (and an earlier pipelined command still comes first).
    handled: list[object] = []
    handle = Session.handle

    async def recording(self: Session, event: Event, write: Write) -> None:
        handled.append(event)
        await handle(self, event, write)

    monkeypatch.setattr(Session, "handle", recording)
    client = selected(server)
    client.send(b"a1 NOOP\r\na2 APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert client.line() == b"a1 OK NOOP completed\r\n"  # the session answers both
    assert client.line().startswith(b"+ ")
    client.send(MESSAGE + b"\r\n")
    assert b"APPENDUID" in client.until_tagged(b"a2")[-1]
    handled.clear()
    client.send(b"a3 APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert client.line().startswith(b"+ ")
    client.send(MESSAGE + b"\r\n")
    assert b"APPENDUID" in client.until_tagged(b"a3")[-1]
    assert not [e for e in handled if isinstance(e, SendContinuation)], handled
    assert len(dep.store.snapshot(USER, INBOX).messages) == 2


def test_short_store_calls_run_on_the_services_few_threads(
    dep: ImapDeployment, server: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A handful of threads for the short calls (more only take turns at the GIL); a long
    # SEARCH runs in the default pool, so it cannot hold them.
    names: dict[str, str] = {}
    store = type(dep.store)
    for method in ("change_flags", "read_headers"):
        original = getattr(store, method)

        def recording(self: object, *args: object, _m: str = method, _o: Any = original,
                      **kwargs: object) -> object:  # fmt: skip
            names[_m] = threading.current_thread().name
            return _o(self, *args, **kwargs)

        monkeypatch.setattr(store, method, recording)
    deliver(dep, 2)
    client = selected(server)
    assert client.tagged("STORE 1 +FLAGS (\\Seen)").startswith(b"OK")
    assert client.tagged('SEARCH HEADER X-Nothing "x"').startswith(b"OK")
    assert names["change_flags"].startswith("imap"), names
    assert not names["read_headers"].startswith("imap"), names
    assert server.service is not None
    assert server.service.executor._max_workers == IMAP_THREADS <= max(2, os.cpu_count() or 2)
