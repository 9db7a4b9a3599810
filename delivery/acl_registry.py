"""Who shares what with whom: `DIR/shares.sqlite3`, a registry of the grants in the accounts'
dovecot-acl files, so that a LIST costs what is shared with the user, not a look at every
folder of every account.

Why a registry: the dovecot-acl files (delivery/acl.py) stay the truth (Dovecot reads and
writes them too), but finding them means listing every account's folders and trying to open
a file in each: with 1,000 accounts of six folders, some 10,000 syscalls per LIST, per user,
and again at each account's first SELECT (its structure cache prune lists its folders). The
registry holds a row per (identifier, owner, folder) of every entry that may grant someone
other than the owner something (`user=ADDRESS`, `authenticated`, `anyone`; not the lines
acl.py only carries along, which grant nothing). A LIST asks for the rows of `user=<it>`,
`authenticated` and `anyone`, then reads those folders' own files for the rights, as
SharedStore.route does on every access: a stale row never grants anything, it only says where
to look, and a revoke applies at once.

Why SQLite in the state directory, not a cache in each process: the CLI (`mailstack share`),
every `serve` and their sessions write and read it, and a commit is seen by the next query of
every process, with no stamp files or signals. Rollback journal, not WAL: writes are rare (a
share, a rename of a shared folder) and the file may be deleted any time with nothing beside
it to go stale. synchronous=NORMAL: a crash may lose the last rows; the next rescan puts them
back.

Kept current by our writers, each after it wrote the file: `set_rights`/`write` (the CLI,
SETACL/DELETEACL, a new folder inheriting its parent's ACL), RENAME and DELETE of a folder with
an ACL file (delivery/maildir_folders.py), account deletion (delivery/maildir.py). Each write
bumps a generation counter and stamps its rows with it. While the file does not exist, writers
skip it: the lookup that creates it fills it from the files.

Found within bounded time otherwise: a file written by Dovecot or by hand is found by a full
rescan (a walk of every account), at most once per RESCAN_S across every process sharing the
state directory (the time of the last one is in the registry), run in a background thread
that the first lookup after that starts: the LISTs that begin after it ends see the folder,
i.e. within a minute and a scan's time of the write on a server in use. A rescan keeps rows
stamped after it read the generation counter (a share made meanwhile is not undone by a walk
that looked before it).

Missing: the first lookup builds it with a full scan (in its worker thread; the other lookups
of the process wait for that one). Corrupt (not an SQLite file, a malformed page): removed and
rebuilt the same way, with the same answers. Unusable otherwise (a read-only disk, a lock held
longer than BUSY_TIMEOUT_S): logged, and that lookup walks every account as before, slower but
never wrong; a write that fails is logged and left to the next rescan.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from mailstack.delivery import acl
from mailstack.delivery.layout import folder_dir_name
from mailstack.delivery.store import INBOX

from mailstack.base.paths import StatePaths
from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

RESCAN_S = 60.0  # how stale a file written behind our back may get; read at each lookup
BUSY_TIMEOUT_S = 5.0  # lookups and writes run in worker threads or the CLI, never on a loop
FILE_MODE = 0o600  # who shares with whom: not for every local user to read

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grants (
    identifier TEXT NOT NULL,
    owner TEXT NOT NULL,
    folder TEXT NOT NULL,
    generation INTEGER NOT NULL,
    PRIMARY KEY (identifier, owner, folder)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_by_folder ON grants (owner, folder);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""
# meta rows: generation (bumped by every write), built (1 once a full scan filled the file),
# scanned_at (when the last full rescan began or ended: the claim that spaces them out).
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})

Key = tuple[str, str]  # (owner, folder)
_T = TypeVar("_T")


def grantees(entries: Iterable[acl.Entry] | None) -> frozenset[str]:
    """The identifiers of a file's entries that may grant someone other than its owner."""
    return frozenset(
        e.identifier for e in entries or () if e.rights is not None and e.identifier != acl.OWNER
    )


def _order(key: Key) -> tuple[str, str, bool, str]:
    """The order a walk finds folders in: by domain, account, INBOX first, then by name."""
    owner, folder = key
    local, _, domain = owner.rpartition("@")
    return domain, local, folder != INBOX, folder_dir_name(folder) if folder != INBOX else ""


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    db.execute("BEGIN IMMEDIATE")  # take the write lock first: no deadlock on upgrade
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _meta(db: sqlite3.Connection) -> dict[str, float]:
    return {name: value for name, value in db.execute("SELECT name, value FROM meta")}


def _set_meta(db: sqlite3.Connection, name: str, value: float) -> None:
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))


