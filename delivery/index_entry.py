"""Values and helpers of delivery/index.py: one message file as the index knows it, the
entries' view by UID, and the pure functions that split names, measure files, pick the
touched entries and turn entries into persistent-index rows."""

from __future__ import annotations

import bisect
import functools
import os
import sys
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

from mailstack.delivery.index_db import Row, flag_text
from mailstack.delivery.layout import crlf_size, sizes_from_name
from mailstack.delivery.store import MessageInfo

Stamp = tuple[int, int, int]


def stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry(MessageInfo):
    """One message file as the index knows it: its `MessageInfo` (what snapshots hand out:
    the entry itself) and where the file is. One object, not an entry holding a
    MessageInfo: a second object per message cost about 50 bytes a message."""

    sub: str  # "new" or "cur"
    # The file name after the base (":2,FLAGS", or ""): one interned string shared by every
    # message with the same flags, instead of a name string apiece (about 100 bytes).
    suffix: str
    disk_size: int  # S=: bytes on disk (what the quota counts)

    @property
    def name(self) -> str:
        """The current file name, info included."""
        return self.key + self.suffix

    @property
    def info(self) -> MessageInfo:
        """The message as snapshots show it (sessions compare fields, not classes)."""
        return self

    @property
    def meta(self) -> tuple[float, int, int]:
        """(internal date, S, W) as `FolderIndex.added` takes it."""
        return (self.internal_date, self.disk_size, self.size)


@dataclass(frozen=True, slots=True)
class SyncResult:
    foreign_changes: bool  # files appeared or vanished that this process did not write/remove


def with_modseq(entry: Entry, modseq: int) -> Entry:
    """`entry` with another MODSEQ. Built directly: dataclasses.replace() per message cost
    more than the rest of a first open of a folder."""
    e = entry
    return Entry(
        e.uid,
        e.flags,
        e.internal_date,
        e.size,
        e.key,
        modseq,
        sub=e.sub,
        suffix=e.suffix,
        disk_size=e.disk_size,
    )


def uid_key(entry: Entry) -> int:
    return entry.uid


def split_name(name: str) -> tuple[str, str]:
    """(base, suffix) of a file name, both interned: `Entry.suffix` says why."""
    base, colon, info = name.partition(":")
    return sys.intern(base), sys.intern(colon + info) if colon else ""


class ByUid(Mapping[int, Entry]):
    """A folder's entries by UID, read through their UID-ordered list and its parallel
    array of UIDs (bisection): a dict of 100,000 entries cost about 50 bytes a message. A
    live view: it sees the index's in-place changes until the next rebuild."""

    __slots__ = ("_entries", "_uids")

    def __init__(self, entries: Sequence[Entry], uids: array[int]) -> None:
        self._entries = entries
        self._uids = uids

    def _at(self, uid: int) -> int:
        uids = self._uids
        i = bisect.bisect_left(uids, uid)
        return i if i < len(uids) and uids[i] == uid else -1

    def __getitem__(self, uid: int) -> Entry:
        i = self._at(uid)
        if i < 0:
            raise KeyError(uid)
        return self._entries[i]

    def get(self, uid: int, default: Entry | None = None) -> Entry | None:  # type: ignore[override]
        i = self._at(uid)
        return self._entries[i] if i >= 0 else default

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._at(uid) >= 0

    def __len__(self) -> int:
        return len(self._uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._uids)


class Rows(Sequence[Row]):
    """The persistent-index rows of `entries`, each made when asked: a first open records
    every message, and a list of rows beside the entries cost about 90 bytes a message."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Sequence[Entry]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    @overload
    def __getitem__(self, i: int) -> Row: ...

    @overload
    def __getitem__(self, i: slice) -> Rows: ...

    def __getitem__(self, i: int | slice) -> Row | Rows:
        if isinstance(i, slice):
            return Rows(self._entries[i])
        return row(self._entries[i])

    def __iter__(self) -> Iterator[Row]:
        for entry in self._entries:
            yield row(entry)


def row(entry: Entry) -> Row:
    info = entry.info
    return Row(
        info.uid,
        _stored_flags(info.flags),
        info.key,
        entry.name,
        entry.disk_size,
        info.size,
        info.internal_date,
    )


@functools.lru_cache(maxsize=1024)
def _stored_flags(flags: frozenset[str]) -> str:
    # Entries of a folder share a handful of flag sets (FolderIndex._flags_of).
    return flag_text(flags)


def measure(path: str, base: str) -> tuple[float, int, int] | None:
    """(mtime, S, W) of a message file: the mtime is INTERNALDATE; sizes from the name."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    size, vsize = sizes_from_name(base)
    if vsize is None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        vsize = crlf_size(data) - data.count(b"\r\n")  # lines already CRLF stay as they are
    return (st.st_mtime, st.st_size if size is None else size, vsize)


def touched_rows(
    touched: set[int], unlinked: set[int], known: Mapping[int, Entry], *, blind: bool
) -> tuple[list[Entry], list[int]]:
    """(entries of the touched UIDs we know, in UID order; touched UIDs that are gone). Without
    a listing (`blind`), a touched UID we have no entry for is only gone if we unlinked it
    (others' new uidlist records are touched too)."""
    chosen = [known[u] for u in sorted(touched) if u in known]
    removed = [u for u in touched if u not in known and (not blind or u in unlinked)]
    return chosen, removed
