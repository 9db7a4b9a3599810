"""The in-memory index of one Maildir folder: what a snapshot needs without re-reading the disk.

A folder's state is three things on disk: the `dovecot-uidlist` (UIDs), the `dovecot-keywords`
(letters -> keywords) and the names in `new/` and `cur/` (which messages exist, their flags,
and, through the S=/W= fields, their sizes). `FolderIndex` keeps the parse of each and re-reads
one only when it changed:

- uidlist and keywords: when their (inode, size, mtime) differ (their parse and
  writes: delivery/index_files.py). Every writer of either holds the folder's
  `dovecot-uidlist.lock` (Dovecot does too), so after our own write we can record the new
  stamp without a race.
- the listing (delivery/index_listing.py): when the mtime of `new/` or `cur/` differs. A
  change landing in the same timestamp tick as our scan (or as our own rename) would not move
  the mtime, so while the mtime is less than `DIR_SETTLE_NS` old it proves nothing: one
  verifying re-list follows once it has settled. Foreign changes in that window are seen
  within about `DIR_SETTLE_NS` rather than at once; in exchange our own renames (STORE,
  EXPUNGE, APPEND) update the index in place and never re-list a 100,000-message folder.

Our own changes (`added_many`, `renamed`, `removed`) update the cached entries in place (O(log
n) per message) and mark their UIDs for the persistent index (delivery/index_db.py), which
gives them a new MODSEQ on the next `entries()`; anything found by a re-list is compared and
recorded the same way. Records of expunged messages stay in `dovecot-uidlist` (a record
whose file is gone is dead, as after any `rm`; Dovecot reads such files) until they are a
quarter of it: rewriting a 100,000-line file costs seconds in Python, an EXPUNGE should not.

The internal date is the file's mtime (as Dovecot: RFC 3501 §2.3.3 INTERNALDATE), so each file is
stat()ed once, the first time it is seen; sizes without S=/W= fields (files other software
wrote) are computed once likewise. Both are recorded in the index file, so a later process
takes them from there (`IndexDb.file_meta`) and stats only files it has no record of.

Invariant: every method except `locked()` is called with the folder lock held (`with
index.locked(): ...`); that lock is Dovecot's dotlock, so a Dovecot working on the same Maildir
sees consistent files too.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from mailstack.delivery.dotlock import DotLock
from mailstack.delivery.index_db import IndexDb, IndexRebuiltError
from mailstack.delivery.index_entry import (
    ByUid,
    Entry,
    Rows,
    SyncResult,
    measure,
    split_name,
    touched_rows,
    uid_key,
    with_modseq,
)
from mailstack.delivery.index_files import UIDLIST, KeywordsFile, UidlistFile
from mailstack.delivery.index_listing import clean_tmp, list_dirs
from mailstack.delivery.keywords import KeywordMap, flags_from_letters, split_info
from mailstack.delivery.layout import time_from_name
from mailstack.delivery.store import FolderNotFoundError, MessageInfo
from mailstack.delivery.uidmap import UidList, UidRecord

log = logging.getLogger(__name__)

DIR_SETTLE_NS = 2_000_000_000  # 2 s: well above any file system's mtime granularity
DEAD_RECORDS_MIN = 1000  # records of expunged messages a uidlist keeps before its rewrite
BULK_PUT = 64  # file sizes dropped from _meta at once above which _rebuild shrinks that dict
_NO_FLAGS: frozenset[str] = frozenset()


class FolderIndex:
    """Cached view of one folder directory (see module docstring for the invariants)."""

    def __init__(self, path: Path, next_uid_validity: Callable[[], int]) -> None:
        self.path = path
        # new/ and cur/ as str, made once: stat()ed on every command of every session
        self._new_dir, self._cur_dir = os.path.join(path, "new"), os.path.join(path, "cur")
        self._file = UidlistFile(path, next_uid_validity)  # delivery/index_files.py
        # One lock object for the folder, reused: its threading.Lock lets a single thread of
        # the process hold it at a time. tmp/ is what mailstack processes queue on: a directory
        # every folder has and nothing else flocks (the quota flocks the account root, which is
        # INBOX's folder directory itself).
        self._lock = DotLock(path / UIDLIST, queue_on=path / "tmp")
        self._kw = KeywordsFile(path)  # delivery/index_files.py
        # file name suffix (":2,FLAGS") -> flags under _keywords: one shared frozenset per
        # combination (a folder has a handful), not 100,000 copies.
        self._flags_of: dict[str, frozenset[str]] = {}
        # base -> suffix (Entry.suffix) of every file in new/ and cur/, and the bases of those
        # in new/ (a handful): a (sub, name) tuple per message would cost 56 bytes more.
        self._listing: dict[str, str] = {}
        self._listing_new: set[str] = set()
        self._listing_stamp: tuple[int, int] | None = None
        self._verify_after_ns = 0  # re-list once the directories' mtimes are this old
        self._listed = False  # _listing came from a full scan at least once
        self._unrecorded: list[tuple[int, str, str]] = []  # (uid, sub, name): record_own_changes
        # base -> (mtime, S, W) of files that have no entry (yet): an entry holds its own, and
        # a second tuple per message would cost about 100 bytes (_make_entry, _rebuild).
        self._meta: dict[str, tuple[float, int, int]] = {}
        self._entries: list[Entry] | None = None  # cached result of entries(); None = changed
        # The entries last built (`_entries` itself while that is current) and their UIDs, a
        # parallel array: UID -> entry by bisection (ByUid), not a dict of every message.
        self._table: list[Entry] = []
        self._uids = array("Q")
        self._dead_records = 0  # uidlist records whose files we removed (module docstring)
        self._unlinked: set[int] = set()  # UIDs whose files we removed since the last record
        self._in_new: set[int] = set()  # UIDs of entries in new/
        self._view: tuple[tuple[MessageInfo, ...], frozenset[int], ByUid] | None = None
        # Entries are reused across rebuilds through _table (matched on UID and base name);
        # True when none may be (the keyword letters changed what flags they stand for).
        self._remake_entries = False
        # The persistent side (MODSEQs, expunge log): delivery/index_db.py. What changed since
        # its last reconcile: these UIDs, or anything at all when `_touched_all`.
        self.db = IndexDb(path)
        self._touched: set[int] = set()
        self._touched_all = True

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[FolderIndex]:
        lock = self._lock
        try:
            lock.acquire()
        except (FileNotFoundError, NotADirectoryError):
            raise FolderNotFoundError(f"folder vanished: {self.path.name}") from None
        try:
            yield self
        finally:
            lock.release()

    @contextlib.contextmanager
    def looking(self) -> Iterator[FolderIndex]:
        """The in-process lock only (no dotlock, no flock): for `is_current`."""
        with self._lock.in_process():
            yield self

    @contextlib.contextmanager
    def glancing(self) -> Iterator[bool]:
        """`looking()` if no other thread of this process holds the index now: yields whether
        it could look (never waits)."""
        with self._lock.in_process_now() as free:
            yield free

    def is_current(self) -> bool:
        """This index already holds everything the folder's files and the index file say, as
        far as four stat() calls and one small SQLite read tell: `sync` would find nothing,
        and what changed after any MODSEQ is in the index (changes made by this process's
        sessions are). Every command of every session asks what changed; taking the dotlock
        (a file made and removed) and four SQLite queries to learn that was most of a NOOP.
        A re-list pending for directory mtimes too recent to trust counts once due, as in
        `_load_listing`: after every flag change (a rename in cur/) it is pending for two
        seconds. Called within `looking()`, `glancing()` or `locked()`."""
        if (
            self._entries is None
            or self._touched
            or self._touched_all
            or self._unrecorded
            or (self._verify_after_ns and time.time_ns() >= self._verify_after_ns)
            or self._listing_stamp is None
        ):
            return False
        try:
            if self._dir_stamp() != self._listing_stamp:
                return False
        except OSError:
            return False  # the folder went away: sync says so
        return (
            self._file.is_current()
            and self._kw.is_current()
            and not self.db.changed_elsewhere(consume=False)
        )

    # -- reading state -------------------------------------------------------------------------
    @property
    def uidlist(self) -> UidList:
        return self._file.uidlist

    @property
    def keywords(self) -> KeywordMap:
        return self._kw.keywords

    def _load_uidlist(self) -> None:
        change = self._file.load()
        if change is None:
            return
        self._entries = None
        if change.replaced:
            # UIDs may mean other files now: keep the entries' (mtime, S, W) by base name,
            # which _rebuild no longer finds through the UIDs.
            self._meta.update((e.info.key, e.meta) for e in self._table)
            self._touched_all = True
            self._listing_stamp = None  # rewritten by someone: files came or went, re-list
            return
        self._touched.update(r.uid for r in change.appended)
        if change.appended:
            self._listing_stamp = None  # others numbered new files: re-list to find them

    def _load_keywords(self) -> None:
        if self._kw.load():
            self._flags_of.clear()
            self._remake_entries = True  # flags depend on the letter map
            self._entries = None
            self._touched_all = True

    def _dir_stamp(self) -> tuple[int, int]:
        return (
            os.stat(self._new_dir).st_mtime_ns,
            os.stat(self._cur_dir).st_mtime_ns,
        )

    def _load_listing(self) -> bool:
        """Re-list new/ and cur/ if they changed; True if files appeared or vanished that this
        index did not add or remove itself (someone else wrote: Dovecot, a script, a CLI)."""
        stamp = self._dir_stamp()
        now_ns = time.time_ns()
        if stamp == self._listing_stamp and not (
            self._verify_after_ns and now_ns >= self._verify_after_ns
        ):
            return False
        if not self._listed:
            clean_tmp(self.path)
            # A restart: what the index file recorded of each file spares a stat() apiece.
            self._meta.update(self.db.file_meta())
        listing, in_new = list_dirs(self.path)
        if self._listed and self._listing.keys() - listing.keys():
            # A file moved from new/ to cur/ between our two listdir() calls is in neither
            # listing; taking that as an expunge would be final (VANISHED UIDs never come
            # back). Files that vanished must be missing from a second listing too.
            listing, in_new = list_dirs(self.path)
        settled = all(now_ns - ns > DIR_SETTLE_NS for ns in stamp)
        self._listing_stamp = stamp
        self._verify_after_ns = 0 if settled else max(stamp) + DIR_SETTLE_NS
        if listing == self._listing and in_new == self._listing_new and self._listed:
            return False  # relisted (mtime too recent to trust) but nothing changed
        foreign = self._listed and self._listing.keys() != listing.keys()
        if self._listed and not self._touched_all:
            old, old_new = self._listing, self._listing_new
            for base in old.keys() | listing.keys():
                if old.get(base) != listing.get(base) or (base in old_new) != (base in in_new):
                    self._touch(base)
        for base in self._listing.keys() - listing.keys():  # expunged elsewhere: forget them
            self._meta.pop(base, None)
        self._listed = True
        self._listing, self._listing_new = listing, in_new
        self._entries = None
        self._unrecorded = []  # in the listing now: entries() records them
        return foreign

    def sync(self) -> SyncResult:
        """Bring the index up to date, giving UIDs to files nobody numbered yet."""
        self._load_uidlist()
        self._load_keywords()
        if self.db.changed_elsewhere():
            # Another mailstack process (an SMTP worker, the LDA, a second serve) recorded a
            # change: re-list now rather than trust an mtime that may not have moved.
            self._listing_stamp = None
        foreign = self._load_listing()
        if self._entries is not None:
            # Nothing was re-read or changed since the last entries(): all files are numbered.
            return SyncResult(foreign_changes=foreign)
        newcomers = [base for base in self._listing if base not in self._file.uid_of]
        if newcomers:
            # Arrival order: names begin with the delivery time (Maildir spec).
            newcomers.sort(key=lambda b: (time_from_name(b) or 0.0, b))
            listing = self._listing
            self._append_records(self.uidlist.assign(b + listing[b] for b in newcomers))
        return SyncResult(foreign_changes=foreign or bool(newcomers))

    def _touch(self, base: str) -> None:
        uid = self._file.uid_of.get(base)
        if uid is not None:
            self._touched.add(uid)

    @property
    def highest_modseq(self) -> int:
        """The folder's HIGHESTMODSEQ as of the last entries() (RFC 7162 §3.1.2.1)."""
        self.entries()
        return self.db.highest_modseq

    def expunged_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after `modseq` (None: the log does not reach back so far)."""
        self.entries()
        return self.db.expunged_since(modseq)

    def record_own_changes(self) -> None:
        """Hand our own changes to the persistent index now, so other processes see them.

        A process that never listed the folder records just the files it numbered since the
        last call and forgets them: building entries for every file it ever delivered made
        each delivery of an SMTP worker cost time in proportion to its past deliveries.
        """
        if self._listed or self._entries is not None:
            self.entries()
            return
        made = (self._make_entry(uid, sub, *split_name(n)) for uid, sub, n in self._unrecorded)
        fresh = {e.uid: e for e in made if e is not None}
        touched, unlinked = self._take_touched()
        try:
            self._reconcile(*touched_rows(touched, unlinked, fresh, blind=True))
        finally:
            for _uid, _sub, name in self._unrecorded:
                base = split_info(name)[0]
                self._listing.pop(base, None)
                self._listing_new.discard(base)
                self._meta.pop(base, None)
            self._unrecorded = []

    def entries(self) -> list[Entry]:
        """Every message, in UID order (after sync()), each with its MODSEQ."""
        entries = self._entries
        if entries is None:
            entries = self._rebuild()
        elif self._touched or self._touched_all:
            self._record(entries)
        return entries

    def _rebuild(self) -> list[Entry]:
        made: set[int] = set()
        entries = []
        # The previous entries, by UID (a map made for this pass only, and none on a first
        # open); an entry is reused when its UID, base, directory and suffix match.
        old = dict(zip(self._uids, self._table, strict=True)) if self._table else {}
        remake = self._remake_entries
        self._remake_entries = False
        meta, popped = self._meta, 0
        in_new = self._listing_new
        # What was made is touched, unless the whole folder is compared anyway (a first
        # open: a set of every UID would only add to its peak).
        track = not (self._touched_all and self._listed)
        for base, suffix in self._listing.items():
            sub = "new" if base in in_new else "cur"
            uid = self._file.uid_of.get(base)
            if uid is None:
                continue  # appeared after our sync; the next one numbers it
            entry = old.get(uid)
            if entry is not None and entry.info.key != base:
                entry = None  # the UID means another message now (a new UIDVALIDITY)
            if entry is None or remake or entry.suffix != suffix or entry.sub != sub:
                modseq = entry.info.modseq if entry and not remake else 0
                entry = self._make_entry(uid, sub, base, suffix, modseq, entry, remember=False)
                if entry is None:
                    continue
                if track:
                    made.add(uid)
            if meta and meta.pop(base, None) is not None:  # the entry holds it now
                popped += 1
            entries.append(entry)
        if popped > BULK_PUT:
            self._meta = dict(meta)  # a dict keeps its table after pops: shrink it to the rest
        del old
        entries.sort(key=uid_key)
        self._entries = self._table = entries
        self._uids = array("Q", [e.uid for e in entries])
        self._in_new = {e.uid for e in entries if e.sub == "new"}
        self._view = None
        self._touched |= made
        self._record(entries)
        return entries

    def _position(self, uid: int) -> int | None:
        """Index of `uid` in the current entries (None: not there, or none are current)."""
        if self._entries is None:
            return None
        uids = self._uids
        i = bisect.bisect_left(uids, uid)
        return i if i < len(uids) and uids[i] == uid else None

    def _by_uid(self) -> ByUid:
        """The entries last built, by UID (current ones once entries() ran)."""
        return ByUid(self._table, self._uids)

    def _put(self, entry: Entry) -> bool:
        """Replace the cached entry of `entry.uid` in place; False if it has none."""
        i = self._position(entry.uid)
        if i is None or self._entries is None:
            return False
        self._entries[i] = entry
        if entry.sub == "new":
            self._in_new.add(entry.uid)
        else:
            self._in_new.discard(entry.uid)
        self._view = None
        return True

    def _record(self, entries: list[Entry]) -> None:
        """Hand what changed to the persistent index and give entries their MODSEQs."""
        # A process that never listed the folder (an SMTP worker delivering) knows only what
        # it touched: it records just that, never a whole-folder compare (which would take
        # every message it has not seen for expunged).
        blind = not self._listed
        partial = blind or (
            not self._touched_all and self.db.is_complete_for(self.uidlist.uid_validity)
        )
        touched, unlinked = self._take_touched()
        if not blind:
            self._touched_all = False
        if not partial:
            self._reconcile(entries, None)
            return
        chosen, removed = touched_rows(touched, unlinked, self._by_uid(), blind=blind)
        self._reconcile(chosen, removed, everything=None if blind else entries)

    def _take_touched(self) -> tuple[set[int], set[int]]:
        """(UIDs touched, UIDs whose files we unlinked) since the last record; both reset."""
        touched, unlinked = self._touched, self._unlinked
        self._touched, self._unlinked = set(), set()
        return touched, unlinked

    def _reconcile(
        self, chosen: list[Entry], removed: list[int] | None, everything: list[Entry] | None = None
    ) -> None:
        """Record `chosen` (and `removed`, None: whatever `chosen` lacks) in the persistent
        index and give them their MODSEQs. When the index file was rebuilt meanwhile, the
        whole folder (`everything`) is recorded instead, when we have it."""
        uid_validity = self.uidlist.uid_validity
        try:
            modseqs = self.db.reconcile(uid_validity, Rows(chosen), removed)
        except IndexRebuiltError:
            if everything is not None:
                chosen, removed = everything, None
            modseqs = self.db.reconcile(uid_validity, Rows(chosen), removed)
        entries = self._entries
        if entries is not None and chosen is entries:
            # Every entry (a first open gives each its MODSEQ): replaced in place, one pass,
            # so that each old entry is freed as its successor comes (a list of the new
            # ones held both). Only MODSEQs changed: new/ membership stays as it is.
            for i, entry in enumerate(entries):
                modseq = modseqs.modseq(entry.uid)
                if entry.info.modseq != modseq:
                    entries[i] = with_modseq(entry, modseq)
                    self._view = None
            return
        for entry in chosen:
            modseq = modseqs.modseq(entry.uid)
            if entry.info.modseq != modseq:
                self._put(with_modseq(entry, modseq))

    def changed_since(self, modseq: int) -> list[Entry]:
        """Messages whose MODSEQ is above `modseq`, in UID order (CONDSTORE, and how sessions
        catch up without comparing whole folders)."""
        self.entries()
        by_uid = self._by_uid()
        found = (by_uid.get(u) for u in self.db.changed_since(modseq))
        return [e for e in found if e is not None]

    def view(self) -> tuple[tuple[MessageInfo, ...], frozenset[int], ByUid]:
        """(messages in UID order, UIDs still in new/, entries by UID), cached until a change."""
        entries = self.entries()
        if self._view is None:
            self._view = (tuple(entries), frozenset(self._in_new), self._by_uid())
        return self._view

    def in_new(self) -> frozenset[int]:
        """UIDs of the messages still in new/ (RFC 3501 \\Recent for EXAMINE and STATUS)."""
        self.entries()
        return frozenset(self._in_new)

    def entry(self, uid: int) -> Entry | None:
        self.entries()
        return self._by_uid().get(uid)

    def entries_by_uid(self) -> Mapping[int, Entry]:
        self.entries()
        return self._by_uid()

    def _make_entry(
        self,
        uid: int,
        sub: str,
        base: str,
        suffix: str,
        modseq: int = 0,
        prev: Entry | None = None,
        *,
        remember: bool = True,
    ) -> Entry | None:
        """The entry of the file `base` + `suffix` (both interned: split_name): (mtime, S, W)
        from `prev` (its entry so far), `_meta`, or, on first sight, the file itself (kept in
        `_meta` until an entry is cached, unless `remember` is false: _rebuild caches it at
        once, and a tuple per message held meanwhile was most of a first open's peak)."""
        if prev is not None and prev.info.key == base:
            mtime, size, vsize = prev.info.internal_date, prev.disk_size, prev.info.size
        else:
            meta = self._meta.get(base)
            if meta is None:
                where = self._cur_dir if sub == "cur" else self._new_dir
                meta = measure(f"{where}/{base}{suffix}", base)  # os.path.join: 4 µs a file
                if meta is None:
                    return None
                if remember:
                    self._meta[base] = meta
            mtime, size, vsize = meta
        flags = self._flags_of.get(suffix) if sub == "cur" else _NO_FLAGS
        if flags is None:
            letters = split_info(suffix)[1]
            flags = self._flags_of[suffix] = flags_from_letters(letters, self._kw.keywords)
        return Entry(uid, flags, mtime, vsize, base, modseq, sub=sub, suffix=suffix, disk_size=size)

    # -- changing state (our own writes) -------------------------------------------------------
    def _append_records(self, records: list[UidRecord], *, sync: bool = True) -> None:
        """Append UID lines; `sync=False` leaves the fsync to the caller (`fsync_uidlist`),
        who must make it before promising the UIDs to anyone."""
        self._touched.update(r.uid for r in records)
        self._file.append(records, sync=sync)

    def added(self, sub: str, name: str, meta: tuple[float, int, int]) -> int:
        """We renamed `name` into `sub`/: number it and return the UID."""
        (uid,) = self.added_many([(sub, name, meta)])
        return uid

    def added_many(
        self, files: list[tuple[str, str, tuple[float, int, int]]], *, sync: bool = True
    ) -> list[int]:
        """Number files we renamed in, in order, with one uidlist append (one fsync; with
        `sync=False` the caller's `fsync_uidlist`, which may run after the lock is left)."""
        self._load_uidlist()
        for sub, name, meta in files:
            base, suffix = split_name(name)
            self._meta[base] = meta
            self._list(base, sub, suffix)
        self._note_own_change()
        records = self.uidlist.assign(name for _sub, name, _meta in files)
        if records:
            self._append_records(records, sync=sync)
        entries = self._entries
        if entries is None and not self._listed:
            # A process that never listed the folder (an SMTP worker) keeps only what it has
            # yet to record (`record_own_changes`), not an entry per file it ever delivered.
            pairs = zip(records, files, strict=True)
            self._unrecorded += [(r.uid, sub, name) for r, (sub, name, _meta) in pairs]
            return [r.uid for r in records]
        for record, (sub, name, _meta) in zip(records, files, strict=True):
            entry = None
            if entries is not None:
                entry = self._make_entry(record.uid, sub, *split_name(name))
            if entries is None or entry is None or (entries and entries[-1].uid >= entry.uid):
                self._entries = entries = None  # rebuilt on the next entries()
                continue
            entries.append(entry)  # new UIDs are the largest: the order holds
            self._uids.append(entry.uid)
            self._meta.pop(entry.info.key, None)  # the entry holds it now
            if sub == "new":
                self._in_new.add(entry.uid)
            self._view = None
        return [r.uid for r in records]

    def fsync_uidlist(self) -> None:
        """Make the UID lines of `added_many(sync=False)` durable (no lock needed)."""
        self._file.fsync()

    def renamed(self, base: str, sub: str, name: str) -> None:
        """We renamed a message file (flags, new/ -> cur/): update it in place."""
        suffix = sys.intern(name[len(base) :])
        self._touch(base)
        self._list(base, sub, suffix)
        self._note_own_change()
        uid = self._file.uid_of.get(base)
        old = self._by_uid().get(uid) if uid is not None else None
        entry = None
        if uid is not None and old is not None:
            entry = self._make_entry(uid, sub, old.key, suffix, old.info.modseq, old)
        if entry is None or not self._put(entry):
            self._entries = None

    def removed(self, bases: Iterable[str], *, rewrite: bool = False) -> None:
        """Files we unlinked: drop them from the listing and the entries; the uidlist is
        rewritten without them when `rewrite` or once dead records are many (module
        docstring)."""
        for base in list(bases):  # may be a generator over our own entries
            self._dead_records += 1
            self._touch(base)
            self._listing.pop(base, None)
            self._listing_new.discard(base)
            self._meta.pop(base, None)
            uid = self._file.uid_of.get(base)
            if uid is not None:
                self._unlinked.add(uid)
            i = self._position(uid) if uid is not None else None
            if i is not None and self._entries is not None and uid is not None:
                del self._entries[i]
                del self._uids[i]
                self._in_new.discard(uid)
                self._view = None
        self._note_own_change()
        records = self._file.record_count
        if rewrite or self._dead_records >= max(DEAD_RECORDS_MIN, records // 4):
            self.rewrite_uidlist()

    def _list(self, base: str, sub: str, suffix: str) -> None:
        """Enter a file we renamed into `sub`/ (its name: `base` + `suffix`) in the listing."""
        self._listing[base] = suffix
        if sub == "new":
            self._listing_new.add(base)
        else:
            self._listing_new.discard(base)

    def _note_own_change(self) -> None:
        """We renamed or unlinked in new/ or cur/: take the directories' new mtimes as known
        instead of re-listing, and verify once they have settled (module docstring)."""
        if self._listing_stamp is None:
            return  # a re-list is due anyway
        self._listing_stamp = self._dir_stamp()
        if not self._verify_after_ns:
            self._verify_after_ns = max(self._listing_stamp) + DIR_SETTLE_NS

    def rewrite_uidlist(self) -> None:
        """Replace the uidlist, keeping only records whose files exist, with current names."""
        # Only a complete, current listing may decide which records die: one holding just the
        # files this process added would drop every other message's UID.
        self._load_uidlist()
        self._load_listing()
        self._file.rewrite(self._listing)
        self._dead_records = 0

    def ensure_keywords(self, keywords: Iterable[str]) -> None:
        """Give letters to new keywords and persist dovecot-keywords (uidlist lock held)."""
        self._load_keywords()
        if self._kw.add(keywords):
            self._flags_of.clear()  # a letter that meant nothing may mean a keyword now

    def set_keywords(self, keywords: KeywordMap) -> None:
        self._kw.replace(keywords)
        self._flags_of.clear()
        self._remake_entries = True
        self._entries = None

    def claim_new(self) -> list[int]:
        """Move every numbered file of new/ into cur/ (RFC 3501 \\Recent goes to the claimer)."""
        claimed = []
        self.entries()
        by_uid = self._by_uid()
        for uid in sorted(self._in_new):
            entry = by_uid[uid]
            name = f"{entry.name}:2,"
            try:
                os.rename(self.path / "new" / entry.name, self.path / "cur" / name)
            except FileNotFoundError:
                continue  # someone else moved or removed it meanwhile
            self.renamed(entry.info.key, "cur", name)
            claimed.append(entry.uid)
        # No directory fsync: the message was durable in new/ before anyone could claim it.
        # A rename lost to a crash leaves it there with its UID (the uidlist names base
        # names) to be claimed again; \Recent is a session's matter. Dovecot's default
        # (mail_fsync = optimized) does not fsync this rename either.
        return claimed
