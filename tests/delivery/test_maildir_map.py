"""`MaildirStore.map_messages` (delivery/maildir_messages.py `map_files`): work on many
messages in worker processes that read the files by path. The answers must be the ones
reading in this process gives, also when a flag change renames a file, or an EXPUNGE
removes it, between finding the file and reading it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest
from mailstack.delivery import maildir_messages
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX, MessageBatch

from mailstack.base import parallel
from mailstack.base.flags import FlagMode
from tests.delivery.conftest import ALICE

COUNT = 60


def message(i: int) -> bytes:
    return b"Subject: number %d\nFrom: a@example.org\n\nbody %d\n%s" % (i, i, b"x" * i)


def echo(batch: MessageBatch) -> tuple[int, MessageBatch]:
    """The batch as the worker read it, and which process it was."""
    return os.getpid(), batch


@pytest.fixture
def uids(store: MaildirStore) -> list[int]:
    for i in range(COUNT):
        store.deliver([(ALICE, INBOX)], message(i))
    return [m.uid for m in store.snapshot(ALICE, INBOX, claim_recent=False).messages]


@pytest.fixture
def in_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every map in worker processes, in small batches."""
    monkeypatch.setattr(maildir_messages, "PARALLEL_MIN", 1)
    monkeypatch.setattr(maildir_messages, "MAP_BATCH", 7)
    yield
    parallel.POOL.close()


def mapped(
    store: MaildirStore, uids: list[int], *, whole: bool
) -> tuple[set[int], dict[int, tuple[str, int, bytes]]]:
    pids: set[int] = set()
    out: dict[int, tuple[str, int, bytes]] = {}
    for pid, batch in store.map_messages(ALICE, INBOX, uids, echo, whole=whole):
        pids.add(pid)
        for uid, key, size, data in batch:
            assert uid not in out
            out[uid] = (key, size, data)
    return pids, out


def expected(
    store: MaildirStore, uids: list[int], *, whole: bool
) -> dict[int, tuple[str, int, bytes]]:
    infos = {m.uid: m for m in store.snapshot(ALICE, INBOX, claim_recent=False).messages}
    data = (
        dict(store.read_messages(ALICE, INBOX, uids))
        if whole
        else store.read_headers(ALICE, INBOX, uids)
    )
    return {uid: (infos[uid].key, infos[uid].size, data[uid]) for uid in uids if uid in data}


@pytest.mark.parametrize("whole", [True, False])
def test_workers_read_what_this_process_reads(
    store: MaildirStore, uids: list[int], in_workers: None, whole: bool
) -> None:
    pids, out = mapped(store, uids, whole=whole)
    assert os.getpid() not in pids and pids
    assert out == expected(store, uids, whole=whole)


def test_small_jobs_stay_in_this_process(store: MaildirStore, uids: list[int]) -> None:
    pids, out = mapped(store, uids, whole=True)
    assert pids == {os.getpid()}
    assert out == expected(store, uids, whole=True)


@pytest.mark.parametrize("whole", [True, False])
def test_a_file_renamed_or_removed_after_it_was_found(
    store: MaildirStore,
    uids: list[int],
    in_workers: None,
    monkeypatch: pytest.MonkeyPatch,
    whole: bool,
) -> None:
    renamed, removed = uids[3], uids[10]
    want = expected(store, uids, whole=whole)
    del want[removed]
    found = maildir_messages.message_files
    done = False

    def found_then_changed(*args: object) -> list[maildir_messages.MessageFile]:
        nonlocal done
        files = found(*args)  # type: ignore[arg-type]
        if not done:  # after the paths are known, before any worker reads them
            done = True
            store.store_flags(
                ALICE, INBOX, [renamed, removed], ["\\Flagged", "\\Deleted"], FlagMode.ADD
            )
            store.expunge(ALICE, INBOX, [removed])
        return files

    monkeypatch.setattr(maildir_messages, "message_files", found_then_changed)
    _, out = mapped(store, uids, whole=whole)
    assert done
    assert out == want  # the renamed one read again under the lock, the expunged one absent


def test_flag_changes_during_a_big_map(
    store: MaildirStore, uids: list[int], in_workers: None
) -> None:
    want = expected(store, uids, whole=True)
    stop = threading.Event()

    def flip() -> None:  # another session renaming files all the while
        mode = FlagMode.ADD
        while not stop.is_set():
            store.store_flags(ALICE, INBOX, uids, ["\\Seen"], mode)
            mode = FlagMode.REMOVE if mode is FlagMode.ADD else FlagMode.ADD

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(5):
            assert mapped(store, uids, whole=True)[1] == want
    finally:
        stop.set()
        flipper.join()


def test_the_work_must_pickle_to_go_to_a_worker(
    store: MaildirStore, uids: list[int], in_workers: None
) -> None:
    # A lambda cannot be sent: the store says so rather than answering wrongly.
    with pytest.raises(Exception, match="pickle"):
        list(store.map_messages(ALICE, INBOX, uids, lambda batch: len(batch), whole=False))


def test_work_on_files_reports_a_missing_file(tmp_path: os.PathLike[str]) -> None:
    there = os.path.join(tmp_path, "there")
    with open(there, "wb") as f:
        f.write(b"Subject: x\n\nbody\n")
    files = [(1, "a", 20, there, 17), (2, "b", 20, os.path.join(tmp_path, "gone"), 17)]
    count, missed = maildir_messages.work_on_files(len, True, files)
    assert (count, missed) == (1, [files[1]])
