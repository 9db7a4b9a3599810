"""Values and helpers of delivery/index.py: one message file as the index knows it, and the
pure functions that measure files and turn entries into persistent-index rows."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
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
    name: str  # current file name, info included
    disk_size: int  # S=: bytes on disk (what the quota counts)

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
        name=e.name,
        disk_size=e.disk_size,
    )


def uid_key(entry: Entry) -> int:
    return entry.uid


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
