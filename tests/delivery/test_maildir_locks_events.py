"""Dovecot-style dotlocks (stale and crashed owners) and change events after durable writes."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mailstack.delivery.dotlock import DotLock, LockTimeoutError
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

MESSAGE = b"Subject: hi\r\n\r\nbody\r\n"


def test_replace_writes_content_and_releases(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    with DotLock(target) as lock:
        assert lock.lock_path.read_text() == f"{os.getpid()}:{socket.gethostname()}"
        lock.replace(b"3 V1 N1 Gx\n")
    assert target.read_bytes() == b"3 V1 N1 Gx\n"
    assert not lock.lock_path.exists()
    with DotLock(target):  # free again
        pass


def test_live_foreign_lock_is_respected(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    lock_path = tmp_path / "dovecot-uidlist.lock"
    lock_path.write_bytes(b"3 V1 N1 G...\n")  # Dovecot writing a new uidlist into its lock
    with pytest.raises(LockTimeoutError):
        DotLock(target, timeout_s=0.2).acquire()
    assert lock_path.exists()


def test_stale_lock_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    lock_path = tmp_path / "dovecot-uidlist.lock"
    lock_path.write_bytes(b"")
    old = time.time() - 600
    os.utime(lock_path, (old, old))
    with DotLock(target, timeout_s=5):
        assert lock_path.read_text().startswith(f"{os.getpid()}:")


def test_lock_of_crashed_mailstack_process_is_taken_over(tmp_path: Path) -> None:
    target = tmp_path / "dovecot-uidlist"
    code = (
        "import os, sys; from pathlib import Path; from mailstack.delivery.dotlock import DotLock;"
        "DotLock(Path(sys.argv[1])).acquire(); os._exit(0)"  # dies holding the lock
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-P", "-c", code, str(target)], check=True, cwd=root)
    pid, _, host = (tmp_path / "dovecot-uidlist.lock").read_text().partition(":")
    assert int(pid) != os.getpid()
    assert host == socket.gethostname()
    with DotLock(target, timeout_s=5):  # fresh mtime, but its owner is gone
        pass


async def test_events_published_after_changes(paths: StatePaths) -> None:
    hub = EventHub()
    hub.bind(asyncio.get_running_loop())
    store = MaildirStore(paths, hub, hostname="mx")
    await asyncio.to_thread(store.create_account, ALICE)
    with hub.watch(ALICE, "INBOX") as inbox, hub.watch(ALICE, "Archive") as archive:
        await asyncio.to_thread(store.deliver, [(ALICE, "INBOX")], MESSAGE)
        await asyncio.wait_for(inbox.wait(), 10)
        assert not archive.is_set()
        inbox.clear()
        await asyncio.to_thread(store.store_flags, ALICE, "INBOX", [1], [Flag.SEEN], FlagMode.ADD)
        await asyncio.wait_for(inbox.wait(), 10)
        inbox.clear()
        await asyncio.to_thread(store.move, ALICE, "INBOX", [1], "Archive")
        await asyncio.wait_for(inbox.wait(), 10)
        await asyncio.wait_for(archive.wait(), 10)


_HOLD_FOLDER_LOCK = """
import sys, time
from pathlib import Path
from mailstack.delivery.maildir import MaildirStore
from mailstack.base.paths import StatePaths
store = MaildirStore(StatePaths(Path(sys.argv[1])))
root = store._paths.maildir(sys.argv[2])
with store._index(root, root).locked():
    print("locked", flush=True)
    sys.stdin.readline()  # hold it until told
"""


def _flock_waiters(directory: Path) -> int:
    """Requests blocked on a flock of `directory` (/proc/locks marks them with "->")."""
    inode = f":{os.stat(directory).st_ino} "
    return sum(
        1
        for line in Path("/proc/locks").read_text().splitlines()
        if "->" in line and " FLOCK " in line and inode in line
    )


def test_mailstack_processes_wait_for_a_folder_lock_in_the_kernel(
    store: MaildirStore, paths: StatePaths
) -> None:
    # Two mailstack processes (an SMTP worker and the main process, say) want one folder: the
    # second waits on a flock, woken when the first is done, instead of polling the dotlock.
    cwd = Path(__file__).resolve().parents[2]

    def holder() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-P", "-c", _HOLD_FOLDER_LOCK, str(paths.root), ALICE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )

    holders = [holder()]
    first = holders[0]
    try:
        assert first.stdout is not None and first.stdout.readline() == "locked\n"
        second = holder()  # only now: the first one holds the lock
        holders.append(second)
        queue = paths.maildir(ALICE) / "tmp"
        deadline = time.monotonic() + 30
        while _flock_waiters(queue) == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _flock_waiters(queue) == 1  # the second one is queued in the kernel
        assert second.poll() is None
        first.communicate("\n", timeout=30)
        assert second.stdout is not None and second.stdout.readline() == "locked\n"
        second.communicate("\n", timeout=30)
    finally:
        for proc in holders:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()  # reaps it and closes its pipes
    assert first.returncode == 0 and second.returncode == 0
    assert not (paths.maildir(ALICE) / "dovecot-uidlist.lock").exists()