def _replace(db: sqlite3.Connection, key: Key, identifiers: Iterable[str], generation: int) -> None:
    db.execute("DELETE FROM grants WHERE owner = ? AND folder = ?", key)
    db.executemany(
        "INSERT INTO grants (identifier, owner, folder, generation) VALUES (?, ?, ?, ?)",
        [(identifier, *key, generation) for identifier in identifiers],
    )


def _bump(db: sqlite3.Connection) -> int:
    generation = int(_meta(db).get("generation", 0)) + 1
    _set_meta(db, "generation", generation)
    return generation


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)


class AclRegistry:
    """The registry of one state directory; safe for many threads and processes."""

    def __init__(self, paths: StatePaths) -> None:
        self.paths = paths
        self.path = paths.shares_db
        self._lock = threading.RLock()  # one connection per process, used by one thread at once
        self._conn: sqlite3.Connection | None = None
        self._opened: tuple[int, int, int] | None = None  # (pid, st_dev, st_ino) of _conn
        self._rescanning = False
        self._warned_at = 0.0  # monotonic time of the last warning; 0: none yet

    # -- what LIST asks --------------------------------------------------------------------
    def shared_with(self, user: str) -> list[Key]:
        """(owner, folder) of every folder whose ACL file names `user`, `authenticated` or
        `anyone` (the caller reads the file for the rights), the user's own left out."""
        wanted = (f"user={user}", acl.AUTHENTICATED, acl.ANYONE)
        try:
            keys, stale = self._use(lambda db: self._lookup(db, wanted))
        except (sqlite3.Error, OSError) as exc:
            self._warn("%s unusable (%s): looking at every account's folders", exc)
            found = self._walk()
            keys = [key for key, ids in found.items() if ids.intersection(wanted)]
            stale = False
        if stale:
            self._start_rescan()
        return sorted((key for key in keys if key[0] != user), key=_order)

    def _lookup(self, db: sqlite3.Connection, wanted: tuple[str, ...]) -> tuple[list[Key], bool]:
        meta = _meta(db)
        if not meta.get("built"):
            log.info("building %s from the dovecot-acl files", self.path)
            self._reconcile(db, self._walk(), int(meta.get("generation", 0)))
            meta = _meta(db)
        rows = db.execute(
            "SELECT DISTINCT owner, folder FROM grants WHERE identifier IN (?, ?, ?)", wanted
        ).fetchall()
        return [(owner, folder) for owner, folder in rows], self._is_due(meta)

    @staticmethod
    def _is_due(meta: dict[str, float]) -> bool:
        return time.time() - meta.get("scanned_at", 0.0) >= RESCAN_S

    # -- our writers ---------------------------------------------------------------------------
    def set_rights(self, owner: str, folder: str, identifier: str, rights: str) -> list[acl.Entry]:
        """acl.set_rights on `owner`'s `folder`, then the registry."""
        entries = acl.set_rights(self._dir(owner, folder), identifier, rights)
        self._record({(owner, folder): grantees(entries)})
        return entries

    def write(self, owner: str, folder: str, entries: list[acl.Entry]) -> None:
        """acl.write_acl on `owner`'s `folder`, then the registry."""
        acl.write_acl(self._dir(owner, folder), entries)
        self._record({(owner, folder): grantees(entries)})

    def renamed(self, owner: str, moves: Iterable[tuple[str, str]]) -> None:
        """Folders (old name, new name) moved with their ACL files."""
        changes: dict[Key, frozenset[str]] = {}
        for old, new in moves:
            changes[(owner, old)] = frozenset()
            changes[(owner, new)] = grantees(acl.read_acl(self._dir(owner, new)))
        self._record(changes)

    def forget(self, owner: str, folder: str) -> None:
        """A folder with an ACL file was deleted."""
        self._record({(owner, folder): frozenset()})

    def forget_account(self, owner: str) -> None:
        """An account was deleted: its folders share nothing any more. (Its name stays in
        other owners' files, as in Dovecot's, and so in their rows.)"""

        def delete(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _bump(db)
                db.execute("DELETE FROM grants WHERE owner = ?", (owner,))

        self._write_through(delete)

    def _record(self, changes: dict[Key, frozenset[str]]) -> None:
        def replace(db: sqlite3.Connection) -> None:
            with _transaction(db):
                generation = _bump(db)
                for key, identifiers in changes.items():
                    _replace(db, key, identifiers, generation)

        self._write_through(replace)

    def _write_through(self, work: Callable[[sqlite3.Connection], None]) -> None:
        if not self.path.exists():
            return  # not built yet: the lookup that builds it reads the files we just wrote
        try:
            self._use(work)
        except (sqlite3.Error, OSError) as exc:
            self._warn("%s not updated (%s): the next rescan will be", exc)

    def _warn(self, message: str, exc: Exception) -> None:
        """A warning at most once a minute: a registry that stays unusable would otherwise
        log a line per LIST."""
        now = time.monotonic()
        if not self._warned_at or now - self._warned_at >= 60.0:
            self._warned_at = now
            log.warning(message, self.path, exc)

    # -- rescans -------------------------------------------------------------------------------
    def rescan(self) -> list[acl.SharedFolder]:
        """Walk every account for ACL files (what Dovecot or an editor wrote too), bring the
        registry in line with them and return them (`mailstack share list` shows these)."""
        try:
            since = self._use(lambda db: int(_meta(db).get("generation", 0)))
        except (sqlite3.Error, OSError) as exc:
            self._warn("%s unusable (%s): not rescanned", exc)
            since = None
        walked = list(self._shared_folders())
        if since is not None:
            found = {(s.owner, s.folder): grantees(s.entries) for s in walked}
            try:
                shared = {key: ids for key, ids in found.items() if ids}
                self._use(lambda db: self._reconcile(db, shared, since))
            except (sqlite3.Error, OSError) as exc:
                self._warn("%s not updated (%s): the next rescan will be", exc)
        return walked

    def _reconcile(
        self, db: sqlite3.Connection, found: dict[Key, frozenset[str]], since: int
    ) -> None:
        """Make the rows say what a walk `found`, except for folders written after the
        generation `since` the walk began at (the write knows better than the walk)."""
        with _transaction(db):
            known: dict[Key, tuple[set[str], int]] = {}
            rows = db.execute("SELECT identifier, owner, folder, generation FROM grants")
            for identifier, owner, folder, generation in rows:
                ids, newest = known.setdefault((owner, folder), (set(), 0))
                ids.add(identifier)
                known[(owner, folder)] = (ids, max(newest, generation))
            for key in known.keys() | found.keys():
                ids, newest = known.get(key, (set(), 0))
                wanted = found.get(key, frozenset())
                if newest <= since and ids != wanted:
                    _replace(db, key, wanted, since)
            _set_meta(db, "built", 1)
            _set_meta(db, "scanned_at", time.time())

    def _start_rescan(self) -> None:
        with self._lock:
            if self._rescanning:
                return
            self._rescanning = True
        threading.Thread(target=self._rescan_in_background, name="acl-rescan", daemon=True).start()

    def _rescan_in_background(self) -> None:
        try:
            if self._use(self._claim):
                self.rescan()
        except Exception as exc:  # a thread of our own: nobody else would see it
            log.warning("rescan of the dovecot-acl files failed: %s", exc, exc_info=True)
        finally:
            with self._lock:
                self._rescanning = False

    @classmethod
    def _claim(cls, db: sqlite3.Connection) -> bool:
        """Whether this process runs the next rescan (not another serve or thread)."""
        with _transaction(db):
            if not cls._is_due(_meta(db)):
                return False
            _set_meta(db, "scanned_at", time.time())
            return True

    def _shared_folders(self) -> Iterator[acl.SharedFolder]:
        return acl.shared_folders(self.paths.mail_dir)

    def _walk(self) -> dict[Key, frozenset[str]]:
        found = {(s.owner, s.folder): grantees(s.entries) for s in self._shared_folders()}
        return {key: ids for key, ids in found.items() if ids}

    # -- the file ------------------------------------------------------------------------------
    def _dir(self, owner: str, folder: str) -> Path:
        return acl.folder_dir(self.paths.maildir(owner), folder)

    def _use(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """`work` on the connection; a damaged file is removed and `work` runs once more on a
        new one (which its lookup then fills from the dovecot-acl files)."""
        with self._lock:
            try:
                return work(self._db())
            except sqlite3.DatabaseError as exc:
                if getattr(exc, "sqlite_errorname", "") not in _CORRUPT:
                    raise
                log.warning("%s is damaged (%s): rebuilding it", self.path, exc)
                self._discard()
                return work(self._db())

    def _db(self) -> sqlite3.Connection:
        """The connection, opened again when the file was removed or replaced (a rebuild in
        another process, an admin's rm) or after a fork (a connection must not cross one)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE))
            st = os.stat(self.path)
        opened = (os.getpid(), st.st_dev, st.st_ino)
        if self._conn is not None and self._opened == opened:
            return self._conn
        if self._opened is not None and self._opened[0] == opened[0] and self._conn is not None:
            self._conn.close()
        self._conn = None
        conn = open_shared(self.path, _setup, timeout_s=BUSY_TIMEOUT_S, check_same_thread=False)
        self._conn, self._opened = conn, opened
        return conn

    def _discard(self) -> None:
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._opened and self._opened[0] == os.getpid():
                self._conn.close()
            self._conn, self._opened = None, None
