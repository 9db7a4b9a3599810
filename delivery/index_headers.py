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

import bisect
import contextlib
import functools
import logging
import os
import sqlite3
import sys
import threading
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from mailstack.delivery.index_db import HEADERS_SCHEMA, INDEX_FILE
from mailstack.delivery.store import HeaderValues

from mailstack.base.parallel import PerProcess
from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 2000
_BATCH = 500  # uids per statement: below SQLite's default 999-variable limit


def _setup(db: sqlite3.Connection) -> None:
    # Per connection, and the default (FULL) fsyncs the WAL at every commit: a first header
    # fetch of 100,000 messages commits 200 batches. The rows are a cache; a crash that
    # loses the last commits loses only rows made again when next needed.
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute(HEADERS_SCHEMA)


class HeaderTable:
    """The `headers` table of one folder's index file."""

    def __init__(self, folder_dir: Path) -> None:
        self.path = folder_dir / INDEX_FILE
        _TABLES.register(str(folder_dir), self)
        self._lock = threading.Lock()
        self._filling = threading.Lock()  # `filling`: sessions filling rows take turns
        self._db: sqlite3.Connection | None = None
        self._inode = 0
        # Every row's key as of `_version` (PRAGMA data_version: it moves when another
        # connection commits), so a repeated SEARCH need not re-read every key: UIDs in an
        # array and interned base names (the index holds the same strings), 16 bytes a row;
        # a dict of fresh ints and strings cost about 180 (`_Keys`).
        self._rows: _Keys | None = None
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
            db = open_shared(
                self.path, _setup, timeout_s=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
            )
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
        ordered = _in_uid_order(wanted)
        out: dict[int, tuple[bytes, bytes | None]] = {}
        with self._lock:
            db = self._connect()
            if db is None:
                return out
            try:
                for start in range(0, len(ordered), _BATCH):
                    chunk = ordered[start : start + _BATCH]
                    marks = ",".join("?" * len(chunk))
                    rows = db.execute(
                        "SELECT uid, base, raw, envelope FROM headers"  # noqa: S608
                        f" WHERE uid IN ({marks}) ORDER BY uid",
                        [uid for uid, _ in chunk],
                    )
                    for uid, row in _join(chunk, rows):
                        if row is not None:
                            out[uid] = (bytes(row[2]), None if row[3] is None else bytes(row[3]))
            except sqlite3.Error as exc:
                self._failed("read", exc)
                return {}
        return out

    def put(self, rows: Iterable[HeaderValues]) -> None:
        """Store rows (replacing older ones), in one transaction; best effort. The values are
        the table's columns in order (`exact` a bool, which SQLite stores as 0 or 1)."""
        batch = rows if isinstance(rows, Sequence) else list(rows)
        self._write("INSERT OR REPLACE INTO headers VALUES (?, ?, ?, ?, ?, ?)", batch)
        if batch:
            with self._lock:
                self._rows = None  # our own commits do not move data_version: scan again

    def writer(self) -> Callable[[Sequence[HeaderValues]], None]:
        """`put` as a function any process can call (it pickles): worker processes filling
        rows store them themselves (imap/header_index.py), so the serving process neither
        receives them nor takes turns for the GIL with its sessions to write them."""
        return functools.partial(put_rows, str(self.path.parent))

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
        ENVELOPE, in UID order (all of them when the table is unusable): one scan, merged
        with `wanted` in UID order, so nothing per message is held but the answer."""
        no_row: list[int] = []
        no_envelope: list[int] = []
        ordered = _in_uid_order(wanted)
        if not ordered:
            return no_row, no_envelope
        # Only the UIDs' range: a header fetch asks about a folder a part at a time.
        sql = (
            "SELECT uid, base, envelope IS NOT NULL FROM headers"
            " WHERE uid BETWEEN ? AND ? ORDER BY uid"
        )
        span = (ordered[0][0], ordered[-1][0])
        with self._lock:
            db = self._connect()
            try:
                rows: Iterable[tuple[int, str, int]] = () if db is None else db.execute(sql, span)
                for uid, row in _join(ordered, rows):
                    if row is None:
                        no_row.append(uid)
                        no_envelope.append(uid)
                    elif not row[2]:
                        no_envelope.append(uid)
            except sqlite3.Error as exc:
                self._failed("read", exc)
                uids = [uid for uid, _ in ordered]
                return uids, list(uids)
        return no_row, no_envelope

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
        is unusable. One scan merged with `wanted` in UID order: what is held is the answer
        and the rows' keys (`_rows`), not a map of `wanted` per call."""
        where = " AND ".join(
            "(plain IS NULL OR " + ("exact = 0 OR " if strict else "") + "instr(plain, ?) > 0)"
            for _, strict in terms
        )
        needles = [t for t, _ in terms]
        found: dict[int, bytes] = {}
        absent: set[int] = set()
        with self._lock:
            db = self._connect()
            if db is None:
                return None
            try:
                version = db.execute("PRAGMA data_version").fetchone()[0]
                known = self._rows if version == self._version else None
                if known is not None and known.covers(wanted):
                    # Every wanted row is there and nobody else wrote since: the matches only.
                    base_of = _lookup(wanted)
                    sql = f"SELECT uid, base, raw FROM headers WHERE {where or '1'}"  # noqa: S608
                    for uid, base, raw in db.execute(sql, needles):
                        if base_of(uid) == base:
                            found[uid] = bytes(raw)
                else:
                    # One scan: every row's key (which rows are current), the raw lines of
                    # those that pass the pre-filter.
                    sql = (
                        f"SELECT uid, base, CASE WHEN {where or '1'} THEN raw END"  # noqa: S608
                        " FROM headers ORDER BY uid"
                    )
                    keys = _Keys()
                    rows = _recording(db.execute(sql, needles), keys)
                    for uid, row in _join(wanted, rows):
                        if row is None:
                            absent.add(uid)
                        elif row[2] is not None:
                            found[uid] = bytes(row[2])
                    self._rows, self._version = keys, version
            except sqlite3.Error as exc:
                self._failed("search", exc)
                return None
        return found, absent


