"""The message-structure cache: parsed FETCH items kept on disk, so a folder is parsed once.

Clients fetch ENVELOPE and BODYSTRUCTURE of every message each time they open a folder
(Thunderbird, mutt with header caching off, offlineimap). Parsing means reading each file, so
without a cache a 10,000-message folder is read in full on every open. Dovecot keeps these in
`dovecot.index.cache`; we keep them in one SQLite file per account,
`<Maildir root>/mailstack.cache.sqlite3` (mode 0600). Dovecot ignores it (not a folder: no
leading dot; not one of its own file names).

Keys are Maildir base names (the unique name without ":2,..." info): unique per message within
the account, and unchanged by flag renames and by moves between folders, so a row stays valid
for the message's whole life. Values are opaque text (the IMAP layer's `Structure.to_json()`):
this module knows nothing of IMAP. Each row also records the message's RFC822.SIZE; a lookup
with a different size is treated as a miss (a file replaced under the same name, or a cache
copied in from another Maildir).

The cache is never trusted over the message file and never required:
- a missing, unreadable or corrupt database is set aside and rebuilt empty (`_open`);
- every failure to read or write (locked by another process too long, disk full, read-only
  file system) is logged at DEBUG and treated as a miss or a skipped write;
- a value the caller cannot decode is reported with `forget()` and recomputed.

Thread safety: one `StructureCache` per account and process, shared by sessions; calls run in
worker threads and are serialised by a lock (SQLite connections are not shared across threads
unlocked). Several processes may use the same file: SQLite's own locking, WAL mode.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mailstack.base.parallel import PerProcess
from mailstack.base.sqlite_files import open_shared

CacheRow = tuple[str, int, str]  # (key, the message's RFC822.SIZE as stored, value)

log = logging.getLogger(__name__)

CACHE_FILE = "mailstack.cache.sqlite3"
FILE_MODE = 0o600
BUSY_TIMEOUT_MS = 200  # a cache may skip a write rather than stall a FETCH behind a writer
SCHEMA_VERSION = 1
_BATCH = 500  # keys per SELECT: stays below SQLite's default 999-variable limit
# Accounts whose cache stays open per process, least recently used dropped first: each holds
# an SQLite connection (about 150 KB resident), too much for 1,000 accounts (issue 11).
MAX_OPEN_CACHES = 128


def _setup(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise sqlite3.DatabaseError(f"unknown cache schema {version}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # a lost tail is only a cache miss
    db.execute(
        "CREATE TABLE IF NOT EXISTS structure ("
        " key TEXT PRIMARY KEY, size INTEGER NOT NULL, value TEXT NOT NULL)"
    )
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("SELECT key FROM structure LIMIT 1").fetchall()  # corrupt: raises


class StructureCache:
    """Per-account cache of (base name -> size, text); see the module docstring."""

    def __init__(self, maildir_root: Path) -> None:
        self.path = maildir_root / CACHE_FILE
        _CACHES.register(str(maildir_root), self)
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False  # could not open even after a rebuild: stay a no-op cache
        self.is_pruned = False  # set by the first user that prunes (once per process)

    # -- connection ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        try:
            self._db = self._open()
        except (sqlite3.Error, OSError) as exc:
            log.info("structure cache %s unusable, rebuilding: %s", self.path, exc)
            self._set_aside()
            try:
                self._db = self._open()
            except (sqlite3.Error, OSError) as exc2:
                log.warning("structure cache %s disabled: %s", self.path, exc2)
                self._broken = True
        return self._db

    def _open(self) -> sqlite3.Connection:
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"no Maildir at {self.path.parent}")
        # Create it 0600 ourselves: sqlite3 would use the umask.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        return open_shared(
            self.path, _setup, timeout_s=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )

    def _set_aside(self) -> None:
        """Remove an unusable database (and its WAL files): it only ever held a cache."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(f"{self.path}{suffix}")

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        log.debug("structure cache %s: %s failed: %s", self.path, what, exc)
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            # Corrupt under us (e.g. truncated by hand): start over on the next call.
            with contextlib.suppress(sqlite3.Error):
                if self._db is not None:
                    self._db.close()
            self._db = None
            self._set_aside()

    # -- reading and writing -------------------------------------------------------------------
    def get_many(self, wanted: Sequence[tuple[str, int]]) -> dict[str, str]:
        """Cached values for (key, size) pairs whose recorded size matches; misses absent."""
        out: dict[str, str] = {}
        if not wanted:
            return out
        sizes = dict(wanted)
        with self._lock:
            db = self._connect()
            if db is None:
                return out
            keys = list(sizes)
            try:
                for start in range(0, len(keys), _BATCH):
                    chunk = keys[start : start + _BATCH]
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(
                        f"SELECT key, size, value FROM structure WHERE key IN ({marks})",  # noqa: S608 - only "?" marks
                        chunk,
                    )
                    for key, size, value in rows:
                        if sizes.get(key) == size and isinstance(value, str):
                            out[key] = value
            except sqlite3.Error as exc:
                self._failed("read", exc)
        return out

    def put_many(self, rows: Iterable[CacheRow]) -> None:
        """Store (key, size, value) rows, replacing older ones; best effort."""
        self._write_many(
            "write",
            "INSERT OR REPLACE INTO structure (key, size, value) VALUES (?, ?, ?)",
            list(rows),
        )

    def writer(self) -> Callable[[Sequence[CacheRow]], None]:
        """`put_many` as a function any process can call (it pickles): see
        HeaderTable.writer."""
        return functools.partial(put_rows, str(self.path.parent))

    def copy_rows(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Give copies their originals' rows: (source key, copy key) pairs (IMAP COPY/MOVE
        write new files with new names but the same bytes)."""
        self._write_many(
            "copy",
            "INSERT OR REPLACE INTO structure (key, size, value)"
            " SELECT ?, size, value FROM structure WHERE key = ?",
            [(dst, src) for src, dst in pairs if src != dst],
        )

    def forget(self, keys: Iterable[str]) -> None:
        """Drop rows the caller found unusable (it recomputes and `put_many`s them)."""
        self._write_many("forget", "DELETE FROM structure WHERE key = ?", [(k,) for k in keys])

    def _write_many(self, what: str, sql: str, batch: list[tuple[object, ...]]) -> None:
        """`sql` once per row of `batch`, in one transaction; best effort (see `_failed`)."""
        if not batch:
            return
        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                with db:  # one transaction
                    db.execute("BEGIN")
                    db.executemany(sql, batch)
            except sqlite3.Error as exc:
                self._failed(what, exc)

    def prune(self, live_keys: Iterable[str]) -> int:
        """Delete rows for messages that no longer exist anywhere in the account.

        `live_keys` must be every base name in every folder (a move keeps its base name, so
        pruning per folder would drop rows of messages moved elsewhere). A key
        `<base name>:<what>` (imap/downgrade_size.py) lives as long as its base name.
        Returns rows deleted.
        """
        live = set(live_keys)
        with self._lock:
            db = self._connect()
            if db is None:
                return 0
            try:
                stale = [
                    (k,)
                    for (k,) in db.execute("SELECT key FROM structure")
                    if k.split(":", 1)[0] not in live
                ]
                if stale:
                    with db:
                        db.execute("BEGIN")
                        db.executemany("DELETE FROM structure WHERE key = ?", stale)
            except sqlite3.Error as exc:
                self._failed("prune", exc)
                return 0
        return len(stale)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db = None

    def __del__(self) -> None:
        # Dropped by StructureCaches' LRU and no longer used: close now (an unclosed
        # sqlite3.Connection waits for a full garbage collection, its own reference cycle).
        self.close()


_CACHES = PerProcess(lambda maildir_root: StructureCache(Path(maildir_root)))


def put_rows(maildir_root: str, rows: Sequence[CacheRow]) -> None:
    """`StructureCache.put_many` on the account's cache (`StructureCache.writer`)."""
    _CACHES.get(maildir_root).put_many(rows)


class StructureCaches:
    """One `StructureCache` per account root, shared by every session of the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._caches: OrderedDict[Path, StructureCache] = OrderedDict()  # LRU
        # Roots pruned by this process: the mark outlives a cache closed by the LRU, or
        # every session of 1,000 accounts would prune again (each a look at every folder).
        self._pruned: set[Path] = set()

    def for_root(self, maildir_root: Path) -> StructureCache:
        with self._lock:
            cache = self._caches.get(maildir_root)
            if cache is None:
                cache = self._caches[maildir_root] = StructureCache(maildir_root)
                cache.is_pruned = maildir_root in self._pruned
                while len(self._caches) > MAX_OPEN_CACHES:
                    _, dropped = self._caches.popitem(last=False)  # closed once unused
                    if dropped.is_pruned:
                        self._pruned.add(dropped.path.parent)
            else:
                self._caches.move_to_end(maildir_root)
            return cache

    def close(self) -> None:
        with self._lock:
            caches, self._caches = list(self._caches.values()), OrderedDict()
        for cache in caches:
            cache.close()
