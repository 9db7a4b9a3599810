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

from delivery.dotlock import DotLock, LockTimeoutError
from delivery.events import EventHub
from delivery.maildir import MaildirStore
from delivery.store import Flag, FlagMode
from mailstack.paths import StatePaths
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
        "import os, sys; from pathlib import Path; from delivery.dotlock import DotLock;"
        "DotLock(Path(sys.argv[1])).acquire(); os._exit(0)"  # dies holding the lock
    )
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code, str(target)], check=True, cwd=root)
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
