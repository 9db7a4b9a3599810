"""Recent deliveries and rejections for the admin page, from every `serve` process.

The events are the log records that delivery and SMTP already write (one INFO line per SMTP
transaction, per refused MAIL/RCPT, per local delivery of queued mail, per outbound result), so
the SMTP receive path gains no call of its own. `record_events` puts a logging handler on the
`mailstack` logger of a process: the main process (app.serve) and each SMTP worker
(mailstack.workers.child) install one, so port-25 sessions served by workers are listed too.

The handler only appends to a list in memory; a timer thread writes what gathered, at most once
per FLUSH_S, in one transaction to `events.sqlite3` in the state directory (WAL,
synchronous=NORMAL: no fsync per write, one at a WAL checkpoint), and trims it to the newest
KEEP_ROWS rows of the last KEEP_DAYS days. Every process writes the one file (SQLite's locking,
a busy timeout), so the list survives a restart of `serve`. A crash can lose the last FLUSH_S of
events: this is a view for people, not the mail log (stderr/journal stays the record).
Events follow the log level: with `[log] level = "WARNING"` nothing is recorded.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

MAX_EVENTS = 50  # shown on the admin page
KEEP_ROWS = 1000  # kept on disk: enough for a day of a small server, a few hundred KB
KEEP_DAYS = 30
FLUSH_S = 1.0  # the longest an event waits in memory before it is written
MAX_PENDING = 10_000  # a stuck database must not grow memory: newer events are dropped
BUSY_TIMEOUT_S = 5.0  # another process is writing its batch (a few ms)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL
);
"""

# Which log lines are events, by the logger's message template (the lines' wording is theirs):
# an SMTP transaction's one line (smtp/session.py), a refused MAIL or RCPT, local delivery of
# queued mail, an outbound attempt's result per recipient (delivery/queue.py).
_TRANSACTION = "result=%s"
_KINDS = (
    ("mailstack.smtp", _TRANSACTION, "delivered"),  # or "rejected": see _kind
    ("mailstack.smtp", "refused", "rejected"),
    ("mailstack.delivery.local", "local delivery:", "delivered"),
    ("mailstack.delivery.queue", "queue: %s: %s %s: %s", "outbound"),
)


@dataclass(frozen=True, slots=True)
class Event:
    time: float  # seconds since the epoch
    kind: str  # delivered | rejected | outbound
    text: str


Row = tuple[float, str, str]  # (time, kind, text): what is pending (cheaper than an Event)


def event_of(record: logging.LogRecord) -> Row | None:
    """The event a log record tells of, or None (most records: a cheap prefix test)."""
    if not record.name.startswith(("mailstack.smtp", "mailstack.delivery.")):
        return None
    template = str(record.msg)
    for prefix, needle, kind in _KINDS:
        if record.name.startswith(prefix) and needle in template:
            try:
                text = record.getMessage()
            except (TypeError, ValueError):  # a malformed record: skip it, never raise
                return None
            args = record.args if isinstance(record.args, tuple) else ()
            if needle == _TRANSACTION and not (args and str(args[-1]).startswith("2")):
                kind = "rejected"  # the reply to DATA (the last argument) was 4xx/5xx
            return (record.created or time.time(), kind, text)
    return None


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():  # addresses of senders and recipients: not for everyone
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    # Any thread: the timer threads take turns (EventRecorder._writing serialises them).
    return open_shared(path, _setup, timeout_s=BUSY_TIMEOUT_S, check_same_thread=False)


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)


def _same_file(path: Path, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


class EventRecorder(logging.Handler):
    """Collects this process's events and writes them to `path` in batches."""

    def __init__(
        self,
        path: Path,
        *,
        flush_s: float = FLUSH_S,
        keep_rows: int = KEEP_ROWS,
        keep_days: float = KEEP_DAYS,
    ) -> None:
        super().__init__(logging.INFO)
        self.path = path
        self.flush_s = flush_s
        self.keep_rows = keep_rows
        self.keep_days = keep_days
        self._pending: list[Row] = []
        self._guard = threading.Lock()  # _pending and _timer (the timer thread swaps them)
        self._writing = threading.Lock()  # one batch at a time over the one connection
        self._timer: threading.Timer | None = None
        self._db: sqlite3.Connection | None = None
        self._inode = 0  # of the file self._db has open
        self._closed = False
        self._failing = False  # warned about a write failure: once until a write succeeds

    def emit(self, record: logging.LogRecord) -> None:
        event = event_of(record)
        if event is None:
            return
        with self._guard:
            if self._closed or len(self._pending) >= MAX_PENDING:
                return
            self._pending.append(event)
            if self._timer is None:
                self._timer = threading.Timer(self.flush_s, self.flush)
                self._timer.daemon = True  # close() writes the rest at a clean exit
                self._timer.start()

    def flush(self) -> None:
        """Write what gathered, in one transaction, and trim the table."""
        with self._writing:
            with self._guard:
                batch, self._pending = self._pending, []
                self._timer = None
            if not batch:
                return
            try:
                self._write(batch)
            except (sqlite3.Error, OSError) as exc:
                if not self._failing:
                    # Under this module's name, which is no event: no loop back to here.
                    log.warning("recent events: cannot write %s: %s", self.path, exc)
                self._failing = True
            else:
                self._failing = False

    def _write(self, batch: list[Row]) -> None:
        if self._db is not None and not _same_file(self.path, self._inode):
            # Deleted or replaced meanwhile (README: safe to delete): write to the new file,
            # not on into the unlinked one nobody reads.
            self._db.close()
            self._db = None
        if self._db is None:
            self._db = _connect(self.path)
            self._inode = os.stat(self.path).st_ino
        db = self._db
        cutoff = time.time() - self.keep_days * 86400
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("INSERT INTO events (time, kind, text) VALUES (?, ?, ?)", batch)
            # Bounded: the newest keep_rows rows (ids grow with time) of the last keep_days.
            db.execute(
                "DELETE FROM events WHERE id <= (SELECT max(id) FROM events) - ? OR time < ?",
                (self.keep_rows, cutoff),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._guard:
            self._closed = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        self.flush()  # what emit() took before the close
        with self._writing:
            if self._db is not None:
                self._db.close()
                self._db = None
        super().close()


_recorders: list[EventRecorder] = []  # this process's (one in serve; tests may start more)


def record_events(path: Path) -> EventRecorder:
    """Start recording this process's events into `path` (events.sqlite3)."""
    recorder = EventRecorder(path)
    logging.getLogger("mailstack").addHandler(recorder)
    _recorders.append(recorder)
    return recorder


def stop_recording(recorder: EventRecorder) -> None:
    """Write what is pending and stop (serve's and a worker's last step)."""
    logging.getLogger("mailstack").removeHandler(recorder)
    if recorder in _recorders:
        _recorders.remove(recorder)
    recorder.close()


def latest(path: Path, limit: int = MAX_EVENTS) -> list[Event]:
    """The newest events of every process, newest first. This process's pending ones are
    written first, so a page shows what just happened here; other processes' within FLUSH_S.
    Blocking (SQLite): call it in a thread."""
    for recorder in list(_recorders):
        if recorder.path == path:
            recorder.flush()
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error:
        return []
    try:
        rows = db.execute(
            "SELECT time, kind, text FROM events ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
    except sqlite3.Error as exc:
        log.warning("recent events: cannot read %s: %s", path, exc)
        return []
    finally:
        db.close()
    return [Event(float(t), str(k), str(x)) for t, k, x in rows]
