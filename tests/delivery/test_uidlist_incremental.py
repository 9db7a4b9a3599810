"""A folder index re-reads only what other writers appended to dovecot-uidlist.

Two MaildirStore instances on one Maildir stand for two processes (each has its own indexes).
What each one reads must equal a full parse of the file at every step, whether the other one
appended (read incrementally), rewrote it (a rename: read whole) or left a torn line behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.index_files import UIDLIST
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.uidmap import UidList

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE


def _index(store: MaildirStore, root: Path) -> FolderIndex:
    return store._index(root, root)  # the per-process cache under test


def _uids_seen(store: MaildirStore, root: Path) -> list[int]:
    index = _index(store, root)
    with index.locked():
        index.sync()
        return sorted(index._file.uid_of.values())  # records are not kept, their UIDs are


def _expunge(store: MaildirStore, uid: int) -> None:
    store.store_flags(ALICE, "INBOX", [uid], [Flag.DELETED], FlagMode.ADD)
    assert store.expunge(ALICE, "INBOX", [uid]) == [uid]


def _on_disk(root: Path) -> list[int]:
    return [r.uid for r in UidList.parse((root / UIDLIST).read_bytes()).records]


def test_appends_by_another_writer_are_read_as_a_tail(paths: StatePaths) -> None:
    a = MaildirStore(paths, hostname="a.example")
    a.create_account(ALICE)
    b = MaildirStore(paths, hostname="b.example")
    root = paths.maildir(ALICE)
    a.deliver([(ALICE, "INBOX")], b"Subject: 1\n\none\n")
    assert _uids_seen(b, root) == [1]
    reads: list[int] = []
    real_read_bytes = Path.read_bytes

    def counting_read_bytes(self: Path) -> bytes:
        if self.name == UIDLIST:
            reads.append(1)
        return real_read_bytes(self)

    Path.read_bytes = counting_read_bytes  # type: ignore[method-assign]
    try:
        for n in range(2, 6):
            a.deliver([(ALICE, "INBOX")], b"Subject: %d\n\nbody\n" % n)
            assert _uids_seen(b, root) == list(range(1, n + 1))
        (ref,) = b.deliver([(ALICE, "INBOX")], b"Subject: b\n\nfrom b\n")
        assert ref.uid == 6
        assert _uids_seen(a, root) == list(range(1, 7))
    finally:
        Path.read_bytes = real_read_bytes  # type: ignore[method-assign]
    assert reads == []  # neither store parsed the whole file again: appends only
    assert _on_disk(root) == list(range(1, 7))
    assert [m.uid for m in b.snapshot(ALICE, "INBOX").messages] == list(range(1, 7))


def test_a_torn_append_is_not_read_until_it_is_complete(paths: StatePaths) -> None:
    a = MaildirStore(paths, hostname="a.example")
    a.create_account(ALICE)
    root = paths.maildir(ALICE)
    a.deliver([(ALICE, "INBOX")], b"Subject: 1\n\none\n")
    b = MaildirStore(paths, hostname="b.example")
    assert _uids_seen(b, root) == [1]
    # Another writer's append, caught half-written (its process died or is still writing).
    with open(root / UIDLIST, "ab") as f:
        f.write(b"7 :1700000000.M1P1.x,S=10,W=11")
    assert _uids_seen(b, root) == [1]  # the half line is not a record yet
    with open(root / UIDLIST, "ab") as f:
        f.write(b"\n")
    assert _uids_seen(b, root) == [1, 7]


def test_a_rewrite_by_rename_is_read_whole(paths: StatePaths) -> None:
    a = MaildirStore(paths, hostname="a.example")
    a.create_account(ALICE)
    root = paths.maildir(ALICE)
    refs = [a.deliver([(ALICE, "INBOX")], b"Subject: %d\n\nx\n" % n)[0] for n in range(3)]
    b = MaildirStore(paths, hostname="b.example")
    assert _uids_seen(b, root) == [1, 2, 3]
    _expunge(a, refs[0].uid)
    index = _index(a, root)
    with index.locked():
        index.rewrite_uidlist()  # a new inode (an EXPUNGE alone defers this)
    a.deliver([(ALICE, "INBOX")], b"Subject: 4\n\nx\n")
    assert _uids_seen(b, root) == [2, 3, 4]


def test_a_rewrite_keeps_every_live_record_though_the_index_keeps_none(
    paths: StatePaths,
) -> None:
    """The index keeps UIDs, not record objects (delivery/index_files.py): a rewrite reads
    the records again from the file, keeps others' extension fields and current names,
    drops the dead, and the next append follows it."""
    a = MaildirStore(paths, hostname="a.example")
    a.create_account(ALICE)
    root = paths.maildir(ALICE)
    refs = [a.deliver([(ALICE, "INBOX")], b"Subject: %d\n\nx\n" % n)[0] for n in range(3)]
    name = "1700000000.M1P1.dovecot,S=10"
    (root / "cur" / f"{name}:2,S").write_bytes(b"Subject: d\n\nx\n")
    with open(root / UIDLIST, "ab") as f:  # Dovecot numbers a file, with an extension field
        f.write(b"9 W11 :%s:2,S\n" % name.encode())
    a.store_flags(ALICE, "INBOX", [refs[2].uid], [Flag.FLAGGED], FlagMode.ADD)
    _expunge(a, refs[0].uid)
    index = _index(a, root)
    with index.locked():
        index.sync()
        index.rewrite_uidlist()
    records = UidList.parse((root / UIDLIST).read_bytes()).records
    assert [(r.uid, r.ext) for r in records] == [(2, ""), (3, ""), (9, "W11")]
    assert records[1].name.endswith(":2,F")  # the name as it is now
    assert records[2].name == f"{name}:2,S"
    (ref,) = a.deliver([(ALICE, "INBOX")], b"Subject: 4\n\nx\n")
    assert ref.uid == 10
    assert _on_disk(root) == [2, 3, 9, 10]


@settings(max_examples=25)
@given(st.lists(st.sampled_from(["a", "b", "expunge-a", "expunge-b"]), max_size=12))
def test_two_writers_always_see_the_file_as_it_is(
    tmp_path_factory: pytest.TempPathFactory, steps: list[str]
) -> None:
    paths = StatePaths(tmp_path_factory.mktemp("state"))
    stores = {"a": MaildirStore(paths, hostname="a.example")}
    stores["a"].create_account(ALICE)
    stores["b"] = MaildirStore(paths, hostname="b.example")
    root = paths.maildir(ALICE)
    for step in steps:
        who = stores[step[-1]]
        if step.startswith("expunge"):
            uids = [m.uid for m in who.snapshot(ALICE, "INBOX").messages][:1]
            if uids:
                _expunge(who, uids[0])
        else:
            who.deliver([(ALICE, "INBOX")], b"Subject: s\n\nx\n")
        for other in stores.values():
            assert _uids_seen(other, root) == _on_disk(root)
    assert os.path.exists(root / UIDLIST)
