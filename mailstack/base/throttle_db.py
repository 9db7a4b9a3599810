"""The login throttle's state on disk: `DIR/throttle.sqlite3`, so that `mailstack throttle
list` can show what a running `serve` holds and `mailstack throttle clear` can lift it at once.

Why a file: `serve` and the CLI are separate processes, and the state should outlive a restart
(an attacker must not get a fresh budget by waiting for one). Why SQLite in WAL mode: as
users.sqlite3, the CLI reads and writes while `serve` writes, without a daemon or a socket.

`serve` keeps the throttle in memory (mailstack/base/throttle.py; it decides on the event
loop, with no I/O but this file) and writes every changed record through (`save`): a few small
UPSERTs per failed login, no fsync (synchronous=NORMAL in WAL: a crash may lose the last
failures, never corrupt the file). A write that finds the file locked is skipped with a log
line: the memory stays right and the next failure writes the record again. Before each
decision `serve` calls `follow`: `PRAGMA data_version` (shared memory, no file read) tells
whether another connection committed; only then it reads the `generation` that `clear` bumps,
and only if that changed reloads the rows.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from mailstack.base.sqlite_files import open_shared
from mailstack.base.throttle import Key, Kind, LoginThrottle, Record

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS throttle (
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    network TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (kind, account, network)
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# What a write or read may raise that must not fail a login: ValueError is text SQLite cannot
# encode (a lone surrogate in a name).
_DB_ERRORS = (sqlite3.Error, ValueError)
_MAX_AGE_S = 31 * 86400.0  # longer than LoginThrottle.good_s and any sane window_s
_FAILURES = "DELETE FROM throttle WHERE kind != 'good'"


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)


class ThrottleDb:
    """One throttle file; connections per thread (the loop in `serve`, the CLI's own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._seen_version: int | None = None
        self._seen_generation: int | None = None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():  # names and addresses of clients: not for everyone
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            # A short busy timeout: `serve` calls this on its event loop.
            conn = self._local.conn = open_shared(self.path, _setup, timeout_s=0.2)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- serve's side --------------------------------------------------------------------------
    def save(self, key: Key, rec: Record | None) -> None:
        """Write one record through (None: delete it); never raises."""
        kind, account, network = key
        try:
            db = self._conn()
            if rec is None:
                db.execute(
                    "DELETE FROM throttle WHERE kind=? AND account=? AND network=?",
                    (kind.value, account, network),
                )
            else:
                db.execute(
                    "INSERT INTO throttle VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE"
                    " SET failures=excluded.failures, last=excluded.last",
                    (kind.value, account, network, rec.failures, rec.last),
                )
        except _DB_ERRORS as exc:
            log.warning("throttle state not saved to %s: %s", self.path, exc)

    def attach(self, throttle: LoginThrottle) -> None:
        """Write every later change of `throttle` through; the first `follow` loads what an
        earlier run left (lazily: SMTP worker processes build a context but never log in)."""
        throttle.on_change = self.save
        throttle.on_prune = self.prune

    def prune(self, failures_before: float, good_before: float) -> None:
        """Forget what the throttle forgot; never raises."""
        try:
            self._conn().execute(
                "DELETE FROM throttle WHERE (kind != 'good' AND last < ?)"
                " OR (kind = 'good' AND last < ?)",
                (failures_before, good_before),
            )
        except _DB_ERRORS as exc:
            log.warning("throttle state not pruned in %s: %s", self.path, exc)

    def follow(self, throttle: LoginThrottle) -> None:
        """Take a `throttle clear` made since the last call into `throttle`; never raises."""
        try:
            version = self._data_version()
            if version == self._seen_version:
                return
            self._seen_version = version
            generation = self._generation()
            if generation != self._seen_generation:
                first = self._seen_generation is None
                self._seen_generation = generation
                if first:  # rows older than any window are history: drop them
                    self._conn().execute(
                        "DELETE FROM throttle WHERE last < ?", (time.time() - _MAX_AGE_S,)
                    )
                throttle.replace_failures(self.load())
                if not first:
                    log.info("throttle state reloaded after `mailstack throttle clear`")
        except _DB_ERRORS as exc:
            log.warning("throttle state not read from %s: %s", self.path, exc)

    def _data_version(self) -> int:
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])

    def _generation(self) -> int:
        row = self._conn().execute("SELECT value FROM meta WHERE name='generation'").fetchone()
        return int(row[0]) if row else 0

    # -- both sides ----------------------------------------------------------------------------
    def load(self) -> dict[Key, tuple[int, float]]:
        rows = self._conn().execute("SELECT kind, account, network, failures, last FROM throttle")
        out: dict[Key, tuple[int, float]] = {}
        for kind, account, network, failures, last in rows:
            try:
                out[(Kind(kind), str(account), str(network))] = (int(failures), float(last))
            except ValueError:
                continue  # a kind from a newer version: not ours to interpret
        return out

    # -- the CLI's side ------------------------------------------------------------------------
    def clear(self, *, account: str | None = None, networks: list[str] | None = None) -> int:
        """Delete the failure records naming `account` or one of `networks` (neither: all); a
        running `serve` follows before its next login decision. Returns how many went. Which
        networks logged in successfully (the ceiling's exemption) is not a throttle: it stays."""
        if networks is not None and not networks:
            return 0
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            if account is not None:
                cur = db.execute(f"{_FAILURES} AND account=?", (account,))
            elif networks is not None:
                cur = db.executemany(f"{_FAILURES} AND network=?", [(n,) for n in networks])
            else:
                cur = db.execute(_FAILURES)
            db.execute(
                "INSERT INTO meta VALUES ('generation', 1)"
                " ON CONFLICT DO UPDATE SET value = value + 1"
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return cur.rowcount
