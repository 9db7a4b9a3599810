"""The durable outbound queue: mail for other domains waits here until delivered or bounced.

Layout under `paths.queue_dir` (INTERFACE.md `queue/`):

    msg/<id>           the message as it will be sent (DKIM-signed at enqueue), never changed
    state/<id>.json    envelope and per-recipient state (pending/delivered/failed, attempts,
                       next attempt time, last reply); replaced atomically on every change
    lock               flock(2)ed around every read-modify-write of a state file
    wakeup             touched by other processes (`mailstack queue flush|delete`); the runner
                       stats it every RESCAN_S seconds and rescans the spool when it changed

Durability and crash safety: `enqueue` writes msg/<id> (fsync file, rename, fsync dir), then
state/<id>.json the same way, and returns only then, so a 250 given after it is never lost.
A message file without a state file is an enqueue that crashed before it returned (nobody was
told 250): the runner removes it after ORPHAN_S and never sends it. A recipient's state changes
only after the remote server answered, so a crash during an attempt leaves it pending and it is
sent again (at-least-once: the duplicate RFC 1047 describes, preferred to a loss); recipients
already recorded delivered are never sent again. A DSN is enqueued before the state that
triggers it is written (a crash in between can repeat a DSN, never lose one). The temporary
files of writes a crash cut short go after ORPHAN_S too. tests/delivery/test_queue_kill.py
proves all of it with SIGKILLs at random points.

Retry schedule (RFC 5321 §4.5.4.1: retry intervals "SHOULD be at least 30 minutes", give-up
"SHOULD be at least 4-5 days"): SCHEDULE_S below, then every 4 hours, until GIVE_UP_S (5 days)
after arrival. Deviation from §4.5.4.1: the first retries come after 1, 5 and 15 minutes,
because most temporary failures today are greylisting, which lifts after a few minutes; the
interval reaches the RFC's 30 minutes from the fourth retry on. Deviation from §4.5.4.1's
"parameters ... MUST be configurable": they are constants here, by design (nothing for an
admin to get wrong); change them in this module. A sender is warned once with
a "delayed" DSN after DELAY_WARN_S (RFC 3464 Action: delayed), and gets a "failed" DSN when a
recipient fails permanently or we give up. Never a DSN to the null sender `<>`.

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
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import fcntl
import functools
import logging
import os
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mailstack.delivery import dkim, remote
from mailstack.delivery.dsn import DsnRecipient, build_dsn, needs_dsn
from mailstack.delivery.queue_runner import MAX_ATTEMPTS as MAX_ATTEMPTS
from mailstack.delivery.queue_runner import MAX_PER_CONNECTION as MAX_PER_CONNECTION
from mailstack.delivery.queue_runner import (
    MAX_PER_DOMAIN,
    MAX_PER_RELAY,
    Deliver,
    Group,
    GroupSync,
    Key,
    LocalDeliver,
    RunnerState,
    Send,
    deliver_locally,
    each,
    send_connection,
)
from mailstack.delivery.queue_runner import local_delivery as local_delivery
from mailstack.delivery.queue_state import (
    Entry,
    Recipient,
)
from mailstack.delivery.remote import RcptResult
from mailstack.delivery.routes import RouteError, route_for
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import Config, to_ascii_domain
from mailstack.base.errors import NotFoundError, UsageError
from mailstack.base.fsutil import atomic_write, ensure_dir
from mailstack.base.paths import StatePaths

log = logging.getLogger(__name__)

SCHEDULE_S: tuple[int, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)  # delay after attempt n
GIVE_UP_S = 5 * 24 * 3600  # RFC 5321 §4.5.4.1: "at least 4-5 days"
DELAY_WARN_S = 4 * 3600  # RFC 3464 leaves it to us: the sender hears the same working day
RESCAN_S = 1.0  # how often the runner stats `wakeup` for changes made by other processes
ORPHAN_S = 3600.0  # a message file this old without state is a crashed enqueue
STOP_GRACE_S = 10.0  # on stop, attempts in flight may finish this long, then are cut off

_ID = re.compile(r"[0-9a-f]{20}")
_BAD_ADDRESS = re.compile(r"[\x00\r\n]")


def domain_of(address: str) -> str:
    """The recipient's domain in ASCII (IDNA) form, as config and DNS use it."""
    domain = address.rpartition("@")[2]
    try:
        return to_ascii_domain(domain)
    except UnicodeError:
        return domain.lower()  # not a valid IDN: the MX lookup will say so


