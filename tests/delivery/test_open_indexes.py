"""A `serve` with thousands of accounts keeps a bounded number of folder indexes open: each
holds an SQLite connection (about 150 KB resident), and 1,000 accounts' six folders each
would cost a gigabyte (issue 11: 10,000 IDLE sessions over 1,000 accounts in < 300 MB).
A folder whose index was dropped is read again as another process would read it."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
from mailstack.delivery import maildir
from mailstack.delivery.index_db import INDEX_FILE
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths

MESSAGE = b"From: bob@example.org\r\nSubject: hello\r\n\r\nbody\r\n"
CAP = 5


def open_index_files() -> int:
    """Folder index connections this process has open: one WAL file each (SQLite may keep
    the main file's descriptor of a closed connection for reuse)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.endswith(f"/{INDEX_FILE}-wal")
    return count


@pytest.fixture
def small_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(maildir, "MAX_OPEN_INDEXES", CAP)


@pytest.mark.usefixtures("small_cap")
def test_open_indexes_are_bounded_and_dropped_ones_still_answer(tmp_path: Path) -> None:
    users = [f"user{i}@example.com" for i in range(4 * CAP)]
    setup = MaildirStore(StatePaths(tmp_path), hostname="mx.example.com")
    for user in users:
        setup.create_account(user)
    del setup  # a CLI process: its indexes are not this store's
    gc.collect()  # the store's parts refer to each other (not so a dropped folder index)
    before = open_index_files()
    store = MaildirStore(StatePaths(tmp_path), hostname="mx.example.com")
    marks = {}
    for user in users:
        store.deliver([(user, INBOX)], MESSAGE)
        snap = store.snapshot(user, INBOX)
        marks[user] = snap.highest_modseq
    assert open_index_files() - before <= CAP
    # The first accounts' indexes were dropped long ago: their folders answer as before.
    first = users[0]
    (uid,) = [m.uid for m in store.snapshot(first, INBOX).messages]
    store.store_flags(first, INBOX, [uid], [Flag.SEEN.value], FlagMode.ADD)
    store.deliver([(first, INBOX)], MESSAGE)
    snap = store.snapshot(first, INBOX)
    assert [m.uid for m in snap.messages] == [uid, uid + 1]
    assert Flag.SEEN.value in snap.messages[0].flags
    assert snap.highest_modseq > marks[first]  # MODSEQ never goes back across a reopen
    assert open_index_files() - before <= CAP
