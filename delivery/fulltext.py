"""The full-text pre-filter of one folder: which messages may contain a string.

IMAP SEARCH BODY/TEXT is a case-insensitive substring match (RFC 9051 §6.4.4), so a word index
(which finds "report" but not "eport") cannot decide it. We keep a SQLite FTS5 table with the
`trigram` tokenizer instead: every three-character piece of a message's searchable text is a
token, and a message that contains a string contains each of the string's trigrams. Asking for
all of them gives a superset of the matches; the IMAP layer then decides each candidate exactly
on the message itself, so the answer is the one a scan of every message gives, only faster.
Strings shorter than three characters have no trigram: `candidates` returns None and the caller
scans.

What goes in: the text the IMAP layer searches, already decoded and case-folded by it (one
function decides both, so the pre-filter cannot miss what the exact match finds). This module
knows nothing of MIME.

Storage: `<folder>/mailstack.fulltext.sqlite3` (0600; Dovecot ignores files it does not know),
one per folder because rows are keyed by UID, which means something only within one folder and
one UIDVALIDITY (a change of UIDVALIDITY empties the table). The FTS table is contentless with
`detail=none` (no copy of the text, no positions: about the size of the text itself; phrase
queries need positions, so a string becomes an AND of its trigrams). Contentless rows cannot be
deleted without their text, so an expunged message's row stays and is simply never returned
(the `docs` table maps rows to live UIDs); when dead rows outnumber live ones the table is
rebuilt empty and refilled lazily.

Filling is lazy: SEARCH indexes the messages it had to read anyway (`add`), so the first text
search of a folder costs a scan plus the inserts and later ones read only candidates. Nothing
is done at delivery: the SMTP path stays as fast as before.

The index is a cache: a missing, corrupt or unwritable file is set aside or ignored (logged at
DEBUG) and SEARCH falls back to scanning. Several sessions and processes may share the file
(WAL mode, a busy timeout); one `FolderText` serialises its own threads with a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path

from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

FILE_NAME = "mailstack.fulltext.sqlite3"
SCHEMA_VERSION = 1
MIN_TERM = 3  # characters: the trigram tokenizer's token length
BUSY_TIMEOUT_MS = 2000
REBUILD_MIN_DEAD = 1000  # dead rows tolerated before a rebuild is considered

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS docs (uid INTEGER PRIMARY KEY, row INTEGER NOT NULL UNIQUE);
CREATE VIRTUAL TABLE IF NOT EXISTS text USING fts5(
    body, content='', detail=none, tokenize='trigram case_sensitive 1'
);
"""


def trigram_query(term: str) -> str | None:
    """An FTS5 query matching every text that contains `term` (already case-folded): the AND
    of its distinct trigrams, each quoted. None when the term is too short to have one."""
    if len(term) < MIN_TERM:
        return None
    grams = dict.fromkeys(term[i : i + MIN_TERM] for i in range(len(term) - MIN_TERM + 1))
    return " AND ".join('"' + g.replace('"', '""') + '"' for g in grams)


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    # A cache: losing the last transactions in a power cut costs a re-index, not mail.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    if row is None:
        with db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
    elif row[0] != SCHEMA_VERSION:
        raise sqlite3.DatabaseError(f"schema {row[0]}, expected {SCHEMA_VERSION}")


