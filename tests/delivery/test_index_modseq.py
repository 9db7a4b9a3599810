"""The persistent folder index (delivery/index_db.py): MODSEQs per message, HIGHESTMODSEQ and
the expunge log, on real Maildirs, across store instances (processes), foreign writers and a
deleted or corrupt index file."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

from mailstack.delivery.index_db import INDEX_FILE, IndexDb
from mailstack.delivery.index_entry import Entry, with_modseq
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX, MessageInfo

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

MESSAGE = b"From: bob@example.org\r\nSubject: hello\r\n\r\nbody\r\n"


def modseqs(store: MaildirStore) -> dict[int, int]:
    return {m.uid: m.modseq for m in store.snapshot(ALICE, INBOX).messages}


def highest(store: MaildirStore) -> int:
    return store.snapshot(ALICE, INBOX).highest_modseq


def deliver(store: MaildirStore, n: int = 1) -> list[int]:
    return [store.deliver([(ALICE, INBOX)], MESSAGE)[0].uid for _ in range(n)]


def test_every_change_raises_modseq_and_only_the_changed_message(store: MaildirStore) -> None:
    uids = deliver(store, 3)
    before, top = modseqs(store), highest(store)
    assert all(m > 0 for m in before.values())
    assert top == max(before.values())
    store.store_flags(ALICE, INBOX, [uids[1]], [Flag.SEEN.value], FlagMode.ADD)
    after = modseqs(store)
    assert after[uids[1]] == highest(store) > top
    assert {u: after[u] for u in (uids[0], uids[2])} == {u: before[u] for u in (uids[0], uids[2])}
    # A STORE that changes nothing changes no MODSEQ (as Dovecot).
    same = highest(store)
    store.store_flags(ALICE, INBOX, [uids[1]], [Flag.SEEN.value], FlagMode.ADD)
    assert highest(store) == same
    (new,) = deliver(store)
    assert modseqs(store)[new] == highest(store) > same


def test_expunges_are_logged_with_their_modseq(store: MaildirStore) -> None:
    uids = deliver(store, 4)
    mark = highest(store)
    assert store.expunged_since(ALICE, INBOX, mark) == []
    store.store_flags(ALICE, INBOX, uids[:2], [Flag.DELETED.value], FlagMode.ADD)
    assert store.expunge(ALICE, INBOX) == uids[:2]
    assert highest(store) > mark
    assert store.expunged_since(ALICE, INBOX, mark) == uids[:2]
    assert store.expunged_since(ALICE, INBOX, highest(store)) == []


def test_modseqs_persist_across_store_instances(store: MaildirStore, paths: StatePaths) -> None:
    uids = deliver(store, 2)
    store.store_flags(ALICE, INBOX, [uids[0]], ["$Label1"], FlagMode.ADD)
    seen, top = modseqs(store), highest(store)
    other = MaildirStore(paths, hostname="mx.example.com")  # another process, in effect
    assert modseqs(other) == seen
    assert highest(other) >= top
    other.store_flags(ALICE, INBOX, [uids[1]], [Flag.FLAGGED.value], FlagMode.ADD)
    # The first store learns of the other's change from the shared index, not by bumping again.
    assert modseqs(store)[uids[1]] == modseqs(other)[uids[1]] > top


def test_foreign_flag_rename_gets_a_new_modseq(store: MaildirStore, paths: StatePaths) -> None:
    (uid,) = deliver(store)
    store.snapshot(ALICE, INBOX, claim_recent=True)  # into cur/
    before, top = modseqs(store)[uid], highest(store)
    cur = paths.maildir(ALICE) / "cur"
    (name,) = os.listdir(cur)
    os.rename(cur / name, cur / (name.split(":")[0] + ":2,S"))  # as Dovecot or mutt would
    after = store.snapshot(ALICE, INBOX)
    (info,) = after.messages
    assert Flag.SEEN.value in info.flags
    assert info.modseq > max(before, top - 1)
    assert after.highest_modseq == info.modseq


def test_deleted_index_rebuilds_above_every_modseq_seen(
    store: MaildirStore, paths: StatePaths
) -> None:
    uids = deliver(store, 3)
    store.store_flags(ALICE, INBOX, uids, [Flag.SEEN.value], FlagMode.ADD)
    top = highest(store)
    flags = {m.uid: m.flags for m in store.snapshot(ALICE, INBOX).messages}
    for suffix in ("", "-wal", "-shm"):
        (paths.maildir(ALICE) / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    fresh = MaildirStore(paths, hostname="mx.example.com")
    snap = fresh.snapshot(ALICE, INBOX)
    assert {m.uid: m.flags for m in snap.messages} == flags
    assert min(m.modseq for m in snap.messages) > top
    # The expunge log starts after the rebuild: older resyncs cannot be answered from it.
    assert fresh.expunged_since(ALICE, INBOX, top) is None


def test_corrupt_index_is_rebuilt(store: MaildirStore, paths: StatePaths) -> None:
    uids = deliver(store, 2)
    top = highest(store)
    path = paths.maildir(ALICE) / INDEX_FILE
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"this is not a database" * 100)
    fresh = MaildirStore(paths, hostname="mx.example.com")
    snap = fresh.snapshot(ALICE, INBOX)
    assert [m.uid for m in snap.messages] == uids
    assert snap.highest_modseq > top


def test_unchanged_since_skips_messages_changed_later(store: MaildirStore) -> None:
    uids = deliver(store, 2)
    mark = highest(store)
    store.store_flags(ALICE, INBOX, [uids[0]], [Flag.FLAGGED.value], FlagMode.ADD)
    change = store.change_flags(
        ALICE, INBOX, uids, [Flag.SEEN.value], FlagMode.ADD, unchanged_since=mark
    )
    assert change.modified == (uids[0],)
    assert set(change.done) == {uids[1]}
    assert Flag.SEEN.value in change.done[uids[1]].flags
    assert change.done[uids[1]].modseq == highest(store)


def test_a_delivering_process_records_only_its_own_messages(
    store: MaildirStore, paths: StatePaths
) -> None:
    """An SMTP worker delivers without ever listing the folder: it must not take the
    messages it has not seen for expunged."""
    uids = deliver(store, 3)
    before, top = modseqs(store), highest(store)
    worker = MaildirStore(paths, hostname="mx.example.com")
    other = MaildirStore(paths, hostname="mx.example.com")
    # Two workers in turn: each sees the other's uidlist records, never its files.
    new = [deliver(w)[0] for w in (worker, other, worker, other)]
    assert store.expunged_since(ALICE, INBOX, top) == []
    after = modseqs(store)
    assert {u: after[u] for u in uids} == before
    assert all(after[u] > top for u in new)


def test_a_delivering_process_keeps_nothing_per_delivered_message(
    store: MaildirStore, paths: StatePaths
) -> None:
    """A worker's index held an entry per message it ever delivered and rebuilt them all at
    every delivery (each 250 cost time in proportion to the worker's past deliveries)."""
    worker = MaildirStore(paths, hostname="mx.example.com")
    new = deliver(worker, 40)
    root = paths.maildir(ALICE)
    with worker._index(root, root).locked() as index:
        assert not index._listing and not index._meta and not index._unrecorded
    mine = modseqs(store)  # a listing process sees each with its own, increasing MODSEQ
    assert sorted(mine) == new
    assert [mine[u] for u in new] == sorted({mine[u] for u in new})


def test_a_first_open_of_a_big_folder_gives_each_message_its_modseq_and_flags(
    store: MaildirStore, paths: StatePaths
) -> None:
    """A first open sets every MODSEQ in one pass (BULK_PUT) and shares one flag set per
    letter combination: each message must still get a MODSEQ (one reconcile, one MODSEQ for
    all) and its own flags."""
    root = paths.maildir(ALICE)
    letters = ["", "S", "FS", "RST", "S"]
    for i in range(200):
        name = f"{1_700_000_000 + i}.M{i}P1.other:2,{letters[i % len(letters)]}"
        (root / "cur" / name).write_bytes(MESSAGE)
    messages = store.snapshot(ALICE, INBOX).messages
    assert len(messages) == 200
    assert min(m.modseq for m in messages) > 0
    by_letters = {"": set(), "S": {"\\Seen"}, "FS": {"\\Flagged", "\\Seen"}}
    by_letters["RST"] = {"\\Answered", "\\Seen", "\\Deleted"}
    for i, m in enumerate(messages):
        assert m.flags == by_letters[letters[i % len(letters)]], (i, m)
    before = {m.uid: m.modseq for m in messages}
    store.store_flags(ALICE, INBOX, [messages[5].uid], [Flag.ANSWERED.value], FlagMode.ADD)
    after = modseqs(store)
    assert after[messages[5].uid] > max(before.values())
    assert {u: s for u, s in after.items() if u != messages[5].uid} == {
        u: s for u, s in before.items() if u != messages[5].uid
    }


def test_a_keyword_another_program_defines_later_shows_on_its_letter(
    store: MaildirStore, paths: StatePaths
) -> None:
    """Letters a-z name keywords in dovecot-keywords. A letter nobody defined means nothing;
    once Dovecot defines it, messages carrying it show the keyword (the letter -> flags
    table is per keyword map)."""
    root = paths.maildir(ALICE)
    (root / "cur" / "1700000000.M1P1.other:2,Sa").write_bytes(MESSAGE)
    (root / "cur" / "1700000001.M2P1.other:2,S").write_bytes(MESSAGE)
    first = store.snapshot(ALICE, INBOX).messages
    assert [m.flags for m in first] == [{"\\Seen"}, {"\\Seen"}]
    (root / "dovecot-keywords").write_bytes(b"0 $Label1\n")
    later = store.snapshot(ALICE, INBOX).messages
    assert [m.flags for m in later] == [{"\\Seen", "$Label1"}, {"\\Seen"}]


def test_with_modseq_changes_nothing_but_the_modseq() -> None:
    entry = Entry(
        3,
        frozenset({"\\Seen"}),
        1.5,
        42,
        "base",
        modseq=9,
        sub="cur",
        suffix=":2,S",
        disk_size=40,
    )
    expected = dataclasses.replace(entry, modseq=11)
    assert with_modseq(entry, 11) == expected
    assert entry.name == "base:2,S"
    assert isinstance(entry.info, MessageInfo)


def test_changes_since_a_modseq_read_only_the_changed_rows(
    store: MaildirStore, paths: StatePaths
) -> None:
    # Every command of a session asks what changed since its MODSEQ; in a big folder that
    # must cost the few changed rows, not a scan of all (an ORDER BY uid made SQLite scan
    # the table instead of using the MODSEQ index). Counted in SQLite VM steps: no clock.
    root = paths.maildir(ALICE)
    for i in range(3000):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.test:2,").write_bytes(MESSAGE)
    uids = [m.uid for m in store.snapshot(ALICE, INBOX).messages]
    mark = highest(store)
    store.store_flags(ALICE, INBOX, uids[5:7], [Flag.SEEN.value], FlagMode.ADD)
    store.store_flags(ALICE, INBOX, uids[9:10], [Flag.DELETED.value], FlagMode.ADD)
    store.expunge(ALICE, INBOX)
    db = IndexDb(root)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db._connect().set_progress_handler(count, 10)
    assert db.changed_since(mark) == uids[5:7]
    assert db.expunged_since(mark) == uids[9:10]
    assert steps < 100  # a scan of 3,000 rows takes thousands of steps of 10
    db.close()


def test_asking_what_changed_when_nothing_did_takes_no_folder_lock(
    store: MaildirStore, paths: StatePaths
) -> None:
    # Every command of every session asks; "nothing" is answered from four stat() calls and
    # one SQLite read, without the Dovecot-compatible dotlock (a file made and removed).
    # Anything another program does is still seen.
    uids = deliver(store, 3)
    top = highest(store)
    assert store.changes(ALICE, INBOX, top) is not None  # the index has looked once
    time.sleep(2.1)  # past the listing's settle time: its mtimes are trusted from now on
    store.changes(ALICE, INBOX, top)
    uid_of = {m.key: m.uid for m in store.snapshot(ALICE, INBOX).messages}
    locks: list[str] = []

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event == "open" and str(args[0]).endswith(".lock"):
            locks.append(str(args[0]))

    sys.addaudithook(hook)
    quiet = store.changes(ALICE, INBOX, top)
    assert quiet is not None and quiet.changed == () and quiet.expunged == ()
    assert locks == []
    # Another program reads a message (new/ -> cur/ with \\Seen): seen at once.
    root = paths.maildir(ALICE)
    name = sorted((root / "new").iterdir())[0]
    name.rename(root / "cur" / (name.name + ":2,S"))
    changed = store.changes(ALICE, INBOX, top)
    assert changed is not None and [m.uid for m in changed.changed] == [uid_of[name.name]]
    assert uid_of[name.name] in uids
    assert locks  # that one took the lock


def test_stored_header_rows_of_an_older_meaning_are_dropped_once(tmp_path: Path) -> None:
    # A row's `exact` said "the lines decide an address search" also where parsing adds a
    # placeholder host; rows written before that was known must not be trusted.
    db = IndexDb(tmp_path)
    conn = db._connect()
    conn.execute("INSERT INTO headers VALUES (1, 'k1', x'46726f6d3a2078', 'from: x', 1, NULL)")
    conn.execute("DELETE FROM meta WHERE key = 'headers_version'")  # as an older release left it
    db.close()
    again = IndexDb(tmp_path)
    assert again._connect().execute("SELECT count(*) FROM headers").fetchone()[0] == 0
    again._connect().execute("INSERT INTO headers VALUES (2, 'k2', x'78', 'x', 1, NULL)")
    again.close()
    third = IndexDb(tmp_path)  # a current file keeps its rows
    assert third._connect().execute("SELECT count(*) FROM headers").fetchone()[0] == 1
    third.close()


def test_changes_now_neither_opens_the_index_file_nor_waits_for_it(store: MaildirStore) -> None:
    # It runs on the event loop's thread: an index file to open (or rebuild) and a lock held
    # by another connection are for `changes`, in a worker thread.
    deliver(store, 2)
    top = highest(store)
    assert store.changes(ALICE, INBOX, top) is not None
    time.sleep(2.1)  # past the listing's settle time (as above)
    store.changes(ALICE, INBOX, top)
    (index,) = store._indexes.values()
    assert store.changes_now(ALICE, INBOX, top) is not None  # open and current: answered
    index.db.close()
    assert store.changes_now(ALICE, INBOX, top) is None
    assert index.db._db is None  # not reopened
    db = index.db._connect()
    with index.db.not_waiting():
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == 0
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] > 0
