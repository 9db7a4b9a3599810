"""The outbound queue runner's connections and shared fsyncs (delivery/queue.py uses them).

Connections: due groups (a message, a domain, its due recipients there) wait per destination
(a domain's MX hosts, or the one `[outbound] relay`); up to the destination's limit of
connections each take them one after another (`send_connection`, in a thread of the
runner's own pool), so a backlog to one destination goes over a few reused connections
(RFC 5321 §3.3) instead of one connection per message. Each message's results are recorded
before the next one is sent, so a kill between two messages repeats none that the remote
accepted and we recorded.

`GroupSync`: group commit of directory fsyncs. Every enqueue renames two files into the spool
and every delivered message unlinks one, and each must be durable before it is acknowledged
(the 250, or the next message on the connection): one fsync(2) of the directory per change
made 16 concurrent senders queue up behind the disk. A caller of `sync` returns after an
fsync of the directory that *began* after its call did, so its own rename or unlink is
covered (POSIX: fsync of a directory makes its entries' changes durable); callers that come
while one runs share the next one.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mailstack.delivery.local import Outcome, deliver_to
from mailstack.delivery.queue_state import Entry
from mailstack.delivery.remote_session import Done, Outgoing, RcptResult, Take
from mailstack.delivery.store import MailStore

from mailstack.base.fsutil import fsync_dir
from mailstack.base.users import Accounts

MAX_PER_DOMAIN = 2  # simultaneous connections to one destination domain
# Simultaneous connections to the `[outbound] relay` smarthost: it is ours to use, and all of
# our mail goes there (Postfix's default_destination_concurrency_limit is 20).
MAX_PER_RELAY = 8
MAX_PER_CONNECTION = 100  # messages over one connection before a fresh one
MAX_ATTEMPTS = 10  # simultaneous connections in total (each is a thread and a socket)

Group = tuple[Entry, str, list[str]]  # a message, a domain, its recipients there due now
Key = tuple[str, str]  # (queue id, domain)
Send = Callable[[Take, Done], None]  # remote.deliver_batch's shape, config and all bound


# delivery.remote.deliver's shape: (config, domain, mail_from, rcpts, message, *, abort)
Deliver = Callable[..., list[RcptResult]]
# One hosted recipient into its Maildir: (mail_from, rcpt, message) -> result. Blocking.
LocalDeliver = Callable[[str, str, bytes], RcptResult]


def local_delivery(accounts: Accounts, store: MailStore, hostname: str) -> LocalDeliver:
    """Hosted recipients (DSNs to our own users, mostly) straight into their Maildirs with
    `delivery.local`, as our MX would store them: no DNS, no connection to ourselves."""

    def deliver(mail_from: str, rcpt: str, message: bytes) -> RcptResult:
        result = deliver_to(
            accounts, store, hostname=hostname, recipient=rcpt, message=message, mail_from=mail_from
        )
        match result.outcome:
            case Outcome.DELIVERED:
                return RcptResult(rcpt, "delivered", "250 2.0.0 delivered locally")
            case Outcome.TRY_LATER:
                return RcptResult(rcpt, "temporary", f"451 4.2.0 {result.problem}")
            case Outcome.NO_SUCH_USER:
                return RcptResult(rcpt, "permanent", f"550 5.1.1 {result.problem}")
            case Outcome.BAD_MESSAGE:
                return RcptResult(rcpt, "permanent", f"554 5.6.0 {result.problem}")

    return deliver


def deliver_locally(local: LocalDeliver, item: Outgoing) -> list[RcptResult]:
    return [local(item.mail_from, r, item.message) for r in item.rcpts]


def each(
    one: Callable[[Outgoing], list[RcptResult]],
    take: Take,
    done: Done,
) -> None:
    """A Send for deliveries without a connection to share: one call per message."""
    while (item := take()) is not None:
        done(item, one(item))


@dataclass
class RunnerState:
    """The runner's bookkeeping; touched on the event loop only (threads go through it)."""

    inflight: set[Key] = field(default_factory=set)  # (id, domain) taken
    not_before: dict[Key, float] = field(default_factory=dict)  # after a bug
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Due groups per destination that no connection has taken yet (threads popleft)
    waiting: dict[str, deque[Group]] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)  # connections per destination
    limits: dict[str, int] = field(default_factory=dict)
    total: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(MAX_ATTEMPTS))
    # A scan of the spool may read a state file just before a connection records it: the
    # group is not dispatched again by a scan that began before it finished.
    epoch: int = 0
    finished: dict[Key, int] = field(default_factory=dict)
    pool: ThreadPoolExecutor | None = None
    closing: bool = False  # serve is stopping
    dispatched: set[Key] = field(default_factory=set)  # by the last _dispatch

    def executor(self) -> ThreadPoolExecutor:
        """Threads of our own: attempts that wait on remote servers never hold the loop's
        default executor, which acceptance (DKIM, fsync) and the store need."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(MAX_ATTEMPTS, thread_name_prefix="outbound")
        return self.pool

    def finish(self, key: Key) -> None:
        self.inflight.discard(key)
        self.epoch += 1
        self.finished[key] = self.epoch

    def forget_finished(self, scanned_at: int) -> None:
        for key in [k for k, e in self.finished.items() if e <= scanned_at]:
            del self.finished[key]


def send_connection(
    runner: RunnerState,
    waiting: deque[Group],
    *,
    read: Callable[[str], bytes],
    record: Callable[[str, Sequence[RcptResult]], object],
    finished: Callable[[Key], None],
    bug: Callable[[Key], None],
    send: Send,
) -> None:
    """Feed `send` what waits, until nothing does, MAX_PER_CONNECTION were taken, serve
    stops, or `send` returns (its connection ended). Each message's results are `record`ed
    as they come; `finished` tells the loop (thread-safe) that a group is no longer in
    flight. Blocking: runs in the runner's pool."""
    current: dict[int, tuple[Key, Outgoing]] = {}  # taken, not yet done (by id(item))
    taken = 0

    def take() -> Outgoing | None:
        nonlocal taken
        while taken < MAX_PER_CONNECTION and not runner.closing:
            try:
                entry, domain, rcpts = waiting.popleft()  # deque: safe across threads
            except IndexError:
                return None
            try:
                message = read(entry.id)
            except FileNotFoundError:
                # Deleted meanwhile (then record() finds no state), or lost by hand: back
                # off like any temporary failure, and in the end bounce.
                reply = "451 4.3.0 the queued message file is missing"
                record(entry.id, [RcptResult(r, "temporary", reply) for r in rcpts])
                finished((entry.id, domain))
                continue
            taken += 1
            item = Outgoing(domain, entry.mail_from, rcpts, message)
            current[id(item)] = ((entry.id, domain), item)
            return item
        return None

    def done(item: Outgoing, results: list[RcptResult] | None) -> None:
        key, _ = current.pop(id(item))
        if results is not None:
            record(key[0], results)
        finished(key)  # given back unattempted (None): due again at once

    try:
        send(take, done)
    except Exception:
        for key, _ in current.values():
            bug(key)
            finished(key)


class GroupSync:
    """Shared fsyncs of one directory; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cond = threading.Condition()
        self._begun = 0  # fsyncs started
        self._done = 0  # the newest finished one
        self._running = False
        self.fsyncs = 0  # observed, for tests

    def sync(self) -> None:
        with self._cond:
            wanted = self._begun + 1  # one that starts from now on: it sees our change
            while self._done < wanted:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._begun += 1
                ticket = self._begun
                self._cond.release()
                try:
                    fsync_dir(self.path)
                except BaseException:
                    self._cond.acquire()
                    self._running = False
                    self._cond.notify_all()  # a waiter tries its own
                    raise
                self._cond.acquire()
                self._running = False
                self._done = ticket
                self.fsyncs += 1
                self._cond.notify_all()
