"""Group commit (delivery/commit.py) alone, and under MaildirStore with many threads at once.

Batches are forced, not hoped for: the test holds a folder's dotlock (the same per-path thread
lock the store takes), so the first flush blocks while the other deliveries queue up behind it;
`wait_until` says when they all wait.
"""

from __future__ import annotations

import asyncio
import mailbox
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import pytest
from mailstack.delivery import quota
from mailstack.delivery.commit import GroupCommitter
from mailstack.delivery.dotlock import DotLock
from mailstack.delivery.index_files import UIDLIST
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import FolderNotFoundError, MessageRef, QuotaExceededError
from mailstack.delivery.uidmap import UidList

from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE, BOB

WAIT_S = 30


def _run_all(calls: Sequence[Callable[[], object]]) -> list[object]:
    """Run every call in its own thread; each outcome is its result or its exception."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        out: list[object] = []
        for f in futures:
            exc = f.exception(timeout=WAIT_S)
            out.append(exc if exc is not None else f.result())
        return out


# -- GroupCommitter alone -----------------------------------------------------------------------


def test_jobs_queued_during_a_flush_share_the_next_one() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def flush(jobs: Sequence[int]) -> list[int | BaseException]:
        if not batches:
            release.wait(WAIT_S)  # the first batch is slow: everyone else queues meanwhile
        batches.append(list(jobs))
        return [job * 10 for job in jobs]

    committer: GroupCommitter[int, int] = GroupCommitter(flush)
    with ThreadPoolExecutor(max_workers=20) as pool:
        first = pool.submit(committer.commit, 0)
        assert committer.wait_until(flushing=1, timeout_s=WAIT_S)
        rest = [pool.submit(committer.commit, n) for n in range(1, 20)]
        assert committer.wait_until(queued=19, timeout_s=WAIT_S)
        release.set()
        assert first.result(WAIT_S) == 0
        assert [f.result(WAIT_S) for f in rest] == [n * 10 for n in range(1, 20)]
    assert batches[0] == [0]
    assert sorted(batches[1]) == list(range(1, 20))  # one flush for all that waited
    assert committer.batches == 2 and committer.largest_batch == 19


def test_many_threads_each_job_flushed_exactly_once() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def flush(jobs: Sequence[int]) -> list[int | BaseException]:
        with lock:
            seen.extend(jobs)
        return [-job for job in jobs]

    committer: GroupCommitter[int, int] = GroupCommitter(flush)
    outcomes = _run_all([partial(committer.commit, n) for n in range(200)])
    assert outcomes == [-n for n in range(200)]
    assert sorted(seen) == list(range(200))


def test_a_failed_job_fails_alone_and_a_raising_flush_fails_its_batch_only() -> None:
    def flush(jobs: Sequence[int]) -> list[int | BaseException]:
        if -1 in jobs:
            raise OSError("the disk is gone")
        return [ValueError(f"bad {job}") if job % 3 == 0 else job for job in jobs]

    committer: GroupCommitter[int, int] = GroupCommitter(flush)
    outcomes = _run_all([partial(committer.commit, n) for n in range(1, 31)])
    for n, outcome in zip(range(1, 31), outcomes, strict=True):
        if n % 3 == 0:
            assert isinstance(outcome, ValueError) and str(outcome) == f"bad {n}"
        else:
            assert outcome == n
    with pytest.raises(OSError, match="the disk is gone"):
        committer.commit(-1)
    assert committer.commit(7) == 7  # the lead was handed back: later commits still run


# -- under MaildirStore -------------------------------------------------------------------------


def _uids(paths: StatePaths, user: str, folder: str = "INBOX") -> list[int]:
    root = paths.maildir(user)
    fdir = root if folder == "INBOX" else root / f".{folder}"
    return [r.uid for r in UidList.parse((fdir / UIDLIST).read_bytes()).records]


def _files(paths: StatePaths, user: str, folder: str = "INBOX") -> list[bytes]:
    root = paths.maildir(user)
    fdir = root if folder == "INBOX" else root / f".{folder}"
    md = mailbox.Maildir(str(fdir), factory=None, create=False)
    return sorted(md.get_bytes(key) for key in md.iterkeys())


def test_concurrent_deliveries_are_grouped_and_each_numbered_on_disk(
    store: MaildirStore, paths: StatePaths
) -> None:
    store.create_account(BOB)
    inbox = DotLock(paths.maildir(ALICE) / UIDLIST)
    calls = []
    for n in range(40):
        user = ALICE if n % 2 else BOB
        folder = "INBOX" if n % 4 < 2 else "Junk"
        message = b"Subject: %d\n\nbody %d\n" % (n, n)
        calls.append(lambda t=(user, folder), m=message: store.deliver([t], m))
    with ThreadPoolExecutor(max_workers=len(calls) + 1) as pool:
        inbox.acquire()  # the first flush, which has alice's INBOX to do, waits here
        try:
            first = pool.submit(store.deliver, [(ALICE, "INBOX")], b"Subject: first\n\nx\n")
            assert store.committer.wait_until(flushing=1, timeout_s=WAIT_S)
            futures = [pool.submit(call) for call in calls]
            assert store.committer.wait_until(queued=40, timeout_s=WAIT_S)
        finally:
            inbox.release()
        refs: list[MessageRef] = [r for f in [first, *futures] for r in f.result(WAIT_S)]
    assert store.committer.largest_batch >= 40
    assert len({(r.user, r.folder, r.uid) for r in refs}) == 41
    for user in (ALICE, BOB):
        for folder in ("INBOX", "Junk"):
            mine = sorted(r.uid for r in refs if (r.user, r.folder) == (user, folder))
            assert _uids(paths, user, folder) == mine  # every UID on disk, none twice
            assert len(_files(paths, user, folder)) == len(mine)
        root = paths.maildir(user)
        assert list((root / "tmp").iterdir()) == []
        # maildirsize, appended once per batch, agrees with a recount from the listings.
        assert quota.usage(root) == quota.recalculate(root)


def test_a_failing_delivery_is_taken_back_whole_and_the_others_land(
    store: MaildirStore, paths: StatePaths
) -> None:
    store.create_account(BOB)
    inbox = DotLock(paths.maildir(ALICE) / UIDLIST)
    with ThreadPoolExecutor(max_workers=8) as pool:
        inbox.acquire()
        try:
            first = pool.submit(store.deliver, [(ALICE, "INBOX")], b"Subject: first\n\nx\n")
            assert store.committer.wait_until(flushing=1, timeout_s=WAIT_S)
            # One message for alice's INBOX and bob's Junk together: all or nothing.
            both = pool.submit(
                store.deliver, [(ALICE, "INBOX"), (BOB, "Junk")], b"Subject: both\n\nx\n"
            )
            others = [
                pool.submit(store.deliver, [(user, "INBOX")], b"Subject: other %d\n\nx\n" % n)
                for n, user in enumerate([ALICE, BOB, ALICE, BOB])
            ]
            assert store.committer.wait_until(queued=5, timeout_s=WAIT_S)
            # Bob deletes Junk (over IMAP, say) while that delivery waits for its commit.
            pool.submit(store.delete_folder, BOB, "Junk").result(WAIT_S)
        finally:
            inbox.release()
        first.result(WAIT_S)
        with pytest.raises(FolderNotFoundError):
            both.result(WAIT_S)
        other_refs = [f.result(WAIT_S)[0] for f in others]
    alice = _files(paths, ALICE)
    assert len(alice) == 3 and not any(b"Subject: both" in m for m in alice)
    assert len(_files(paths, BOB)) == 2
    assert _uids(paths, ALICE) == sorted(
        [1, *(r.uid for r in other_refs if r.user == ALICE)]
    )  # the taken-back copy's UID is gone from the uidlist too
    for user in (ALICE, BOB):
        root = paths.maildir(user)
        assert list((root / "tmp").iterdir()) == []
        assert quota.usage(root) == quota.recalculate(root)


def test_many_threads_across_instances_and_appends(tmp_path: Path) -> None:
    # Two store objects (as two processes would have) and IMAP APPENDs with flags, all at once.
    paths = StatePaths(tmp_path)
    one, two = MaildirStore(paths, hostname="a"), MaildirStore(paths, hostname="b")
    one.create_account(ALICE)
    calls: list[Callable[[], object]] = []
    for n in range(30):
        store = one if n % 2 else two
        if n % 3:
            calls.append(partial(store.deliver, [(ALICE, "INBOX")], b"S: %d\n\nx\n" % n))
        else:
            calls.append(partial(store.append, ALICE, "INBOX", b"A: %d\n\nx\n" % n, flags=["$k"]))
    outcomes = _run_all(calls)
    assert not [o for o in outcomes if isinstance(o, BaseException)]
    uids = _uids(paths, ALICE)
    assert uids == list(range(1, 31))
    snap = one.snapshot(ALICE, "INBOX")
    assert len(snap.messages) == 30
    assert sum(1 for m in snap.messages if "$k" in m.flags) == 10


def test_a_copy_already_numbered_is_taken_back_when_its_sibling_fails(
    store: MaildirStore, paths: StatePaths
) -> None:
    # Bob's Junk accepts the file but cannot number it (its uidlist is unreadable): the copy
    # for alice, renamed and numbered earlier in the same flush, must go again.
    store.create_account(BOB)
    junk = paths.maildir(BOB) / ".Junk"
    (junk / UIDLIST).unlink()
    (junk / UIDLIST).mkdir()
    inbox = DotLock(paths.maildir(ALICE) / UIDLIST)
    with ThreadPoolExecutor(max_workers=4) as pool:
        inbox.acquire()
        try:
            first = pool.submit(store.deliver, [(ALICE, "INBOX")], b"Subject: first\n\nx\n")
            assert store.committer.wait_until(flushing=1, timeout_s=WAIT_S)
            both = pool.submit(
                store.deliver, [(ALICE, "INBOX"), (BOB, "Junk")], b"Subject: both\n\nx\n"
            )
            assert store.committer.wait_until(queued=1, timeout_s=WAIT_S)  # in this order
            after = pool.submit(store.deliver, [(ALICE, "INBOX")], b"Subject: after\n\nx\n")
            assert store.committer.wait_until(queued=2, timeout_s=WAIT_S)
        finally:
            inbox.release()
        assert first.result(WAIT_S)[0].uid == 1
        with pytest.raises(IsADirectoryError):
            both.result(WAIT_S)
        (later,) = after.result(WAIT_S)
    assert later.uid == 3  # 2 went to the copy taken back; UIDs are never reused
    assert _uids(paths, ALICE) == [1, 3]
    assert [m.split(b"\n")[0] for m in _files(paths, ALICE)] == [
        b"Subject: after",
        b"Subject: first",
    ]
    assert list((junk / "new").iterdir()) == [] and list((junk / "tmp").iterdir()) == []
    assert quota.usage(paths.maildir(ALICE)) == quota.recalculate(paths.maildir(ALICE))


# -- submit(): the event loop's way in ------------------------------------------------------------


def test_submitted_jobs_resolve_their_futures_and_blocking_callers_still_lead() -> None:
    release = threading.Event()
    batches: list[list[int]] = []

    def flush(jobs: Sequence[int]) -> list[int | BaseException]:
        if not batches:
            release.wait(WAIT_S)
        batches.append(list(jobs))
        return [ValueError("odd") if job % 2 else job for job in jobs]

    committer: GroupCommitter[int, int] = GroupCommitter(flush)
    first = committer.submit(0)  # starts a drain thread, which blocks in the first flush
    assert committer.wait_until(flushing=1, timeout_s=WAIT_S)
    queued = [committer.submit(n) for n in range(1, 10)]
    cancelled = committer.submit(99)
    assert cancelled.cancel()  # still queued: never flushed
    with ThreadPoolExecutor(max_workers=1) as pool:
        blocking = pool.submit(committer.commit, 10)
        assert committer.wait_until(queued=11, timeout_s=WAIT_S)
        release.set()
        assert blocking.result(WAIT_S) == 10
    assert first.result(WAIT_S) == 0
    for n, future in zip(range(1, 10), queued, strict=True):
        if n % 2:
            assert isinstance(future.exception(WAIT_S), ValueError)
        else:
            assert future.result(WAIT_S) == n
    assert sorted(batches[1]) == list(range(1, 11))  # one flush for all that waited
    assert 99 not in [job for batch in batches for job in batch]


async def test_many_tasks_deliver_without_threads_of_their_own(
    store: MaildirStore, paths: StatePaths
) -> None:
    store.create_account(BOB)
    messages = [
        (ALICE if n % 2 else BOB, [b"Subject: %d\r\n" % n, b"\r\nline\r", b"\n..x\r\n"])
        for n in range(60)
    ]
    futures = [
        asyncio.wrap_future(store.deliver_parts_nowait([(user, "INBOX")], parts))
        for user, parts in messages
    ]
    refs = [r for result in await asyncio.gather(*futures) for r in result]
    for user in (ALICE, BOB):
        mine = sorted(r.uid for r in refs if r.user == user)
        assert mine == _uids(paths, user) == list(range(1, 31))
        stored = _files(paths, user)
        assert len(stored) == 30
        assert all(m.endswith(b"\nline\n..x\n") and b"\r" not in m for m in stored)


async def test_a_failing_nowait_delivery_fails_alone(
    store: MaildirStore, paths: StatePaths
) -> None:
    store = MaildirStore(paths, hostname="mx.example.com", quota_of=lambda u: int(u == ALICE))
    store.create_account(ALICE)  # one byte of quota: nothing fits
    store.create_account(BOB)
    results = await asyncio.gather(
        asyncio.wrap_future(store.deliver_parts_nowait([(ALICE, "INBOX")], [b"a\r\n"])),
        asyncio.wrap_future(store.deliver_parts_nowait([(BOB, "Nope")], [b"b\r\n"])),
        asyncio.wrap_future(store.deliver_parts_nowait([(BOB, "INBOX")], [b"c\r\n"])),
        return_exceptions=True,
    )
    assert isinstance(results[0], QuotaExceededError)
    assert isinstance(results[1], FolderNotFoundError)
    assert isinstance(results[2], list) and results[2][0].uid == 1
    assert _files(paths, ALICE) == [] and _files(paths, BOB) == [b"c\n"]
    assert list((paths.maildir(ALICE) / "tmp").iterdir()) == []
