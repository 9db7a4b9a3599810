"""Many deliveries at once, from threads and from separate processes, into one Maildir."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from mailstack.delivery import fsyncs
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.uidmap import UidList

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

THREADS = 8
PER_THREAD = 25


def message(n: int) -> bytes:
    return f"Subject: message {n}\r\n\r\n{'x' * n}\r\n".encode()


def lf_size(n: int) -> int:
    return len(message(n).replace(b"\r\n", b"\n"))


def test_threads_get_unique_increasing_uids(store: MaildirStore, paths: StatePaths) -> None:
    stop, started = threading.Event(), threading.Event()
    snapshots: list[list[int]] = []

    def reader() -> None:
        # Concurrent SELECTs and flag changes must never see a half-delivered state. One
        # snapshot before the writers start and one after they stopped, at least.
        while True:
            done = stop.is_set()
            snap = store.snapshot(ALICE, "INBOX", claim_recent=True)
            uids = [m.uid for m in snap.messages]
            snapshots.append(uids)
            started.set()
            if done:
                return
            store.store_flags(ALICE, "INBOX", uids[-3:], [Flag.SEEN], FlagMode.ADD)

    def worker(t: int) -> list[int]:
        uids = []
        for i in range(PER_THREAD):
            n = t * PER_THREAD + i
            refs = store.deliver([(ALICE, "INBOX"), (ALICE, "Archive")][: 1 + n % 2], message(n))
            uids.append(refs[0].uid)
        return uids

    watcher = threading.Thread(target=reader)
    watcher.start()
    assert started.wait(30)
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            per_thread = list(pool.map(worker, range(THREADS)))
    finally:
        stop.set()
        watcher.join()

    total = THREADS * PER_THREAD
    for uids in per_thread:
        assert uids == sorted(uids)  # each thread's deliveries got increasing UIDs
    assert sorted(u for uids in per_thread for u in uids) == list(range(1, total + 1))
    assert len(snapshots) >= 2
    assert snapshots[0] == []
    assert snapshots[-1] == list(range(1, total + 1))
    for uids in snapshots:
        assert uids == sorted(set(uids))
    snap = store.snapshot(ALICE, "INBOX")
    assert [m.uid for m in snap.messages] == list(range(1, total + 1))
    assert snap.uid_next == total + 1
    archive = store.snapshot(ALICE, "Archive")
    assert len(archive.messages) == total // 2
    expected = sum(lf_size(n) for n in range(total)) + sum(
        lf_size(n) for n in range(total) if n % 2
    )
    assert store.usage_bytes(ALICE) == expected
    # The uidlist on disk is well formed and matches (appends never interleaved).
    uidlist = UidList.parse((paths.maildir(ALICE) / "dovecot-uidlist").read_bytes())
    assert [r.uid for r in uidlist.records] == list(range(1, total + 1))


SCRIPT = """
import sys
from pathlib import Path
import pytest

from mailstack.delivery import fsyncs
from mailstack.delivery.maildir import MaildirStore
from mailstack.base.paths import StatePaths
store = MaildirStore(StatePaths(Path(sys.argv[1])), hostname="p" + sys.argv[2])
for i in range(int(sys.argv[3])):
    (ref,) = store.deliver([("alice@example.com", "INBOX")], b"Subject: %d\\n\\nbody\\n" % i)
    print(ref.uid)
"""


def test_processes_share_the_uidlist_lock(store: MaildirStore, paths: StatePaths) -> None:
    count, procs = 20, 3
    root = Path(__file__).resolve().parents[2]
    running = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", SCRIPT, str(paths.root), str(p), str(count)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        for p in range(procs)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in running]
    assert all(proc.returncode == 0 for proc in running)
    uids = [[int(line) for line in out.split()] for out in outputs]
    for mine in uids:
        assert mine == sorted(mine)
    assert sorted(u for mine in uids for u in mine) == list(range(1, count * procs + 1))
    snap = store.snapshot(ALICE, "INBOX")
    assert [m.uid for m in snap.messages] == list(range(1, count * procs + 1))
    assert (
        store.usage_bytes(ALICE)
        == sum(len(b"Subject: %d\n\nbody\n" % i) for i in range(count)) * procs
    )


def _deliver_in_child(root: str, conn: Connection) -> None:
    store = MaildirStore(StatePaths(Path(root)), hostname="mx.example.com")
    (ref,) = store.deliver([(ALICE, "INBOX")], message(2))
    conn.send(ref.uid)


def test_a_process_forked_after_delivering_can_deliver(
    store: MaildirStore, paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The parent's deliveries started fsync threads (every disk counts as slow here); a forked
    # child has none of them and must not hand its fsyncs to them (it waited forever).
    monkeypatch.setattr(fsyncs, "SLOW_S", 0.0)
    for n in (1, 2):
        store.deliver([(ALICE, "INBOX")], message(n))
    assert fsyncs._pool is not None  # the parent's pool exists: the child inherits it
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_deliver_in_child, args=(str(paths.root), sender), daemon=True
    )
    child.start()
    sender.close()
    try:
        assert receiver.poll(30), "a forked process's delivery did not finish in 30 s"
        assert receiver.recv() == 3
    finally:
        child.kill()
        child.join()
