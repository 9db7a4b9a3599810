"""One folder's Dovecot control files as this process last read or wrote them
(delivery/index.py): `dovecot-uidlist` (UIDs) and `dovecot-keywords` (letters -> keywords).

Each is re-read only when its (inode, size, mtime) changed. Dovecot and other mailstack
processes only ever append uidlist records (the inode stays, the file grows) or replace the
whole file (a rename over it, a new inode), so an append is parsed from where the last parse
stopped: a whole parse of a 100,000-line file per delivery would cost more than the delivery.
A uidlist that does not parse starts over with a new UIDVALIDITY, as Dovecot does.

Invariant: the caller holds the folder's `dovecot-uidlist.lock` (delivery/dotlock.py) around
every method but `UidlistFile.fsync`, so our own writes can record the file's new stamp
without a race.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mailstack.delivery.index_entry import Stamp
from mailstack.delivery.index_entry import stamp as file_stamp
from mailstack.delivery.keywords import KeywordMap
from mailstack.delivery.uidmap import UidList, UidListError, UidRecord, serialize_records

from mailstack.base.fsutil import atomic_write, fsync_path

log = logging.getLogger(__name__)

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
FILE_MODE = 0o600  # what the index and the store write in a Maildir: for the owner only


@dataclass(frozen=True, slots=True)
class UidlistChange:
    """What `UidlistFile.load` found: the file replaced (every UID may mean something else),
    or `appended` records added by another process."""

    replaced: bool
    appended: tuple[UidRecord, ...] = ()


class UidlistFile:
    """The parsed uidlist of the folder directory `folder`, and `uid_of` (base name -> UID)."""

    def __init__(self, folder: Path, next_uid_validity: Callable[[], int]) -> None:
        self.path = folder / UIDLIST
        self._next_uid_validity = next_uid_validity
        self._uidlist: UidList | None = None
        self._stamp: Stamp | None = None
        self._parsed = 0  # bytes of the file parsed: up to the last complete line
        self.uid_of: dict[str, int] = {}
        # The records themselves are not kept (`uid_of` has what the index needs; a record
        # object per message cost about 64 bytes): their count, the last UID (appends must
        # ascend from it), and the file to re-read when a rewrite needs them all.
        self._count = 0
        self._last_uid = 0

    @property
    def uidlist(self) -> UidList:
        if self._uidlist is None:
            raise RuntimeError("FolderIndex.sync() first")
        return self._uidlist

    @property
    def record_count(self) -> int:
        return self._count

    def is_current(self) -> bool:
        """The file is as last parsed (one stat)."""
        return self._stamp is not None and file_stamp(self.path) == self._stamp

    def load(self) -> UidlistChange | None:
        """Bring the parse up to date with the file; None when it did not change."""
        path = self.path
        stamp = file_stamp(path)
        if stamp is not None and stamp == self._stamp:
            return None
        if stamp is not None:
            appended = self._extend(stamp)
            if appended is not None:
                return UidlistChange(replaced=False, appended=appended)
        uidlist: UidList | None = None
        if stamp is not None:
            try:
                data = path.read_bytes()
                uidlist = UidList.parse(data)
                self._parsed = data.rfind(b"\n") + 1
            except (UidListError, FileNotFoundError) as exc:
                # Dovecot also starts over with a new UIDVALIDITY (clients resync) on a broken
                # uidlist: keeping a UID whose meaning we cannot know would be worse.
                log.warning("%s: %s; assigning a new UIDVALIDITY", path, exc)
        if uidlist is None:
            uidlist = UidList(uid_validity=self._next_uid_validity())
            data = uidlist.serialize()
            atomic_write(path, data, mode=FILE_MODE)
            stamp = file_stamp(path)
            self._parsed = len(data)
        self._uidlist, self._stamp = uidlist, stamp
        self._keep(uidlist.records, replaced=True)
        return UidlistChange(replaced=True)

    def _keep(self, records: list[UidRecord], *, replaced: bool = False) -> None:
        """Take `records` (parsed or assigned) into `uid_of` and forget them."""
        if replaced:
            self.uid_of = {r.base: r.uid for r in records}
            self._count, self._last_uid = 0, 0
        else:
            for record in records:
                self.uid_of[record.base] = record.uid
        self._count += len(records)
        if records:
            self._last_uid = records[-1].uid
        self.uidlist.records = []

    def _extend(self, stamp: Stamp) -> tuple[UidRecord, ...] | None:
        """Another process (a second mailstack process, Dovecot) appended records: parse just
        those. Appends keep the inode and only grow the file; every other change is a rename
        over it, a new inode, which takes the full parse (None)."""
        known, uidlist = self._stamp, self._uidlist
        if known is None or uidlist is None or stamp[0] != known[0] or stamp[1] <= known[1]:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_ino != known[0]:
                return None
            tail = os.pread(fd, st.st_size - self._parsed, self._parsed)
        finally:
            os.close(fd)
        complete = tail.rfind(b"\n") + 1
        try:
            uidlist.extend(tail[:complete], last=self._last_uid)
        except UidListError:
            uidlist.records = []
            return None  # the full parse decides what to do with it
        appended = tuple(uidlist.records)
        self._keep(uidlist.records)
        self._parsed += complete
        self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        return appended

    def append(self, records: list[UidRecord], *, sync: bool = True) -> None:
        """Append UID lines; `sync=False` leaves the fsync to the caller (`fsync`), who must
        make it before promising the UIDs to anyone."""
        path = self.path
        self._keep(records)  # `UidList.assign` made them
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
        try:
            # Under the lock, right after load(): when we parsed the file to its end, it ends
            # with a newline and nothing needs checking.
            known = self._stamp
            whole = known is not None and self._parsed == known[1] > 0
            size = 0 if whole else os.fstat(fd).st_size
            if not whole and (size == 0 or os.pread(fd, 1, size - 1) != b"\n"):
                # A writer died mid-line: appending would glue onto its torn line. Replace the
                # file instead (the parse ignored the torn tail).
                os.close(fd)
                fd = -1
                current = self._reread()
                current.records += records
                atomic_write(path, current.serialize(), mode=FILE_MODE)
            else:
                os.write(fd, serialize_records(records))
                if sync:
                    os.fsync(fd)  # the UID is promised (APPENDUID) once we return
                st = os.fstat(fd)
                self._stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
                self._parsed = st.st_size
                return
        finally:
            if fd >= 0:
                os.close(fd)
        self._stamp = file_stamp(path)
        self._parsed = self._stamp[1] if self._stamp else 0

    def fsync(self) -> None:
        """Make the lines of `append(sync=False)` durable (no lock needed)."""
        fsync_path(self.path)

    def rewrite(self, listing: Mapping[str, str]) -> None:
        """Replace the file, keeping only the records whose files are in `listing` (base ->
        the rest of the current name: delivery/index_listing.py), each under its current
        name."""
        uidlist = self._reread()
        uidlist.records = [
            UidRecord(uid=r.uid, name=r.base + listing[r.base], ext=r.ext)
            for r in uidlist.records
            if r.base in listing
        ]
        data = uidlist.serialize()
        atomic_write(self.path, data, mode=FILE_MODE)
        self._stamp = file_stamp(self.path)
        self._parsed = len(data)
        self._keep(uidlist.records, replaced=True)

    def _reread(self) -> UidList:
        """Every record, from the file (the caller loaded it under the lock: all our
        records are written there), with this process's header values (its next UID)."""
        whole = UidList.parse(self.path.read_bytes())  # a torn last line is ignored
        known = self.uidlist
        whole.uid_validity, whole.guid = known.uid_validity, known.guid
        whole.next_uid = max(whole.next_uid, known.next_uid)
        whole.extra_header = known.extra_header
        return whole


class KeywordsFile:
    """The keyword letters of the folder directory `folder` (delivery/keywords.py)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / KEYWORDS
        self.keywords = KeywordMap([])
        self._stamp: Stamp | None = None

    def is_current(self) -> bool:
        """The file is as last read, or still absent (one stat)."""
        return file_stamp(self.path) == self._stamp

    def load(self) -> bool:
        """Re-read the file if it changed; True when it did (flags may read differently)."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return False
        try:
            self.keywords = KeywordMap.parse(self.path.read_bytes()) if stamp else KeywordMap([])
        except FileNotFoundError:
            self.keywords = KeywordMap([])
        self._stamp = stamp
        return True

    def add(self, keywords: Iterable[str]) -> bool:
        """Give letters to the keywords that have none and write the file; True if any did."""
        if not self.keywords.add(k for k in keywords if not k.startswith("\\")):
            return False
        atomic_write(self.path, self.keywords.serialize(), mode=FILE_MODE)
        self._stamp = file_stamp(self.path)
        return True

    def replace(self, keywords: KeywordMap) -> None:
        atomic_write(self.path, keywords.serialize(), mode=FILE_MODE)
        self.keywords = KeywordMap(list(keywords.names))
        self._stamp = file_stamp(self.path)