def retry_delay_s(attempts: int) -> int:
    """Seconds to wait after the `attempts`-th failed attempt (1-based)."""
    return SCHEDULE_S[min(max(attempts, 1), len(SCHEDULE_S)) - 1]


_After = list[Callable[[], None]]


def _soon(loop: asyncio.AbstractEventLoop, fn: Callable[[Key], None], key: Key) -> None:
    loop.call_soon_threadsafe(fn, key)


class OutboundQueue:
    """The spool in `paths.queue_dir`. Blocking methods (enqueue, list, delete, flush) touch
    only the disk; `run`/`run_once` are the async runner."""

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
        self.config = config
        self.paths = paths
        self.root = paths.queue_dir
        self._hosted = hosted_domains or (lambda: config.server.domains)
        self.clock = clock
        self._deliver = deliver
        self._local = local
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = RunnerState()
        self._abort = remote.Abort()
        # qid -> ((inode, size, mtime_ns) of its state file, the parsed Entry): see list()
        self._cache: dict[str, tuple[tuple[int, int, int], Entry]] = {}
        self._cache_lock = threading.Lock()
        self._dir_syncs: dict[Path, GroupSync] = {}
        self.stop_grace_s = STOP_GRACE_S
        # MTA-STS policy cache and TLS-RPT counts, kept in the spool (delivery/security.py)
        self.security = OutboundSecurity(self.root)

    # -- paths and locking -------------------------------------------------------------------

    def _msg(self, qid: str) -> Path:
        return self.root / "msg" / qid

    def _state(self, qid: str) -> Path:
        return self.root / "state" / f"{qid}.json"

    def _ensure(self) -> None:
        for sub in ("msg", "state"):
            if not (self.root / sub).is_dir():
                ensure_dir(self.root / sub, mode=0o700)
                self._match_owner(self.root / sub)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._match_owner(self.root / "lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write(self, path: Path, data: bytes | str, after: _After | None = None) -> None:
        """Durably replace `path`; with `after`, the directory's fsync is left to the caller,
        to run once it released the lock (fsyncs under the lock could never be shared)."""

        def sync(directory: Path) -> None:
            if after is None:
                self._sync_dir(directory)
            else:
                after.append(functools.partial(self._sync_dir, directory))

        atomic_write(path, data, mode=0o600, sync_dir=sync)
        self._match_owner(path)

    def _sync_dir(self, path: Path) -> None:
        with self._cache_lock:
            syncer = self._dir_syncs.setdefault(path, GroupSync(path))
        syncer.sync()

    def _match_owner(self, path: Path) -> None:
        """Root running `mailstack queue ...` on a spool that `serve` runs as another user
        owns: what root creates must stay readable and writable for that user."""
        if os.geteuid() != 0:
            return
        owner = self.root.stat()
        try:
            st = path.stat()
            if (st.st_uid, st.st_gid) != (owner.st_uid, owner.st_gid):
                os.chown(path, owner.st_uid, owner.st_gid)
        except FileNotFoundError:
            pass  # a state file the runner delivered and removed while enqueue fsynced it

    def _touch_wakeup(self) -> None:
        self._ensure()
        path = self.root / "wakeup"
        path.touch()
        os.utime(path)
        self._match_owner(path)

    def _check_id(self, qid: str) -> str:
        if not _ID.fullmatch(qid):
            raise NotFoundError(f"no queued message with id {qid!r}")
        return qid

    # -- the blocking API --------------------------------------------------------------------

    def enqueue(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        message: bytes,
        *,
        sign: bool = True,
        user: str = "",
    ) -> str:
        """Make the message durable in the queue and return its id (then 250 may be said).

        Signs with DKIM for the From: domain when hosted (see delivery.dkim). `user`: the
        authenticated account that submitted it ("" for forwarded mail and DSNs). Blocking.
        """
        if not rcpts:
            raise UsageError("a queued message needs at least one recipient")
        for address in (mail_from, *rcpts):
            # What goes into MAIL FROM:<...>/RCPT TO:<...> must not end or split the command.
            if _BAD_ADDRESS.search(address) or (address is not mail_from and not address):
                raise UsageError(f"not a mailbox address: {address!r}")
        if sign:
            message = dkim.sign(
                message,
                paths=self.paths,
                selector=self.config.dkim.selector,
                hosted_domains=set(self._hosted()),
            )
        self._ensure()
        now = self.clock()
        qid = f"{int(now) & 0xFFFFFFFF:08x}{secrets.token_hex(6)}"  # sorts by time, mostly
        entry = Entry(
            id=qid,
            mail_from=mail_from,
            created=now,
            size=len(message),
            user=user,
            recipients=tuple(Recipient(r, next_attempt=now) for r in dict.fromkeys(rcpts)),
        )
        self._write(self._msg(qid), message)
        self._write(self._state(qid), entry.to_json())  # now it exists
        log.info(
            "queue: %s from <%s>%s to %s, %d bytes",
            qid,
            mail_from,
            f" (user {user})" if user else "",
            ", ".join(r.address for r in entry.recipients),
            len(message),
        )
        self.wake()
        return qid

    def _read(self, qid: str) -> Entry | None:
        try:
            text = self._state(qid).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return Entry.from_json(text)

    def get(self, qid: str) -> Entry:
        entry = self._read(self._check_id(qid))
        if entry is None:
            raise NotFoundError(f"no queued message with id {qid!r}")
        return entry

    def message(self, qid: str) -> bytes:
        return self._msg(self._check_id(qid)).read_bytes()

    def list(self) -> builtins.list[Entry]:
        """Every queued message (corrupt state files are logged and skipped), oldest first.

        The runner calls this after every attempt, so a parse per file per call made a burst
        of N messages cost N² file reads. State files are only ever replaced whole (a new
        inode), so a file whose (inode, size, mtime) is unchanged is taken from memory."""
        entries: builtins.list[Entry] = []
        state_dir = self.root / "state"
        seen: set[str] = set()
        try:
            listing = builtins.list(os.scandir(state_dir))
        except FileNotFoundError:
            return []
        for item in listing:
            if not item.name.endswith(".json") or item.name.startswith("."):
                continue
            qid = item.name[: -len(".json")]
            try:
                st = item.stat()
                stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                with self._cache_lock:
                    cached = self._cache.get(qid)
                entry = cached[1] if cached is not None and cached[0] == stamp else self._read(qid)
            except FileNotFoundError:
                continue  # delivered and removed since the directory was listed
            except (ValueError, OSError) as exc:
                log.error("queue: skipping unreadable %s: %s", item.path, exc)
                continue
            if entry is not None:
                seen.add(qid)
                with self._cache_lock:
                    self._cache[qid] = (stamp, entry)
                entries.append(entry)
        with self._cache_lock:
            for gone in set(self._cache) - seen:
                del self._cache[gone]
        return sorted(entries, key=lambda e: (e.created, e.id))

    def delete(self, qid: str) -> None:
        """Remove a message from the queue (an attempt in flight may still complete)."""
        self._check_id(qid)
        with self._locked():
            if not self._state(qid).exists():
                raise NotFoundError(f"no queued message with id {qid!r}")
            self._remove(qid)
        self._touch_wakeup()
        log.info("queue: %s deleted", qid)

    def _remove(self, qid: str, after: _After | None = None) -> None:
        # State first: without it the message is an orphan that is never sent.
        with contextlib.suppress(FileNotFoundError):
            self._state(qid).unlink()

        def finish() -> None:
            self._sync_dir(self.root / "state")
            with contextlib.suppress(FileNotFoundError):
                self._msg(qid).unlink()

        if after is None:
            finish()
        else:
            after.append(finish)

    def flush(self) -> int:
        """Make every pending recipient due now; returns how many. A running runner sees it
        within RESCAN_S (via `wakeup`). A recipient with an attempt in flight gets that
        attempt's result (and its next retry time) instead."""
        count = 0
        now = self.clock()
        for entry in self.list():
            with self._locked():
                current = self._read(entry.id)
                if current is None:
                    continue
                recipients = tuple(
                    replace(r, next_attempt=now) if r.status == "pending" else r
                    for r in current.recipients
                )
                count += sum(r.status == "pending" for r in recipients)
                self._write(
                    self._state(entry.id), replace(current, recipients=recipients).to_json()
                )
        self._touch_wakeup()
        self.wake()
        return count

    def remove_orphans(self) -> builtins.list[str]:
        """Delete message files whose enqueue never finished (no state after ORPHAN_S), and
        the temporary files of writes a crash cut short (`.<name>.<random>.tmp`, as old)."""
        removed: builtins.list[str] = []
        msg_dir = self.root / "msg"
        if not msg_dir.is_dir():
            return removed
        now = time.time()  # file ages are wall-clock, whatever clock the runner uses
        with self._locked():
            for path in [*msg_dir.glob(".*.tmp"), *(self.root / "state").glob(".*.tmp")]:
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= ORPHAN_S:  # else: a write in progress
                        path.unlink()
                        log.warning("queue: removed %s, left by a write that never finished", path)
            for path in msg_dir.iterdir():
                if path.name.startswith(".") or self._state(path.name).exists():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= ORPHAN_S:
                        path.unlink()
                        removed.append(path.name)
                        log.warning("queue: removed %s, an enqueue that never finished", path.name)
        return removed

    # -- applying an attempt's results ---------------------------------------------------------

    def record(self, qid: str, results: Sequence[RcptResult]) -> Entry | None:
        """Write what an attempt found (and bounce or warn as needed); None if deleted."""
        now = self.clock()
        after: _After = []  # durability steps that need not hold the lock
        with self._locked():
            entry = self._read(qid)
            if entry is None:
                return None
            by_address = {r.address: r for r in results}
            failed: builtins.list[DsnRecipient] = []
            delayed: builtins.list[DsnRecipient] = []
            recipients: builtins.list[Recipient] = []
            for rcpt in entry.recipients:
                result = by_address.get(rcpt.address)
                if result is None or rcpt.status != "pending":
                    recipients.append(rcpt)
                    continue
                new = replace(
                    rcpt,
                    attempts=rcpt.attempts + 1,
                    last_reply=result.reply,
                    remote_mta=result.remote_mta,
                )
                if result.kind == "delivered":
                    new = replace(new, status="delivered")
                elif result.kind == "permanent":
                    new = replace(new, status="failed")
                    failed.append(
                        DsnRecipient(rcpt.address, "failed", result.reply, result.remote_mta)
                    )
                elif now - entry.created >= GIVE_UP_S:
                    reply = result.reply
                    new = replace(
                        new,
                        status="failed",
                        last_reply=f"{reply} (gave up after {GIVE_UP_S // 86400} days)",
                    )
                    failed.append(
                        DsnRecipient(rcpt.address, "failed", new.last_reply, result.remote_mta)
                    )
                else:
                    new = replace(new, next_attempt=now + retry_delay_s(new.attempts))
                    if not rcpt.warned and now - entry.created >= DELAY_WARN_S:
                        new = replace(new, warned=True)
                        delayed.append(
                            DsnRecipient(rcpt.address, "delayed", result.reply, result.remote_mta)
                        )
                recipients.append(new)
            updated = replace(entry, recipients=tuple(recipients))
            for group in (failed, delayed):
                if group:
                    self._notify(updated, group, now)  # before the state: never lose a DSN
            if updated.is_done:
                self._remove(qid, after)
            else:
                self._write(self._state(qid), updated.to_json(), after)
        for step in after:
            step()  # before returning: what the caller does next relies on it being durable
        for r in updated.recipients:
            if r.address in by_address and r.status == "pending":
                log.info(
                    "queue: %s: %s deferred (attempt %d), next in %.0fs: %s",
                    qid,
                    r.address,
                    r.attempts,
                    r.next_attempt - now,
                    r.last_reply,
                )
            elif r.address in by_address:
                log.info("queue: %s: %s %s: %s", qid, r.address, r.status, r.last_reply)
        return updated

    def _notify(self, entry: Entry, recipients: builtins.list[DsnRecipient], now: float) -> None:
        if not needs_dsn(entry.mail_from):
            log.info("queue: %s: no DSN for the null sender", entry.id)
            return
        try:
            original = self._msg(entry.id).read_bytes()
        except FileNotFoundError:
            original = b""
        primary = self.config.server.domains[0]
        dsn = build_dsn(
            reporting_mta=self.config.server.hostname,
            from_address=f"MAILER-DAEMON@{primary}",
            to=entry.mail_from,
            original=original,
            recipients=recipients,
            arrival=datetime.fromtimestamp(entry.created, UTC),
            now=datetime.fromtimestamp(now, UTC),
        )
        # RFC 5321 §4.5.5: a DSN's reverse-path is null, so it can never bounce back.
        qid = self.enqueue("", [entry.mail_from], dsn)
        log.info(
            "queue: %s: %s DSN to <%s> queued as %s",
            entry.id,
            recipients[0].action,
            entry.mail_from,
            qid,
        )

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
        self._abort = remote.Abort()
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