class FolderText:
    """The pre-filter of one folder. Methods return None / do nothing when the index is
    unusable; callers then scan."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = folder_dir / FILE_NAME
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def _open(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            log.debug("full-text index %s unusable (%s): starting a new one", self.path, exc)
            with contextlib.suppress(OSError):
                os.replace(self.path, self.path.with_suffix(".corrupt"))
            try:
                self._db = self._connect()
            except (sqlite3.DatabaseError, OSError) as again:
                log.debug("full-text index %s disabled: %s", self.path, again)
                self._broken = True
        except OSError as exc:
            log.debug("full-text index %s disabled: %s", self.path, exc)
            self._broken = True
        return self._db

    def _connect(self) -> sqlite3.Connection:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        return open_shared(
            self.path,
            _setup,
            timeout_s=BUSY_TIMEOUT_MS / 1000,
            check_same_thread=False,
            autocommit=False,
        )

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _check_validity(self, db: sqlite3.Connection, uid_validity: int) -> None:
        """Rows belong to one UIDVALIDITY (RFC 9051 §2.3.1.1): a new one empties the table."""
        row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
        if row is not None and row[0] == uid_validity:
            return
        with _writing(db):
            # Asked again under the write lock: two processes opening a new file both saw
            # no UIDVALIDITY, and the second emptied the rows the first had just added.
            row = db.execute("SELECT value FROM meta WHERE key = 'uidvalidity'").fetchone()
            if row is not None and row[0] == uid_validity:
                return
            db.execute("DELETE FROM docs")
            db.execute("INSERT INTO text(text) VALUES ('delete-all')")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('uidvalidity', ?)", (uid_validity,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('dead', 0)")

    def indexed(self, uid_validity: int, live: Collection[int]) -> set[int] | None:
        """The UIDs of `live` (the folder's messages now) that are indexed; rows of UIDs no
        longer live are dropped here (they were expunged)."""
        with self._lock:
            db = self._open()
            if db is None:
                return None
            try:
                self._check_validity(db, uid_validity)
                have = {uid for (uid,) in db.execute("SELECT uid FROM docs")}
                gone = have.difference(live)
                if gone and self._drop(db, gone, len(have) - len(gone)):
                    return set()
                return have - gone
            except sqlite3.Error as exc:
                log.debug("full-text index %s: %s", self.path, exc)
                return None

    def _drop(self, db: sqlite3.Connection, gone: set[int], live_rows: int) -> bool:
        """Forget expunged UIDs; True when the table was emptied instead."""
        row = db.execute("SELECT value FROM meta WHERE key = 'dead'").fetchone()
        dead = (row[0] if row else 0) + len(gone)
        with db:
            if dead > max(REBUILD_MIN_DEAD, live_rows):
                # Mostly dead rows: start over; SEARCH refills what it reads.
                db.execute("DELETE FROM docs")
                db.execute("INSERT INTO text(text) VALUES ('delete-all')")
                dead = 0
            else:
                db.executemany("DELETE FROM docs WHERE uid = ?", ((u,) for u in gone))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('dead', ?)", (dead,))
        return dead == 0

    def add(self, uid_validity: int, texts: Iterable[tuple[int, str]]) -> None:
        """Index (uid, searchable text) pairs; a UID already indexed is skipped (another
        session or process got there first)."""
        items = list(texts)
        if not items:
            return
        with self._lock:
            db = self._open()
            if db is None:
                return
            try:
                self._check_validity(db, uid_validity)
                # The write lock first: `maxrow` read before it could be another process's
                # stale value, and two writers would hand out the same rowids.
                with _writing(db):
                    row = db.execute("SELECT value FROM meta WHERE key = 'maxrow'").fetchone()
                    # Dead rows keep their rowids in the FTS table: a new row must never reuse
                    # one, or an old message's trigrams would count for a new UID.
                    next_row = int(row[0]) if row else 0
                    for uid, text in items:
                        if db.execute("SELECT 1 FROM docs WHERE uid = ?", (uid,)).fetchone():
                            continue
                        next_row += 1
                        db.execute("INSERT INTO text(rowid, body) VALUES (?, ?)", (next_row, text))
                        db.execute("INSERT INTO docs VALUES (?, ?)", (uid, next_row))
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('maxrow', ?)", (next_row,))
            except sqlite3.Error as exc:
                log.debug("full-text index %s: not indexed: %s", self.path, exc)

    def candidates(self, uid_validity: int, terms: Iterable[str]) -> set[int] | None:
        """UIDs whose indexed text may contain every one of `terms` (case-folded). None when
        no term can be used (all shorter than three characters) or the index is unusable.
        Only indexed messages are answered for: the caller adds those not yet indexed."""
        queries = [q for q in map(trigram_query, terms) if q is not None]
        if not queries:
            return None
        query = " AND ".join(f"({q})" for q in queries)
        with self._lock:
            db = self._open()
            if db is None:
                return None
            try:
                self._check_validity(db, uid_validity)
                return {
                    uid
                    for (uid,) in db.execute(
                        "SELECT docs.uid FROM text JOIN docs ON docs.row = text.rowid"
                        " WHERE text MATCH ?",
                        (query,),
                    )
                }
            except sqlite3.Error as exc:
                log.debug("full-text index %s: %s", self.path, exc)
                return None


@contextlib.contextmanager
def _writing(db: sqlite3.Connection) -> Iterator[None]:
    """A transaction holding the write lock from its start (BEGIN IMMEDIATE: the busy
    timeout applies), committed at the end, rolled back on an error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.rollback()
        raise
    db.commit()
