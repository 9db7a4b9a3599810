"""The worker processes of mailstack/base/parallel.py: real processes, real pipes."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator

import pytest

from mailstack.base import parallel

PARENT = os.getpid()


def square_and_pid(n: int) -> tuple[int, int]:
    return n * n, os.getpid()


def fail_on(bad: int, n: int) -> int:
    if n == bad:
        raise ValueError(f"bad item {n}")
    return n


def die_in_worker(parent: int, doomed: int, n: int) -> tuple[int, int]:
    """A worker process exits on `doomed`; the parent, redoing it, answers. (PARENT is
    each process's own: the workers import this module too.)"""
    if n == doomed and os.getpid() != parent:
        os._exit(3)
    return n, os.getpid()


def slow(n: int) -> int:
    time.sleep(0.05)
    return n


@pytest.fixture
def pool() -> Iterator[parallel.Pool]:
    p = parallel.Pool(2, idle_s=30)
    yield p
    p.close()


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie until reaped would still answer; a stopped worker is waited for by close().
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_items_run_in_other_processes_and_all_come_back(pool: parallel.Pool) -> None:
    results = list(pool.map(square_and_pid, range(200)))
    assert sorted(r for r, _ in results) == [n * n for n in range(200)]
    pids = {pid for _, pid in results}
    assert PARENT not in pids
    assert len(pids) == 2
    assert sorted(pids) == pool.pids()  # given back, kept for the next call
    again = list(pool.map(square_and_pid, range(10)))
    assert {pid for _, pid in again} <= pids  # the same processes, not new ones


def test_an_error_of_the_work_is_raised_in_the_caller(pool: parallel.Pool) -> None:
    with pytest.raises(ValueError, match="bad item 7"):
        list(pool.map(functools.partial(fail_on, 7), range(20)))
    # The pool still works afterwards.
    assert sorted(pool.map(functools.partial(fail_on, -1), range(20))) == list(range(20))


def test_a_worker_that_dies_has_its_items_redone_here(pool: parallel.Pool) -> None:
    results = list(pool.map(functools.partial(die_in_worker, PARENT, 5), range(40)))
    assert sorted(n for n, _ in results) == list(range(40))
    assert dict(results)[5] == PARENT  # the lost item, redone in this process
    # The dead worker is replaced on the next call.
    again = list(pool.map(square_and_pid, range(20)))
    assert len({pid for _, pid in again}) == 2


def children() -> set[int]:
    """Worker processes of this process now running (zombies excluded)."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == PARENT and fields[0] != "Z" and b"base.parallel" in cmdline:
            found.add(int(entry))
    return found


def test_stopping_early_leaves_no_worker_busy(pool: parallel.Pool) -> None:
    results = pool.map(slow, range(100))
    assert next(results) in range(100)
    busy = children()
    assert len(busy) == 2
    results.close()  # a client gone mid-FETCH
    # Workers with answers still due are stopped (their answers would confuse the next
    # caller); the pool starts new ones when needed.
    assert all(gone(pid) for pid in busy)
    assert pool.pids() == []
    assert sorted(pool.map(slow, range(6))) == list(range(6))
    assert len(pool.pids()) == 2


def test_idle_workers_are_stopped() -> None:
    pool = parallel.Pool(2, idle_s=0.3)
    try:
        assert len(list(pool.map(square_and_pid, range(10)))) == 10
        pids = pool.pids()
        assert len(pids) == 2
        deadline = time.monotonic() + 10
        while not all(gone(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.pids() == []
        assert all(gone(pid) for pid in pids)
    finally:
        pool.close()


def test_close_stops_the_workers(pool: parallel.Pool) -> None:
    list(pool.map(square_and_pid, range(10)))
    pids = pool.pids()
    pool.close()
    assert pool.pids() == []
    assert all(gone(pid) for pid in pids)


def test_without_workers_the_items_run_here() -> None:
    pool = parallel.Pool(0)
    results = list(pool.map(square_and_pid, range(10)))
    assert [r for r, _ in results] == [n * n for n in range(10)]  # in order, here
    assert {pid for _, pid in results} == {PARENT}


def test_workers_that_cannot_start_leave_the_work_here(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    pool = parallel.Pool(2)
    results = list(pool.map(square_and_pid, range(10)))
    assert sorted(r for r, _ in results) == [n * n for n in range(10)]
    assert {pid for _, pid in results} == {PARENT}
    assert "cannot start a worker process" in caplog.text


def test_one_core_starts_no_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    assert parallel.worker_count() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert parallel.worker_count() == parallel.MAX_WORKERS


def test_a_worker_dead_before_its_first_item_is_replaced_by_this_process(
    pool: parallel.Pool,
) -> None:
    list(pool.map(square_and_pid, range(4)))  # workers started
    for pid in pool.pids():
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    results = list(pool.map(square_and_pid, range(30)))
    assert sorted(r for r, _ in results) == [n * n for n in range(30)]
    assert {pid for _, pid in results} == {PARENT}  # both gone: every item here
    assert len({pid for _, pid in pool.map(square_and_pid, range(30))} - {PARENT}) == 2
