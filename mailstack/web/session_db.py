"""The web logins on disk (`web-sessions.sqlite3`), so that a restart of `serve` logs no one out.

Only logged-in sessions are kept (a visitor's login-form session is cheap to make again, and a
flood of page loads must not become a flood of writes). Each row is keyed by the SHA-256 of the
cookie's token, as in memory: a copy of the file gives no cookie to replay. The row also holds
the CSRF token, the role, the times that decide expiry, and the account's credential stamp
(mailstack.base.users.Accounts.credential_stamp) so that `user passwd` ends the login even
across a restart. Writes are a login, a logout, a password change and at most one "last seen"
update per session per TOUCH_S; WAL with synchronous=NORMAL (no fsync per write: a power cut
may forget a recent login, which then logs in again). One connection, shared by the event loop
and the admin page's worker threads under a lock. A failing database is logged and the
sessions live on in memory: the pages never fail because of this file.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

TOUCH_S = 60.0  # how stale a stored "last seen" may get (the idle expiry is 30 minutes)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key BLOB PRIMARY KEY,          -- SHA-256 of the cookie's token, never the token
    csrf TEXT NOT NULL,
    address TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    created REAL NOT NULL,         -- seconds since the epoch
    last_seen REAL NOT NULL,
    stamp TEXT NOT NULL            -- the account's credential stamp at login
);
CREATE INDEX IF NOT EXISTS sessions_address ON sessions (address);
"""

# (key, csrf, address, is_admin, created, last_seen, stamp)
Row = tuple[bytes, str, str, bool, float, float, str]


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)


class SessionDb:
    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():  # what the CSRF tokens and logins are: for mailstack only
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._lock = threading.Lock()
        self._db = open_shared(path, _setup, timeout_s=5, check_same_thread=False)

    def _run(self, sql: str, params: Any = (), *, many: bool = False) -> None:
        with self._lock:
            try:
                if many:
                    self._db.executemany(sql, params)
                else:
                    self._db.execute(sql, tuple(params))
            except sqlite3.Error as exc:
                log.warning("web sessions: cannot write %s: %s", self.path, exc)

    def load(self, oldest_created: float, oldest_seen: float) -> list[Row]:
        """The stored sessions not yet expired; the expired ones are deleted."""
        with self._lock:
            try:
                self._db.execute(
                    "DELETE FROM sessions WHERE created < ? OR last_seen < ?",
                    (oldest_created, oldest_seen),
                )
                rows = self._db.execute(
                    "SELECT key, csrf, address, is_admin, created, last_seen, stamp FROM sessions"
                ).fetchall()
            except sqlite3.Error as exc:
                log.warning("web sessions: cannot read %s: %s; starting without", self.path, exc)
                return []
        return [(bytes(r[0]), r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

    def save(self, row: Row) -> None:
        self._run("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def touch(self, key: bytes, last_seen: float) -> None:
        self._run("UPDATE sessions SET last_seen=? WHERE key=?", (last_seen, key))

    def restamp(self, key: bytes, stamp: str) -> None:
        self._run("UPDATE sessions SET stamp=? WHERE key=?", (stamp, key))

    def delete(self, keys: Iterable[bytes]) -> None:
        self._run("DELETE FROM sessions WHERE key=?", [(k,) for k in keys], many=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()
