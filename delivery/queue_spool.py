"""The outbound queue's spool: mail for other domains waits here until delivered or bounced.

Layout under `paths.queue_dir` (INTERFACE.md `queue/`):

    msg/<id>           the message as it will be sent (DKIM-signed at enqueue), never changed
    state/<id>.json    envelope and per-recipient state (pending/delivered/failed, attempts,
                       next attempt time, last reply); replaced atomically on every change
    lock               flock(2)ed around every read-modify-write of a state file
    wakeup             touched by other processes (`mailstack queue flush|delete`); the runner
                       (delivery/queue.py) stats it every RESCAN_S seconds and rescans the
                       spool when it changed

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
"""

from __future__ import annotations

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
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from mailstack.delivery import dkim
from mailstack.delivery.dsn import DsnRecipient, build_dsn, needs_dsn
from mailstack.delivery.queue_runner import GroupSync
from mailstack.delivery.queue_state import Entry, Recipient
from mailstack.delivery.remote_session import RcptResult

from mailstack.base.config import Config, to_ascii_domain
from mailstack.base.errors import NotFoundError, UsageError
from mailstack.base.fsutil import atomic_write, ensure_dir
from mailstack.base.paths import StatePaths

log = logging.getLogger(__name__)

SCHEDULE_S: tuple[int, ...] = (60, 300, 900, 1800, 3600, 7200, 14400)  # delay after attempt n
GIVE_UP_S = 5 * 24 * 3600  # RFC 5321 §4.5.4.1: "at least 4-5 days"
DELAY_WARN_S = 4 * 3600  # RFC 3464 leaves it to us: the sender hears the same working day
ORPHAN_S = 3600.0  # a message file this old without state is a crashed enqueue

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


class Spool:
    """The files in `paths.queue_dir`. Every method is blocking and touches only the disk;
    delivery.queue.OutboundQueue adds the runner that sends what waits here."""

    def __init__(
        self,
        config: Config,
        paths: StatePaths,
        *,
        hosted_domains: Callable[[], Collection[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.paths = paths
        self.root = paths.queue_dir
        self._hosted = hosted_domains or (lambda: config.server.domains)
        self.clock = clock
        # qid -> ((inode, size, mtime_ns) of its state file, the parsed Entry): see list()
        self._cache: dict[str, tuple[tuple[int, int, int], Entry]] = {}
        self._cache_lock = threading.Lock()
        self._dir_syncs: dict[Path, GroupSync] = {}
        self.signer: dkim.RemoteSigner | None = None  # who does the RSA step (delivery.dkim)

    def wake(self) -> None:
        """Tell the runner the spool changed; a spool without a runner has nobody to tell."""

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
                signer=self.signer,
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
