"""A process opening an indexed folder takes each file's INTERNALDATE and sizes from the
index file (delivery/index_db.py `file_meta`) instead of a stat() or read per file; without
the index file it measures the files again.

Observable through what the index promises: INTERNALDATE is the mtime when the message was
first seen (as Dovecot keeps it in its index), so a later `touch` of the file changes nothing
until the index is rebuilt; a file without S=/W= in its name is not read again for its size.
"""

from __future__ import annotations

import os
from pathlib import Path

from mailstack.delivery.index_db import INDEX_FILE
from mailstack.delivery.index_files import UIDLIST
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX

from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE


def test_restart_takes_dates_and_sizes_from_the_index(
    paths: StatePaths, store: MaildirStore
) -> None:
    root = paths.maildir(ALICE)
    # One file as another program writes it: no S=/W= sizes in the name.
    (root / "new" / "1700000000.M1P1.other").write_bytes(b"Subject: x\n\nbody\n")
    os.utime(root / "new" / "1700000000.M1P1.other", (1_700_000_000, 1_700_000_000))
    store.snapshot(ALICE, INBOX)  # listed: the other program's file is UID 1
    store.deliver([(ALICE, INBOX)], b"Subject: y\n\nbody two\n")
    first = store.snapshot(ALICE, INBOX).messages
    # The other program's file grows; without S=/W= only a read would tell.
    with open(root / "new" / "1700000000.M1P1.other", "ab") as f:
        f.write(b"more\n")
    for sub in ("new", "cur"):
        for name in os.listdir(root / sub):
            os.utime(root / sub / name, (1_600_000_000, 1_600_000_000))

    assert len(first) == 2
    again = MaildirStore(paths, hostname="mx.example.com").snapshot(ALICE, INBOX).messages
    assert [(m.uid, m.internal_date, m.size) for m in again] == [
        (m.uid, m.internal_date, m.size) for m in first
    ]

    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / INDEX_FILE}{suffix}").unlink(missing_ok=True)
    rebuilt = MaildirStore(paths, hostname="mx.example.com").snapshot(ALICE, INBOX).messages
    assert [m.internal_date for m in rebuilt] == [1_600_000_000.0] * 2
    assert rebuilt[0].size == first[0].size + len(b"more\r\n")


def test_a_replaced_uidlist_keeps_the_dates_first_seen(
    paths: StatePaths, store: MaildirStore
) -> None:
    """Another writer renumbers the folder (a new uidlist, new UIDVALIDITY): the open index
    keeps each file's INTERNALDATE from when it first saw it (its entry held it), as a restart
    would from the index file, instead of taking a later mtime."""
    root = paths.maildir(ALICE)
    for i in range(3):
        store.deliver([(ALICE, INBOX)], f"Subject: {i}\n\nbody\n".encode())
    first = {m.key: m.internal_date for m in store.snapshot(ALICE, INBOX).messages}
    names = sorted(os.listdir(root / "cur") + os.listdir(root / "new"))
    for sub in ("new", "cur"):
        for name in os.listdir(root / sub):
            os.utime(root / sub / name, (1_600_000_000, 1_600_000_000))
    lines = "".join(f"{uid} :{name}\n" for uid, name in enumerate(reversed(names), start=1))
    (root / "uidlist.new").write_text(f"3 V77 N4 G{'0' * 32}\n{lines}")
    os.rename(root / "uidlist.new", root / UIDLIST)

    again = store.snapshot(ALICE, INBOX)
    assert again.uid_validity == 77
    assert {m.key: m.internal_date for m in again.messages} == first
    assert 1_600_000_000.0 not in first.values()
