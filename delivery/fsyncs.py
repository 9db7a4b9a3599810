"""fsyncs that wait together when the disk is slow: `run_all`.

On ext4 (and XFS) fsyncs issued at the same time share one journal commit and one disk cache
flush, so N files made durable from N threads cost about one fsync's wait instead of N. On a
slow disk (a busy or networked block device: 5-10 ms per fsync on this project's loaded test
machine) that doubled the deliveries per second of a group commit; on a fast one (0.3 ms) the
thread hand-offs cost more CPU than the waits they save, and CPU is then the limit. So the
latency of the calls is measured as they run (a moving average) and they go to a small pool
only while it is above `SLOW_S`; otherwise one after another in the caller's thread.

Process-wide: one pool per process, made on first use, forgotten in a forked child (it has
none of the parent's threads, and work handed to them would never run).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_A = TypeVar("_A")
_R = TypeVar("_R")

SLOW_S = 0.001  # average call time above which concurrent calls pay for their hand-offs
_WEIGHT = 0.2  # of the newest call in the moving average
MAX_THREADS = 16

_latency = 0.0  # moving average of a call's seconds; races between threads only blur it
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=MAX_THREADS, thread_name_prefix="fsync")
        return _pool


def _forget_pool_in_child() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool_in_child)


def slow() -> bool:
    """True while the measured calls are slow enough to run concurrently."""
    return _latency > SLOW_S


def run_all(fn: Callable[[_A], _R], items: Sequence[_A]) -> list[_R | BaseException]:
    """`fn(item)` for every item (calls that mostly wait in fsync), concurrently while the disk
    is slow; each item's exception is its result, so one failure fails only its own item."""

    def call(item: _A) -> _R | BaseException:
        global _latency
        start = time.perf_counter()
        try:
            return fn(item)
        except Exception as exc:  # the item's own failure; nothing else fails with it
            return exc
        finally:
            _latency += _WEIGHT * (time.perf_counter() - start - _latency)

    if len(items) <= 1 or not slow():
        return [call(item) for item in items]
    pool = _get_pool()
    rest = [pool.submit(call, item) for item in items[1:]]
    return [call(items[0]), *(f.result() for f in rest)]
