"""Storage of IMAP METADATA entries (RFC 5464): settings clients keep on the server.

One SQLite file per account, `<Maildir root>/mailstack.metadata.sqlite3` (0600), rows keyed by
(mailbox, entry): mailbox "" holds server entries, otherwise the account's own name for the
folder. Entry names are stored lower-case (RFC 5464 §3.2: they are case-insensitive) with their
`/private` or `/shared` prefix; values are bytes (RFC 5464 values may be binary). Whose file a
row goes to is the IMAP layer's decision: a `/private` entry is always the requesting user's, a
`/shared` entry of a shared folder is its owner's.

Limits, so a client cannot fill the disk through it: a value holds at most `MAX_VALUE` bytes and
an account at most `MAX_ENTRIES` entries per mailbox.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from mailstack.base.sqlite_files import open_shared

FILE_NAME = "mailstack.metadata.sqlite3"
MAX_VALUE = 64 * 1024
MAX_ENTRIES = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    mailbox TEXT NOT NULL,
    entry TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (mailbox, entry)
);
"""


class TooManyError(Exception):
    """RFC 5464 §4.3: NO [METADATA TOOMANY]."""


class TooLargeError(Exception):
    """RFC 5464 §4.3: NO [METADATA MAXSIZE n]."""


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)


class Metadata:
    """The METADATA entries of one account. Thread-safe; several processes may share the file."""

    def __init__(self, maildir: Path) -> None:
        self.path = maildir / FILE_NAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self._db = open_shared(
                self.path, _setup, timeout_s=5, check_same_thread=False, autocommit=False
            )
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def get(self, mailbox: str, entries: Iterable[str], depth: int | None) -> dict[str, bytes]:
        """Values of `entries` (lower-case) and, for depth 1 / None (infinity), their children
        (one level / every level below). Missing entries are simply absent."""
        out: dict[str, bytes] = {}
        with self._lock:
            db = self._conn()
            for entry in entries:
                row = db.execute(
                    "SELECT value FROM entries WHERE mailbox = ? AND entry = ?", (mailbox, entry)
                ).fetchone()
                if row is not None:
                    out[entry] = bytes(row[0])
                if depth == 0:
                    continue
                prefix = entry + "/"
                for name, value in db.execute(
                    "SELECT entry, value FROM entries"
                    " WHERE mailbox = ? AND substr(entry, 1, ?) = ?",
                    (mailbox, len(prefix), prefix),
                ):
                    if depth is None or "/" not in name[len(prefix) :]:
                        out[name] = bytes(value)
        return out

    def set(self, mailbox: str, values: dict[str, bytes | None]) -> None:
        """Set (or, for None, remove) entries, all or nothing."""
        for value in values.values():
            if value is not None and len(value) > MAX_VALUE:
                raise TooLargeError(str(MAX_VALUE))
        with self._lock:
            db = self._conn()
            with db:
                for entry, value in values.items():
                    if value is None:
                        db.execute(
                            "DELETE FROM entries WHERE mailbox = ? AND entry = ?", (mailbox, entry)
                        )
                    else:
                        db.execute(
                            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                            (mailbox, entry, value),
                        )
                (count,) = db.execute(
                    "SELECT COUNT(*) FROM entries WHERE mailbox = ?", (mailbox,)
                ).fetchone()
                if count > MAX_ENTRIES:
                    raise TooManyError(str(MAX_ENTRIES))  # `with db` rolls the whole set back

    def rename(self, old: str, new: str, delimiter: str) -> None:
        """RENAME carries a folder's entries, and its children's, to the new name."""
        with self._lock:
            db = self._conn()
            with db:
                db.execute("UPDATE entries SET mailbox = ? WHERE mailbox = ?", (new, old))
                prefix = old + delimiter
                db.execute(
                    "UPDATE entries SET mailbox = ? || substr(mailbox, ?)"
                    " WHERE substr(mailbox, 1, ?) = ?",
                    (new + delimiter, len(prefix) + 1, len(prefix), prefix),
                )

    def drop(self, mailbox: str) -> None:
        """DELETE of a folder removes its entries (RFC 5464 §3.2)."""
        with self._lock:
            db = self._conn()
            with db:
                db.execute("DELETE FROM entries WHERE mailbox = ?", (mailbox,))
