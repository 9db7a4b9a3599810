"""Stored header fields per message: header SEARCH, SORT and HEADER.FIELDS without file reads.

Clients fetch and search a handful of header fields (From, To, Cc, Subject, Date, Message-ID,
References, ...); reading every message's header block for that costs one open and read per
message, every time. The IMAP layer extracts those fields once per message and keeps them
here; this module stores opaque values and knows nothing of header syntax (the delivery floor
may not import the IMAP parser).

Where: a side table `headers` in the folder's index file (`mailstack.index.sqlite3`,
delivery/index_db.py), not a file of its own and not the account-wide structure cache
(imap/cache.py). Rows are keyed by UID, which only means something within one folder, like
the index's other rows; the file already moves with the folder on RENAME, dies with it on
DELETE, and is rebuilt when deleted or corrupt, which takes these rows along (they come back
lazily). Each row also records the message's base name (unique per message for its whole
life): a row whose base name is not the message's is stale (a UID reused after a new
UIDVALIDITY by a process that did not clear the table) and counts as missing, so a wrong row
can never answer.

Filling is lazy: the first SEARCH/SORT/FETCH that needs a message's fields reads its header
block and stores the row, one transaction per call. Nothing happens at delivery: the SMTP
path stays as it was.

A row: `raw`, the field lines exactly as the file has them (CRLF line ends: byte-exact for
BODY[HEADER.FIELDS]); `envelope`, the rendered FETCH ENVELOPE (it reads only stored
fields, so a client's header fetch reads no file once filled; NULL until a FETCH asks for
it: SEARCH need not pay for rendering it); `plain`, their text
lower-cased with line breaks removed when that is exactly what a substring search sees
(plain ASCII, no encoded-words), else NULL (cannot tell); `exact`, whether addresses in
it read the same after parsing. `candidates` uses the last two as a pre-filter; the IMAP
layer still decides each candidate exactly.

Own connection and lock: lookups take neither the folder's dotlock nor wait on the
index's writers (WAL readers do not block). Failures are logged at DEBUG and answered with
"unknown" (None / nothing), so callers fall back to reading the files.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from mailstack.delivery.index_db import HEADERS_SCHEMA, INDEX_FILE
from mailstack.delivery.store import HeaderRow

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 2000
_BATCH = 500  # uids per statement: below SQLite's default 999-variable limit


class HeaderTable:
    """The `headers` table of one folder's index file."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = folder_dir / INDEX_FILE
        self._lock = threading.Lock()
        self._filling = threading.Lock()  # `filling`: sessions filling rows take turns
        self._db: sqlite3.Connection | None = None
        self._inode = 0
        # uid -> base name of every row, as of `_version` (PRAGMA data_version: it moves
        # when another connection commits), so a repeated SEARCH need not re-read every key.
        self._rows: dict[int, str] | None = None
        self._version = -1

    @property
    def filling(self) -> threading.Lock:
        return self._filling

    def _connect(self) -> sqlite3.Connection | None:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            inode = 0  # not built yet, or deleted: the folder index (re)creates it
        if self._db is not None and inode == self._inode:
            return self._db
        self._close()
        if not inode:
            return None
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute(HEADERS_SCHEMA)
        except sqlite3.Error as exc:
            log.debug("header index %s unusable: %s", self.path, exc)
            return None
        self._db, self._inode = db, inode
        return db

    def _close(self) -> None:
        self._rows = None
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
        self._db = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _failed(self, what: str, exc: sqlite3.Error) -> None:
        log.debug("header index %s: %s failed: %s", self.path, what, exc)
        self._close()

    def get(self, wanted: Sequence[tuple[int, str]]) -> dict[int, tuple[bytes, bytes | None]]:
        """Stored (`raw`, `envelope`) of (uid, base name) pairs; missing and stale rows
        absent."""
        bases = dict(wanted)
        out: dict[int, tuple[bytes, bytes | None]] = {}
        uids = list(bases)
        with self._lock:
            db = self._connect()
            if db is None:
                return out
            try:
                for start in range(0, len(uids), _BATCH):
                    chunk = uids[start : start + _BATCH]
                    marks = ",".join("?" * len(chunk))
                    for uid, base, raw, env in db.execute(
                        f"SELECT uid, base, raw, envelope FROM headers WHERE uid IN ({marks})",  # noqa: S608
                        chunk,
                    ):
                        if bases.get(uid) == base:
                            out[uid] = (bytes(raw), None if env is None else bytes(env))
            except sqlite3.Error as exc:
                self._failed("read", exc)
                return {}
        return out

    def put(self, rows: Iterable[HeaderRow]) -> None:
        """Store rows (replacing older ones), in one transaction; best effort."""
        batch = [(r.uid, r.base, r.raw, r.plain, int(r.exact), r.envelope) for r in rows]
        self._write("INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?, ?, ?)", batch)
        with self._lock:
            if self._rows is not None:  # our own commits do not move data_version
                self._rows.update((row[0], row[1]) for row in batch)

    def _write(self, sql: str, batch: Sequence[tuple[object, ...]]) -> None:
        if not batch:
            return
        with self._lock:
            db = self._connect()
            if db is None:
                return
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(sql, batch)
                    db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                self._failed("write", exc)

    def missing(self, wanted: Sequence[tuple[int, str]]) -> tuple[list[int], list[int]]:
        """The UIDs of `wanted` (uid, base name) without a current row, and those without its
        ENVELOPE, in the order given (all of them when the table is unusable): one scan."""
        bases = dict(wanted)
        rows: set[int] = set()
        envelopes: set[int] = set()
        with self._lock:
            db = self._connect()
            if db is not None:
                try:
                    sql = "SELECT uid, base, envelope IS NOT NULL FROM headers"
                    for uid, base, has_envelope in db.execute(sql):
                        if bases.get(uid) == base:
                            rows.add(uid)
                            if has_envelope:
                                envelopes.add(uid)
                except sqlite3.Error as exc:
                    self._failed("read", exc)
        return (
            [uid for uid, _ in wanted if uid not in rows],
            [uid for uid, _ in wanted if uid not in envelopes],
        )

    def set_envelopes(self, rows: Iterable[tuple[int, str, bytes]]) -> None:
        """Store the rendered ENVELOPE of existing rows: (uid, base name, envelope)."""
        self._write(
            "UPDATE headers SET envelope = ? WHERE uid = ? AND base = ?",
            [(env, uid, base) for uid, base, env in rows],
        )

    def candidates(
        self, wanted: Sequence[tuple[int, str]], terms: Sequence[tuple[str, bool]]
    ) -> tuple[dict[int, bytes], set[int]] | None:
        """(uid -> raw of the messages of `wanted` whose stored fields may contain every term,
        UIDs of `wanted` without a current row: the caller decides those from the files).
        A term is (lower-case ASCII needle, needs addresses `exact`); a row whose `plain` is
        NULL (or not `exact` when a term needs it) may contain anything. None when the table
        is unusable."""
        bases = dict(wanted)
        where = " AND ".join(
            "(plain IS NULL OR " + ("exact = 0 OR " if strict else "") + "instr(plain, ?) > 0)"
            for _, strict in terms
        )
        found: dict[int, bytes] = {}
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                version = db.execute("PRAGMA data_version").fetchone()[0]
                known = self._rows if version == self._version else None
                if known is not None and all(known.get(u) == b for u, b in wanted):
                    # Every wanted row is there and nobody else wrote since: the matches only.
                    have = set(bases)
                    sql = f"SELECT uid, base, raw FROM headers WHERE {where or '1'}"  # noqa: S608
                    for uid, base, raw in db.execute(sql, [t for t, _ in terms]):
                        if bases.get(uid) == base:
                            found[uid] = bytes(raw)
                else:
                    # One scan: every row's key (which rows are current), the raw lines of
                    # those that pass the pre-filter.
                    sql = f"SELECT uid, base, CASE WHEN {where or '1'} THEN raw END FROM headers"  # noqa: S608
                    have = set()
                    rows: dict[int, str] = {}
                    for uid, base, raw in db.execute(sql, [t for t, _ in terms]):
                        rows[uid] = base
                        if bases.get(uid) == base:
                            have.add(uid)
                            if raw is not None:
                                found[uid] = bytes(raw)
                    self._rows, self._version = rows, version
            except sqlite3.Error as exc:
                self._failed("search", exc)
                return None
        return found, bases.keys() - have
