"""The durable outbound queue: the spool (delivery/queue_spool.py) and the runner that empties it.

Recipients at hosted domains (DSNs to our own users, mostly) go straight into their
Maildirs through `delivery.local` when the queue was given `local=` (serve does); otherwise,
like any other, to the domain's MX.

Runner: one asyncio task (`run`). Due recipients are grouped per message and domain; the
groups wait per destination (the domain, or the one `[outbound] relay`) for connections,
each a thread of the runner's own pool that sends them one after another over one SMTP
session (delivery/queue_runner.py): at most MAX_PER_DOMAIN at once per destination domain
(receivers limit connections per client; ours is `smtp.max_connections_per_ip`),
MAX_PER_RELAY to the relay, MAX_ATTEMPTS at once in total. `enqueue` in this process wakes
it at once; other processes touch `wakeup`. Directory fsyncs are shared between threads
(queue_runner.GroupSync), and `record` makes its change durable after releasing the lock.

The spool's layout, its crash safety and the retry schedule: delivery/queue_spool.py.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Collection

from mailstack.delivery import remote
from mailstack.delivery.queue_runner import (
    MAX_PER_DOMAIN,
    MAX_PER_RELAY,
    Deliver,
    Group,
    Key,
    LocalDeliver,
    RunnerState,
    Send,
    deliver_locally,
    each,
    send_connection,
)
from mailstack.delivery.queue_spool import SCHEDULE_S, Spool, domain_of
from mailstack.delivery.remote_session import Abort
from mailstack.delivery.routes import RouteError, route_for
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config
from mailstack.base.paths import StatePaths

log = logging.getLogger(__name__)

RESCAN_S = 1.0  # how often the runner stats `wakeup` for changes made by other processes
STOP_GRACE_S = 10.0  # on stop, attempts in flight may finish this long, then are cut off


def _soon(loop: asyncio.AbstractEventLoop, fn: Callable[[Key], None], key: Key) -> None:
    loop.call_soon_threadsafe(fn, key)


class OutboundQueue(Spool):
    """The spool in `paths.queue_dir` (blocking methods: delivery/queue_spool.py) and its
    async runner, `run`/`run_once`."""

    def __init__(
        self,
        config: Config,
        paths: StatePaths,
        *,
        hosted_domains: Callable[[], Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
        deliver: Deliver = remote.deliver,
        local: LocalDeliver | None = None,
    ) -> None:
        super().__init__(config, paths, hosted_domains=hosted_domains, clock=clock)
        self._deliver = deliver
        self._local = local
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = RunnerState()
        self._abort = Abort()
        self.stop_grace_s = STOP_GRACE_S
        # MTA-STS policy cache and TLS-RPT counts, kept in the spool (delivery/security.py)
        self.security = OutboundSecurity(self.root)

    # -- the runner ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Make the runner look at the queue now (thread-safe; no-op without a runner)."""
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._wake.set)

    def _due(self, now: float) -> tuple[builtins.list[Group], float | None]:
        """(groups due now, the earliest later due time)."""
        groups: builtins.list[Group] = []
        later: float | None = None
        for entry in self.list():
            by_domain: dict[str, builtins.list[str]] = {}
            for r in entry.recipients:
                if r.status != "pending":
                    continue
                if r.next_attempt <= now:
                    by_domain.setdefault(domain_of(r.address), []).append(r.address)
                else:
                    later = r.next_attempt if later is None else min(later, r.next_attempt)
            groups.extend((entry, d, rcpts) for d, rcpts in by_domain.items())
        return groups, later

    def _destination(self, domain: str) -> tuple[str, int]:
        """(the key that connections are counted and shared under, its connection limit)."""
        if self._local is not None and domain in set(self._hosted()):
            return f"local {domain}", MAX_PER_DOMAIN
        with contextlib.suppress(RouteError):
            if route_for(self.config, domain) is not None:
                return domain, MAX_PER_DOMAIN  # its own relay and credentials
        if self.config.outbound.relay:
            return f"relay {self.config.outbound.relay}", MAX_PER_RELAY
        return domain, MAX_PER_DOMAIN

    async def _connection(self, dest: str) -> None:
        """One connection's worth of work for `dest`, in a thread of the runner's pool."""
        runner = self._runner
        loop = asyncio.get_running_loop()
        try:
            async with runner.total:
                await loop.run_in_executor(runner.executor(), self._send_from, dest, loop)
        except Exception:  # _send_from handles its own; this is a bug in the scheduling
            log.exception("queue: connection to %s failed unexpectedly", dest)
        finally:
            runner.active[dest] -= 1
            self.wake()

    def _send_from(self, dest: str, loop: asyncio.AbstractEventLoop) -> None:
        """One connection for `dest` (see queue_runner.send_connection). Blocking."""
        runner = self._runner
        send: Send
        if self._local is not None and dest.startswith("local "):
            send = functools.partial(each, functools.partial(deliver_locally, self._local))
        elif self._deliver is remote.deliver:
            send = functools.partial(
                remote.deliver_batch, self.config, abort=self._abort, security=self.security
            )
        else:
            deliver = functools.partial(self._deliver, abort=self._abort, security=self.security)
            send = functools.partial(
                each, lambda i: deliver(self.config, i.domain, i.mail_from, i.rcpts, i.message)
            )

        def bug(key: tuple[str, str]) -> None:
            # A bug or a full disk must not kill the runner, nor make it retry in a tight
            # loop: the recipients stay pending, and this group waits a first retry interval.
            log.exception("queue: %s: attempt for %s failed unexpectedly", *key)
            until = self.clock() + SCHEDULE_S[0]
            loop.call_soon_threadsafe(runner.not_before.__setitem__, key, until)

        send_connection(
            runner,
            runner.waiting[dest],
            read=lambda qid: self._msg(qid).read_bytes(),
            record=self.record,
            finished=lambda key: _soon(loop, runner.finish, key),
            bug=bug,
            send=send,
        )

    async def _dispatch(self, only: Collection[tuple[str, str]] | None = None) -> float | None:
        """Hand what is due (of `only`, when given) to connections; the next due time."""
        runner = self._runner
        scanned_at = runner.epoch
        groups, later = await asyncio.to_thread(self._due, self.clock())
        runner.dispatched = set()
        for entry, domain, rcpts in groups:
            key = (entry.id, domain)
            if only is not None and key not in only:
                continue
            if key in runner.inflight or runner.finished.get(key, -1) > scanned_at:
                continue  # in flight, or recorded since the scan read its state
            if runner.not_before.get(key, 0.0) > self.clock():
                wait_until = runner.not_before[key]
                later = wait_until if later is None else min(later, wait_until)
                continue
            runner.inflight.add(key)
            runner.dispatched.add(key)
            dest, limit = self._destination(domain)
            runner.limits[dest] = limit
            runner.waiting.setdefault(dest, deque()).append((entry, domain, rcpts))
        runner.forget_finished(scanned_at)
        # Connections per destination: up to its limit, no more than messages wait.
        for dest, waiting in runner.waiting.items():
            while runner.active.get(dest, 0) < min(runner.limits[dest], len(waiting)):
                runner.active[dest] = runner.active.get(dest, 0) + 1
                task = asyncio.create_task(self._connection(dest))
                runner.tasks.add(task)
                task.add_done_callback(runner.tasks.discard)
        return later

    async def run_once(self) -> None:
        """Attempt everything due now and wait until those attempts are recorded."""
        await self._dispatch()
        first = self._runner.dispatched
        while self._runner.tasks:
            await asyncio.gather(*list(self._runner.tasks))
            await self._dispatch(only=first)  # what a connection gave back or left waiting

    def _wakeup_mtime(self) -> float:
        try:
            return (self.root / "wakeup").stat().st_mtime
        except FileNotFoundError:
            return 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """The runner: until `stop` is set, deliver what is due, wake on enqueue/`wakeup`.

        On stop, attempts in flight get `stop_grace_s` to finish; then their connections are
        cut (delivery.remote.Abort) and their recipients stay pending.
        """
        self._abort = Abort()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        await asyncio.to_thread(self.remove_orphans)
        seen = await asyncio.to_thread(self._wakeup_mtime)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    later = await self._dispatch()
                except Exception:  # e.g. the spool unreadable: keep running, try again soon
                    log.exception("queue: cannot scan %s", self.root)
                    later = None
                timeout = RESCAN_S
                if later is not None:
                    timeout = min(timeout, max(0.0, later - self.clock()))
                while not stop.is_set():
                    waker = asyncio.ensure_future(self._wake.wait())
                    done, _ = await asyncio.wait(
                        {waker, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    waker.cancel()
                    if done or (later is not None and self.clock() >= later):
                        break
                    mtime = await asyncio.to_thread(self._wakeup_mtime)
                    if mtime != seen:
                        seen = mtime
                        break
        finally:
            stopping.cancel()
            self._runner.closing = True  # connections finish their message, take no more
            if self._runner.tasks:
                _, pending = await asyncio.wait(self._runner.tasks, timeout=self.stop_grace_s)
                if pending:
                    # Cut the connections: the recipients stay pending (temporary failure).
                    log.info("queue: stopping: interrupting %d attempt(s)", len(pending))
                    self._abort.set()
                    await asyncio.wait(pending)
            if self._runner.pool is not None:
                self._runner.pool.shutdown(wait=False)
            self._runner = RunnerState()  # what waited is still pending on disk
            self._loop = self._wake = None