class _Keys:
    """(uid, base name) of every row, in UID order: an array and a list of interned names."""

    __slots__ = ("bases", "uids")

    def __init__(self) -> None:
        self.uids = array("q")
        self.bases: list[str] = []

    def add(self, uid: int, base: str) -> None:
        self.uids.append(uid)
        self.bases.append(sys.intern(base))

    def covers(self, wanted: Sequence[tuple[int, str]]) -> bool:
        """Has every (uid, base) of `wanted` a row?"""
        uids, bases = self.uids, self.bases
        for uid, base in wanted:
            i = bisect.bisect_left(uids, uid)
            if i == len(uids) or uids[i] != uid or bases[i] != base:
                return False
        return True


def _recording(
    rows: Iterable[tuple[int, str, bytes | None]], keys: _Keys
) -> Iterator[tuple[int, str, bytes | None]]:
    """`rows`, each one's key added to `keys` on the way."""
    for row in rows:
        keys.add(row[0], row[1])
        yield row


_TABLES = PerProcess(lambda folder_dir: HeaderTable(Path(folder_dir)))


def put_rows(folder_dir: str, rows: Sequence[HeaderValues]) -> None:
    """`HeaderTable.put` on the table of the folder at `folder_dir` (`HeaderTable.writer`)."""
    _TABLES.get(folder_dir).put(rows)


def _in_uid_order(wanted: Sequence[tuple[int, str]]) -> Sequence[tuple[int, str]]:
    """`wanted` itself when it is in UID order (every caller passes a folder's messages,
    which are), else a sorted copy."""
    last = -1
    for uid, _ in wanted:
        if uid <= last:
            return sorted(wanted)
        last = uid
    return wanted


def _lookup(wanted: Sequence[tuple[int, str]]) -> Callable[[int], str | None]:
    """uid -> base name in `wanted`, by bisection: a dict of 100,000 pairs per call cost
    about 10 MB a session while eight sessions searched at once."""
    ordered = _in_uid_order(wanted)

    def base_of(uid: int) -> str | None:
        i = bisect.bisect_left(ordered, uid, key=_first)
        return ordered[i][1] if i < len(ordered) and ordered[i][0] == uid else None

    return base_of


def _first(pair: tuple[int, str]) -> int:
    return pair[0]


_Row = TypeVar("_Row", bound=tuple[Any, ...])


def _join(
    wanted: Sequence[tuple[int, str]], rows: Iterable[_Row]
) -> Iterator[tuple[int, _Row | None]]:
    """(uid, its current row or None) for each of `wanted`, in UID order; `rows` are
    (uid, base, ...) in UID order. A row whose base name is not the message's is stale
    (module docstring) and counts as absent."""
    it = iter(rows)
    row = next(it, None)
    for uid, base in _in_uid_order(wanted):
        while row is not None and row[0] < uid:
            row = next(it, None)
        if row is not None and row[0] == uid and row[1] == base:
            yield uid, row
        else:
            yield uid, None
    for _ in it:  # `rows` may record what it passes (`_recording`): let it see them all
        pass
