"""The persistent folder index: MODSEQs, HIGHESTMODSEQ and the expunge log (RFC 7162).

Design
------
Maildir and `dovecot-uidlist` stay the truth (Dovecot, mbsync, `cp` into new/ share them);
this file is a cache of what can be derived from them plus the one thing that cannot: when
each message last changed (its MODSEQ) and which UIDs were expunged when. `FolderIndex`
(delivery/index.py) scans the directory as before (cheap stamps: the uidlist's and the
directories' mtimes) and hands every change it sees, ours or another writer's, to
`IndexDb.reconcile`, which records it under a new MODSEQ. So one code path numbers our own
STOREs, deliveries from the SMTP worker processes and the LDA, and a flag that Dovecot or a
`mv` in cur/ changed.

One SQLite file per folder, `<folder dir>/mailstack.index.sqlite3` (WAL), not one per
account: every write to it already happens under that folder's dotlock (so two folders never
queue on SQLite's single writer lock), it moves with the folder on RENAME and dies with it on
DELETE (as Dovecot's `dovecot.index*` files do), and a damaged file costs one folder's rebuild.
Dovecot ignores it (no leading dot: not a folder; not one of its names).

Tables: `meta` (uidvalidity, highestmodseq, expunge_floor), `messages` (uid, modseq, flags,
base name, file name, sizes, internal date), `expunged` (uid, modseq) and `headers` (stored
header fields, filled lazily: delivery/index_headers.py).

MODSEQ invariants (RFC 7162 §3.1.1: strictly increasing, never reused):
- One new MODSEQ per reconcile that finds changes (a STORE of 1,000 messages is one), all
  under the folder lock, so processes sharing the folder allocate in turn: highest + 1.
- When a process first opens the file it raises HIGHESTMODSEQ to at least the current time in
  microseconds. Allocations are serialised and each takes far more than a microsecond, so no
  MODSEQ ever issued exceeds the clock at the time; hence a file rebuilt from scratch (deleted,
  corrupt) or one that lost its last transactions in a power cut starts above every MODSEQ any
  client has seen. This assumes the clock does not step backwards across a rebuild.
- Flag changes are not fsynced (PRAGMA synchronous=NORMAL in WAL: a commit is written, the
  fsync waits for the checkpoint), as Dovecot's default `mail_fsync = optimized` does not fsync
  for them: a kill -9 loses nothing (the page cache has it); a power cut may lose the newest
  MODSEQs, which the clock floor above covers. Deliveries and APPEND keep their guarantee (the
  message file, its directory and the uidlist are fsynced before 250/APPENDUID); their index
  row is derived state.

Expunge log: every expunged UID is kept with its MODSEQ for QRESYNC (RFC 7162 §3.2.5), the
newest `EXPUNGE_LOG_MAX` per folder (about 2 MB). Older rows are dropped and `expunge_floor`
rises to the newest dropped MODSEQ; a resync from before the floor (or before the file was
rebuilt) is answered with every UID in the client's range that no longer exists, which RFC
7162 §3.2.5.2 allows ("MAY include UIDs that were never in the mailbox"). Dovecot keeps
expunges as long as its transaction log (rotated when it grows past 1 MB and older than
5 minutes), so we remember at least as many in practice.

Caller holds the folder lock for every call (the store's `FolderIndex.locked()`). No IMAP here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from mailstack.delivery.index_known import KnownRows

from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

INDEX_FILE = "mailstack.index.sqlite3"
FILE_MODE = 0o600
SCHEMA_VERSION = 1
EXPUNGE_LOG_MAX = 100_000  # rows of (uid, modseq): ~2 MB; see the module docstring
BUSY_TIMEOUT_MS = 10_000  # only another mailstack process under the same folder lock waits
_BATCH = 500  # uids per statement: below SQLite's default 999-variable limit
# Stored header fields, filled lazily by the IMAP layer (delivery/index_headers.py); this
# module only creates the table and drops rows whose UIDs are gone or mean something else.
HEADERS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS headers (uid INTEGER PRIMARY KEY, base TEXT NOT NULL,"
    " raw BLOB NOT NULL, plain TEXT, exact INTEGER NOT NULL, envelope BLOB)"
)
# Raised when what a stored row means changes; older rows are dropped once (a cache: they
# are made again when next needed). 2: `exact` also excludes addresses that parsing gives a
# placeholder (imap/search.py adds_placeholders).
HEADERS_VERSION = 2


def flag_text(flags: Iterable[str]) -> str:
    """The stored form of a flag set: sorted, space separated (flags contain no spaces)."""
    return " ".join(sorted(flags))


class Row(NamedTuple):
    """What reconcile needs to know of one message (a tuple: made in C, as reconcile makes
    one per message on demand, delivery/index_entry.py `Rows`)."""

    uid: int
    flags: str  # flag_text()
    base: str
    name: str
    disk_size: int
    size: int
    internal_date: float


class IndexRebuiltError(Exception):
    """The index file failed and was set aside: reconcile again with every row."""


def _now_floor() -> int:
    return time.time_ns() // 1000


def _prepare(db: sqlite3.Connection) -> dict[str, int]:
    """Schema, MODSEQ floor and journal of a newly opened index file; returns its meta."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        raise sqlite3.DatabaseError(f"unknown index schema {version}")
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")  # see "Flag changes are not fsynced"
    db.execute("BEGIN IMMEDIATE")
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS messages (uid INTEGER PRIMARY KEY,"
        " modseq INTEGER NOT NULL, flags TEXT NOT NULL, base TEXT NOT NULL,"
        " name TEXT NOT NULL, disk_size INTEGER NOT NULL, size INTEGER NOT NULL,"
        " internal_date REAL NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS messages_modseq ON messages (modseq)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS expunged (uid INTEGER PRIMARY KEY, modseq INTEGER NOT NULL)"
    )
    db.execute("CREATE INDEX IF NOT EXISTS expunged_modseq ON expunged (modseq)")
    db.execute(HEADERS_SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if int(meta.get("headers_version", 0)) != HEADERS_VERSION:
        db.execute("DELETE FROM headers")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('headers_version', ?)", (HEADERS_VERSION,))
    floor = _now_floor()
    highest = max(int(meta.get("highestmodseq", 0)), floor)
    if "highestmodseq" not in meta:
        # New or rebuilt: nothing is known of expunges before now.
        db.execute("DELETE FROM expunged")
        db.execute("INSERT OR REPLACE INTO meta VALUES ('expunge_floor', ?)", (highest,))
        meta["expunge_floor"] = highest
    db.execute("INSERT OR REPLACE INTO meta VALUES ('highestmodseq', ?)", (highest,))
    meta["highestmodseq"] = highest
    db.execute("COMMIT")
    db.execute("SELECT uid FROM messages LIMIT 1").fetchall()  # corrupt: raises
    return meta


class IndexDb:
    """The SQLite side of one folder's index; see the module docstring."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = folder_dir / INDEX_FILE
        self._db: sqlite3.Connection | None = None
        self.highest_modseq = 0
        self.expunge_floor = 0
        self.uid_validity = 0
        # uid -> (flags, modseq) as the file says, as of `_seen_modseq` (compact:
        # delivery/index_known.py).
        self._known: KnownRows | None = None
        self._seen_modseq = 0
        self._foreign = False  # a reconcile saw others' changes the listing may not show yet
        self._inode = 0  # of the file `_db` has open: a different one means it was replaced

    # -- connection ----------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        if self._db is not None:
            try:
                is_same = os.stat(self.path).st_ino == self._inode
            except FileNotFoundError:
                is_same = False
            if is_same:
                return self._db
            # Deleted or replaced under us (an admin removing index files): an open connection
            # would go on writing to the orphan. Start over from the Maildir.
            log.info("folder index %s was removed, rebuilding", self.path)
            self.close()
        try:
            self._db = self._open()
        except (sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                raise
            log.warning("folder index %s unusable, rebuilding: %s", self.path, exc)
            self._set_aside()
            self._db = self._open()
        return self._db

    def _open(self) -> sqlite3.Connection:
        # Created 0600 by us: sqlite3 would use the umask.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        os.close(fd)
        meta: dict[str, int] = {}

        def setup(db: sqlite3.Connection) -> None:
            meta.clear()
            meta.update(_prepare(db))

        db = open_shared(
            self.path, setup, timeout_s=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )
        highest = meta["highestmodseq"]
        self.highest_modseq = highest
        self.expunge_floor = int(meta.get("expunge_floor", highest))
        self.uid_validity = int(meta.get("uidvalidity", 0))
        self._known = None
        self._inode = os.stat(self.path).st_ino
        return db

    def _set_aside(self) -> None:
        """Remove an unusable index (and its WAL files): the Maildir can rebuild it."""
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
                os.unlink(f"{self.path}{suffix}")

    @contextlib.contextmanager
    def not_waiting(self) -> Iterator[bool]:
        """Yields whether the file is open; while it is, a lock another connection holds
        raises at once (sqlite3.OperationalError) instead of waiting out the busy timeout:
        for reads on the event loop's thread, which must never wait seconds."""
        db = self._db
        if db is None:
            yield False
            return
        db.execute("PRAGMA busy_timeout = 0")
        try:
            yield True
        finally:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def close(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None
        self._known = None

    def __del__(self) -> None:
        # The store dropped this folder's index (its LRU, delivery/maildir.py) and no thread
        # uses it any more: close now. An unclosed sqlite3.Connection is in a reference cycle
        # of its own and would keep its page cache until a full garbage collection.
        self.close()

    # -- reconcile -----------------------------------------------------------------------------
    def reconcile(
        self, uid_validity: int, rows: Sequence[Row], removed: Iterable[int] | None = None
    ) -> KnownRows:
        """Record messages' current state; returns what is known of the folder's rows, which
        has the MODSEQ of each of `rows` (`KnownRows.modseq`; read it before the next call).

        `removed` None: `rows` is every message of the folder (a full compare: first look in
        this process, or after a change this process cannot pin down). Otherwise `rows` are
        just the messages that may have changed (added, renamed) and `removed` the UIDs whose
        files are gone, so a single-message change costs a single-message compare. Any failure
        of the file (corrupt, deleted under us) rebuilds it once; the caller then gets
        `IndexRebuiltError` and passes every row again."""
        try:
            return self._reconcile(uid_validity, rows, removed)
        except sqlite3.DatabaseError as exc:
            log.warning("folder index %s failed, rebuilding: %s", self.path, exc)
            self.close()
            self._set_aside()
            raise IndexRebuiltError(str(exc)) from None

    def is_complete_for(self, uid_validity: int) -> bool:
        """May the next reconcile be partial? False on the first look in this process, after a
        rebuild, and when the UIDVALIDITY changed (all UIDs are new)."""
        self._connect()
        return self._known is not None and uid_validity == self.uid_validity

    def _reconcile(
        self, uid_validity: int, rows: Sequence[Row], removed: Iterable[int] | None
    ) -> KnownRows:
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            modseqs = self._reconcile_in(db, uid_validity, rows, removed)
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            self._known = None
            raise
        return modseqs

    def _catch_up(self, db: sqlite3.Connection) -> KnownRows:
        """`_known` brought up to the file's state (other processes write it too)."""
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        highest = int(meta.get("highestmodseq", 0))
        self.expunge_floor = int(meta.get("expunge_floor", 0))
        stored_validity = int(meta.get("uidvalidity", 0))
        known = self._known
        if known is None or stored_validity != self.uid_validity:
            # Interned: a folder has a handful of distinct flag texts, not one per message.
            known = KnownRows(
                (uid, sys.intern(flags), modseq)
                for uid, flags, modseq in db.execute(
                    "SELECT uid, flags, modseq FROM messages ORDER BY uid"
                )
            )
        elif highest != self._seen_modseq:
            for uid, flags, modseq in db.execute(
                "SELECT uid, flags, modseq FROM messages WHERE modseq > ?", (self._seen_modseq,)
            ):
                known[uid] = (sys.intern(flags), modseq)
            known.remove(
                uid
                for (uid,) in db.execute(
                    "SELECT uid FROM expunged WHERE modseq > ?", (self._seen_modseq,)
                )
            )
        if self._known is not None and highest != self._seen_modseq:
            self._foreign = True  # another process recorded changes (see changed_elsewhere)
        self._known = known
        self.highest_modseq = max(self.highest_modseq, highest)
        self._seen_modseq = highest
        self.uid_validity = stored_validity
        return known

    def _reconcile_in(
        self,
        db: sqlite3.Connection,
        uid_validity: int,
        rows: Sequence[Row],
        removed: Iterable[int] | None,
    ) -> KnownRows:
        if removed is not None and self._known is None:
            # A partial record by a process that never read the whole folder (an SMTP worker
            # delivering): look up just these rows instead of loading every one.
            removed = list(removed)
            known = self._rows_of([r.uid for r in rows] + removed, db)
        else:
            known = self._catch_up(db)
        if uid_validity != self.uid_validity and self.uid_validity == 0 and not known:
            self._set_meta(db, "uidvalidity", uid_validity)  # a new file: nothing to forget
            self.uid_validity = uid_validity
        if uid_validity != self.uid_validity:
            # A new UIDVALIDITY (RFC 9051 §2.3.1.1): every UID is new; old expunges mean
            # nothing. HIGHESTMODSEQ carries on upwards.
            db.execute("DELETE FROM messages")
            db.execute("DELETE FROM expunged")
            db.execute("DELETE FROM headers")
            self._set_meta(db, "uidvalidity", uid_validity)
            self._set_meta(db, "expunge_floor", self.highest_modseq)
            self.uid_validity, self.expunge_floor = uid_validity, self.highest_modseq
            known.clear()
        if removed is None:
            # Nothing known (a new file): nothing can be gone, and no row is built for asking.
            gone = known.absent_from([r.uid for r in rows]) if len(known) else []
        else:
            gone = [uid for uid in set(removed) if uid in known]
        modseq = self.highest_modseq + 1
        changed = 0

        def changed_rows() -> Iterator[tuple[object, ...]]:
            # Streamed into the INSERT and recorded in `known` on the way: a first open
            # changes every message, and a list of them cost a row object apiece.
            nonlocal changed
            shared: dict[str, tuple[str, int]] = {}
            fresh = not len(known)  # a new file: nothing to compare with
            for r in rows:
                k = None if fresh else known.get(r.uid)
                if k is None or k[0] != r.flags:
                    changed += 1
                    pair = shared.get(r.flags)
                    if pair is None:
                        pair = shared[r.flags] = (r.flags, modseq)
                    known[r.uid] = pair
                    yield (
                        r.uid,
                        modseq,
                        r.flags,
                        r.base,
                        r.name,
                        r.disk_size,
                        r.size,
                        r.internal_date,
                    )

        db.executemany(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)", changed_rows()
        )
        if changed or gone:
            for start in range(0, len(gone), _BATCH):
                batch = gone[start : start + _BATCH]
                marks = ",".join("?" * len(batch))
                db.execute(f"DELETE FROM messages WHERE uid IN ({marks})", batch)  # noqa: S608
                db.execute(f"DELETE FROM headers WHERE uid IN ({marks})", batch)  # noqa: S608
            db.executemany(
                "INSERT OR REPLACE INTO expunged VALUES (?, ?)", [(u, modseq) for u in gone]
            )
            known.remove(gone)
            self._set_meta(db, "highestmodseq", modseq)
            self.highest_modseq = self._seen_modseq = modseq
            if gone:
                self._trim_expunge_log(db)
        return known

    def _rows_of(self, uids: list[int], db: sqlite3.Connection) -> KnownRows:
        """uid -> (flags, modseq) of just these UIDs, with the meta values brought up to date."""
        self._catch_up_meta(db)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.uid_validity = int(meta.get("uidvalidity", 0))
        found: list[tuple[int, str, int]] = []
        for start in range(0, len(uids), _BATCH):
            batch = uids[start : start + _BATCH]
            marks = ",".join("?" * len(batch))
            found += db.execute(
                f"SELECT uid, flags, modseq FROM messages WHERE uid IN ({marks})",  # noqa: S608
                batch,
            )
        return KnownRows(found)

    def _trim_expunge_log(self, db: sqlite3.Connection) -> None:
        (count,) = db.execute("SELECT count(*) FROM expunged").fetchone()
        if count <= EXPUNGE_LOG_MAX:
            return
        (cut,) = db.execute(
            "SELECT modseq FROM expunged ORDER BY modseq LIMIT 1 OFFSET ?",
            (count - EXPUNGE_LOG_MAX,),
        ).fetchone()
        db.execute("DELETE FROM expunged WHERE modseq < ?", (cut,))
        floor = max(self.expunge_floor, cut - 1)
        self._set_meta(db, "expunge_floor", floor)
        self.expunge_floor = floor

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: int) -> None:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    # -- queries -------------------------------------------------------------------------------
    def expunged_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged with a MODSEQ above `modseq`, ascending; None when the log does not
        reach back that far (the caller then reports every missing UID instead)."""
        db = self._connect()
        self._catch_up_meta(db)
        if modseq < self.expunge_floor:
            return None
        # Sorted here: an ORDER BY uid makes SQLite scan the whole table in UID order
        # instead of using the MODSEQ index (see changed_since).
        return sorted(
            uid for (uid,) in db.execute("SELECT uid FROM expunged WHERE modseq > ?", (modseq,))
        )

    def changed_elsewhere(self, *, consume: bool = True) -> bool:
        """Did another process record changes since this one last looked? (One small read.)
        `consume`: the answer is taken (the next sync acts on it); False only asks."""
        if self._foreign:
            self._foreign = not consume
            return True
        if self._db is None or self._known is None:
            return False  # the first look reads everything anyway
        db = self._connect()
        row = db.execute("SELECT value FROM meta WHERE key = 'highestmodseq'").fetchone()
        return row is not None and int(row[0]) != self._seen_modseq

    def changed_since(self, modseq: int) -> list[int]:
        """UIDs of messages whose MODSEQ is above `modseq`, ascending (as of the last
        reconcile: the caller reconciles first)."""
        db = self._connect()
        # Sorted here, not by an ORDER BY uid: with it SQLite scans every row in UID order
        # (EXPLAIN QUERY PLAN: SCAN messages) instead of the few the MODSEQ index finds,
        # and every command of a session in a 100,000-message folder asks this.
        return sorted(
            uid for (uid,) in db.execute("SELECT uid FROM messages WHERE modseq > ?", (modseq,))
        )

    def file_meta(self) -> dict[str, tuple[float, int, int]]:
        """base name -> (internal date, disk size, RFC822.SIZE) as recorded: a process that
        opens the folder takes these instead of a stat() (and, for names without S=/W=, a
        read) per file. INTERNALDATE is the file's mtime when first seen, kept as Dovecot
        keeps it in its index. Empty when the file is unusable (every file is measured)."""
        try:
            db = self._connect()
            return {  # interned: the listing's keys are the same strings (index_listing.py)
                sys.intern(base): (date, disk, size)
                for base, date, disk, size in db.execute(
                    "SELECT base, internal_date, disk_size, size FROM messages"
                )
            }
        except (sqlite3.Error, OSError) as exc:
            log.debug("folder index %s: no recorded sizes: %s", self.path, exc)
            return {}

    def _catch_up_meta(self, db: sqlite3.Connection) -> None:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self.expunge_floor = int(meta.get("expunge_floor", 0))
        self.highest_modseq = max(self.highest_modseq, int(meta.get("highestmodseq", 0)))
