"""IDLE hears about changes other programs make to the Maildir (delivery/watch.py, inotify):
a `cp` into new/, a flag rename in cur/, Dovecot storing flags and appending.

The servers here poll only every 60 s, and each wait below gives up after 5 s: a change that
arrives was carried by inotify, not found by a rescan. (How fast it arrives is measured in
bench/idle_bench.py, not here.)
"""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery.events import EventHub
from mailstack.delivery.store import INBOX
from mailstack.delivery.watch import MaildirWatcher

from tests.imap.rawclient import RawClient
from tests.imap.servers import connect
from tests.support.dovecot import dovecot_server  # noqa: F401
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MESSAGE = b"From: a@example.com\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
POLL_S = 60.0  # longer than any wait here
WAIT_S = 5.0


@pytest.fixture
def deployment(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def server(deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server_polling(deployment, POLL_S) as started:
        yield started


def running_server_polling(dep: ImapDeployment, rescan_s: float):
    import contextlib

    @contextlib.contextmanager
    def run() -> Iterator[ImapServerThread]:
        started = ImapServerThread(dep, rescan_s=rescan_s).start()
        try:
            yield started
        finally:
            started.stop()

    return run()


def idling(server: ImapServerThread, folder: str = "INBOX") -> RawClient:
    client = connect(server.imap_port, timeout_s=WAIT_S)  # closed after the test
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert client.tagged(f"SELECT {folder}").startswith(b"OK")
    client.send(b"i1 IDLE\r\n")
    assert client.line() == b"+ idling\r\n"
    return client


def wait_for(client: RawClient, pattern: bytes) -> bytes:
    """The first line matching `pattern`; TimeoutError after WAIT_S without one."""
    while True:
        line = client.line()
        if re.search(pattern, line):
            return line


def cp(deployment: ImapDeployment, name: str, folder: str = "") -> None:
    """What `cp` does: create the file in new/ and write it there (no tmp/ and rename)."""
    target = deployment.paths.maildir(USER) / folder / "new" / name
    with open(target, "wb") as f:
        f.write(MESSAGE)


def settled(client: RawClient, deployment: ImapDeployment, exists: int) -> None:
    """Make a change and see it reported: from then on the session is waiting, past the
    scan IDLE starts with, which would otherwise find a change made right after "+ idling"."""
    cp(deployment, f"1700000000.settle{exists}.elsewhere")
    wait_for(client, rb"^\* %d EXISTS" % exists)


def done(client: RawClient) -> None:
    client.send(b"DONE\r\n")
    assert client.until_tagged(b"i1")[-1].startswith(b"i1 OK")
    client.close()


def test_cp_into_new_wakes_idle(server: ImapServerThread, deployment: ImapDeployment) -> None:
    client = idling(server)
    settled(client, deployment, 1)
    cp(deployment, "1700000000.cp2.elsewhere")
    wait_for(client, rb"^\* 2 EXISTS")
    done(client)


def test_flag_rename_in_cur_reaches_idle_as_fetch(
    server: ImapServerThread, deployment: ImapDeployment
) -> None:
    deployment.store.append(USER, INBOX, MESSAGE)
    root = deployment.paths.maildir(USER)
    client = idling(server)
    settled(client, deployment, 2)
    [path] = [p for p in (*root.glob("new/*"), *root.glob("cur/*")) if "settle" not in p.name]
    base = path.name.split(":2,")[0]
    path.rename(root / "cur" / f"{base}:2,FS")  # as mutt or Dovecot flag a message
    line = wait_for(client, rb"^\* 1 FETCH")
    assert b"\\Flagged" in line and b"\\Seen" in line
    done(client)


def test_sessions_of_one_folder_share_one_watch(
    server: ImapServerThread, deployment: ImapDeployment
) -> None:
    clients = [idling(server) for _ in range(3)]
    other = idling(server, "Junk")
    assert server.service is not None
    watcher = server.service.watcher
    cp(deployment, "x.elsewhere", ".Junk")
    wait_for(other, rb"^\* 1 EXISTS")  # only now surely waiting: the next wake is inotify's
    for n, client in enumerate(clients, start=1):
        settled(client, deployment, n)
        for earlier in clients[: n - 1]:
            wait_for(earlier, rb"^\* %d EXISTS" % n)
    # Every session is waiting now (each saw a change while IDLE): two folders, two watches
    # each, however many sessions.
    assert watcher.watched_folders == 2
    (deployment.paths.maildir(USER) / "tmp" / "x.elsewhere").write_bytes(MESSAGE)
    (deployment.paths.maildir(USER) / "tmp" / "x.elsewhere").rename(
        deployment.paths.maildir(USER) / "new" / "x.elsewhere"
    )
    for client in clients:
        wait_for(client, rb"^\* 4 EXISTS")
        done(client)
    done(other)
    deadline = time.monotonic() + WAIT_S
    while watcher.watched_folders and time.monotonic() < deadline:
        time.sleep(0.01)  # the server drops the watches once the sessions have gone
    assert watcher.watched_folders == 0


def server_tasks(server: ImapServerThread) -> int:
    """asyncio tasks alive on the server's loop (counted on that loop)."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    assert server._loop is not None
    return asyncio.run_coroutine_threadsafe(count(), server._loop).result(WAIT_S)


def test_idle_costs_one_task_per_session_and_one_subscription_per_folder(
    server: ImapServerThread, deployment: ImapDeployment
) -> None:
    """Issue 11's 10,000 IDLE sessions: per session only the connection's task (its reader
    wakes the session's waiter: no read task); the folder's store events, inotify watch and
    shutdown are waited for once, for all the folder's sessions (imap/idle.py)."""
    assert server.service is not None
    before = server_tasks(server)
    sessions = 6
    clients = [idling(server) for _ in range(sessions - 1)] + [idling(server, "Junk")]
    cp(deployment, "x.elsewhere")
    cp(deployment, "y.elsewhere", ".Junk")
    for client in clients:  # each woke once: all are in their waiting loop now
        wait_for(client, rb"^\* 1 EXISTS")
    assert server.service.idlers.folders == 2
    assert server.service.watcher.watched_folders == 2
    # the connection per session; a relay per folder; one for shutdown; the counter.
    assert server_tasks(server) - before <= sessions + 2 + 1 + 1
    deployment.store.append(USER, INBOX, MESSAGE)  # our own write: the store's event
    for client in clients[:-1]:
        wait_for(client, rb"^\* 2 EXISTS")
    for client in clients:
        done(client)
    deadline = time.monotonic() + WAIT_S
    while server.service.idlers.folders and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.service.idlers.folders == 0


def test_without_inotify_idle_still_polls(
    deployment: ImapDeployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mailstack.delivery.watch.inotify_simple", None)
    with running_server_polling(deployment, 0.2) as server:
        assert server.service is not None
        server.service.watcher._is_unavailable = True  # as on a system without inotify
        client = idling(server)
        new = deployment.paths.maildir(USER) / "new"
        (new.parent / "tmp" / "y.elsewhere").write_bytes(MESSAGE)
        (new.parent / "tmp" / "y.elsewhere").rename(new / "y.elsewhere")
        wait_for(client, rb"^\* 1 EXISTS")
        done(client)
        assert server.service.watcher.watched_folders == 0


async def test_watcher_publishes_and_survives_a_deleted_folder(tmp_path: Path) -> None:
    hub = EventHub()
    root = tmp_path / "mail" / "alice"
    for sub in ("cur", "new", "tmp", ".Old/cur", ".Old/new", ".Old/tmp"):
        (root / sub).mkdir(parents=True)
    watcher = MaildirWatcher(hub, lambda user: root)
    try:
        with hub.watch("alice", "Old") as event, watcher.watch("alice", "Old") as is_watched:
            assert is_watched
            (root / ".Old" / "new" / "m1").write_bytes(b"x")
            await asyncio.wait_for(event.wait(), WAIT_S)
            event.clear()
            shutil.rmtree(root / ".Old")  # deleted under the session: it must hear of it
            await asyncio.wait_for(event.wait(), WAIT_S)
            assert watcher.watched_folders == 0
        with watcher.watch("alice", "Gone") as is_watched:  # no such folder: poll it
            assert not is_watched
        assert watcher.watched_folders == 0
    finally:
        watcher.close()


@pytest.mark.external
def test_dovecot_changes_reach_our_idle(dovecot_server, tmp_path: Path) -> None:  # noqa: F811
    # Our state directory lives where Dovecot's mail user can reach it (tests/support/dovecot.py).
    dep = make_deployment(dovecot_server.workdir / "state")
    dep.store.append(USER, INBOX, MESSAGE)
    dovecot = dovecot_server({USER: ("pw", dep.paths.maildir(USER))})
    with running_server_polling(dep, POLL_S) as server:
        client = idling(server)
        settled(client, dep, 2)
        dovecot.grant()
        with dovecot.imap(USER) as theirs:
            theirs.select("INBOX")
            assert theirs.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
            assert b"\\Flagged" in wait_for(client, rb"^\* 1 FETCH")
            assert theirs.append("INBOX", "", None, MESSAGE)[0] == "OK"
            wait_for(client, rb"^\* 3 EXISTS")
        done(client)


def test_serve_lifts_its_open_files_limit() -> None:
    # Thousands of IDLE sessions need thousands of sockets: serve raises its soft limit.
    import resource

    from mailstack.app import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        assert raise_open_files_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
