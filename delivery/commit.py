"""Group commit: concurrent writers share one flush instead of each paying for its own.

Making a Maildir delivery durable costs, besides the message file's own fsync, a folder lock,
a `dovecot-uidlist` append with its fsync, a directory fsync and a `maildirsize` line. Those are
per folder, not per message: N deliveries into one folder that reach the disk together need
them once. `GroupCommitter.commit(job)` blocks until `job` is durable and returns its outcome;
jobs submitted while a flush is running wait and are flushed together by the next one (the
classic database group commit; no timer, so a lone writer never waits for company).

Blocking callers (`commit`) need no committer thread: the first caller that finds no flush
running leads, flushes the whole queue (its own job included) with the `flush` function it was
given, resolves every waiter, and hands the lead to the oldest waiter that arrived meanwhile.
Callers that must not block (the SMTP event loop) use `submit`, which returns a future at once;
when no flush is running it starts a short-lived thread that flushes until the queue is empty
(it also leads for blocking waiters queued behind; a blocking waiter that is oldest gets the lead
back). So there is no hop into a worker thread per message, and no thread is left behind when
the queue runs dry or a store object is dropped.

Failure isolation is `flush`'s contract: it returns one outcome per job, a result or the
exception for that job alone, so one bad message fails only itself. If `flush` itself raises,
every job of that batch gets the exception (none of them is acknowledged).

Pure threading; no I/O of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

J = TypeVar("J")
R = TypeVar("R")


class _Waiter(Generic[J, R]):
    __slots__ = ("done", "error", "future", "job", "lead", "result", "wake")

    def __init__(self, job: J, future: Future[R] | None = None) -> None:
        self.job = job
        self.future = future  # set: `submit` (nobody waits in a thread); None: `commit`
        self.wake = threading.Event()
        self.done = False
        self.lead = False
        self.result: R | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[J, R]):
    """Batches `commit()` calls from many threads into calls of `flush(jobs)`."""

    def __init__(self, flush: Callable[[Sequence[J]], Sequence[R | BaseException]]) -> None:
        self._flush = flush
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._queue: list[_Waiter[J, R]] = []
        self._busy = False  # a leader is flushing (or about to)
        self._flushing = 0  # jobs in the batch being flushed now
        self.batches = 0  # flushes so far; tests and benchmarks read it
        self.largest_batch = 0

    def commit(self, job: J) -> R:
        """Block until `job` was flushed; its result, or raise its exception."""
        me: _Waiter[J, R] = _Waiter(job)
        with self._lock:
            self._queue.append(me)
            self._queued.notify_all()
            if not self._busy:
                self._busy = me.lead = True
        while not me.done:
            if me.lead:
                self._lead()
            else:
                me.wake.wait()
                me.wake.clear()
        if me.error is not None:
            raise me.error
        return me.result  # type: ignore[return-value]  # set with done when error is None

    def submit(self, job: J) -> Future[R]:
        """Queue `job` and return at once; the future resolves when it was flushed."""
        future: Future[R] = Future()
        with self._lock:
            self._queue.append(_Waiter(job, future))
            self._queued.notify_all()
            start = not self._busy
            self._busy = True
        if start:
            threading.Thread(target=self._drain, name="group-commit", daemon=True).start()
        return future

    def _drain(self) -> None:
        while self._lead(draining=True):
            pass

    def wait_until(self, *, queued: int = 0, flushing: int = 0, timeout_s: float) -> bool:
        """Wait until at least `queued` jobs wait for the next flush and `flushing` are being
        flushed (tests use it to force batches); False on timeout."""
        with self._queued:
            return self._queued.wait_for(
                lambda: len(self._queue) >= queued and self._flushing >= flushing, timeout_s
            )

    def _lead(self, *, draining: bool = False) -> bool:
        """Flush one batch; True if the caller (a drain thread) should flush the next one."""
        with self._lock:
            batch, self._queue = self._queue, []
            # A submitted job whose future was cancelled meanwhile is dropped; the others'
            # futures can no longer be cancelled from here on.
            batch = [
                w for w in batch if w.future is None or w.future.set_running_or_notify_cancel()
            ]
            self._flushing = len(batch)
            self._queued.notify_all()
        try:
            outcomes: Sequence[R | BaseException] = self._flush([w.job for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"flush returned {len(outcomes)} outcomes for {len(batch)}")
        except BaseException as exc:  # every waiter must hear of it, whatever it is
            outcomes = [exc] * len(batch)
        with self._lock:
            self._flushing = 0
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(batch))
            for waiter, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    waiter.error = outcome
                else:
                    waiter.result = outcome
                waiter.done = True
                waiter.lead = False
                waiter.wake.set()
            if not self._queue:
                self._busy = False
                keep_going = start_drain = False
            elif self._queue[0].future is None:
                # A blocked caller came first while we flushed: it leads the next batch.
                successor = self._queue[0]
                successor.lead = True
                successor.wake.set()
                keep_going = start_drain = False
            else:
                keep_going, start_drain = draining, not draining
        # Futures resolved outside the lock: their callbacks may run right here.
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if waiter.future is not None:
                if isinstance(outcome, BaseException):
                    waiter.future.set_exception(outcome)
                else:
                    waiter.future.set_result(outcome)
        if start_drain:
            threading.Thread(target=self._drain, name="group-commit", daemon=True).start()
        return keep_going
