"""Per-account storage accounting in the Maildir++ `maildirsize` file.

Why this file and not our own counter: it is the Maildir++ quota convention (Courier's
README.maildirquota) that Dovecot's `quota = maildir` backend reads and appends to as well, so
usage stays right when Dovecot delivers into the same Maildir, and the count survives restarts
and is shared by every process without a daemon. Reading it is one small read; writers append one
"<bytes> <count>" line with O_APPEND, a single write() that never interleaves with another.

    <limit>S                first line: the quota definition (0 when we do not know one)
    <bytes> <count>         one line per change, negative for removals

Usage is the sum of the lines. The file is recalculated from the directory listings (sizes come
from the S= field of the names, so no file is opened) when it is missing, unreadable or longer
than 5120 bytes (the spec's limit), and after `invalidate()` (the store calls it when it finds
files it did not write, e.g. a script dropped mail into new/, or deletes a whole folder).

Exactness under concurrency: a writer holds a shared flock on the Maildir root from the moment
its file appears in a folder until its line is appended; a recalculation holds it exclusively
while it lists and replaces the file. So a message is counted either by the listing or by its
line, never both, never neither. Appends only go to an existing file (no O_CREAT): when it is
missing the next reader's recalculation counts everything.

Parsing is incremental: every delivery appends a line, so the process remembers per Maildir the
length, a digest and the sum of what it parsed last, and the file's (inode, size, mtime) then:
an unchanged stamp needs no read at all; when the file still begins with exactly those bytes
only the appended lines are parsed. A replaced or truncated file, or a torn tail,
is parsed whole again.

Counted bytes are S= (bytes on disk with LF endings), as Dovecot's maildir quota counts them.
Concurrent deliveries check the quota before writing and may together overshoot it by what is in
flight at that moment; Dovecot has the same bound.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mailstack.delivery.layout import sizes_from_name

from mailstack.base.fsutil import atomic_write

FILE_NAME = "maildirsize"
MAX_FILE_BYTES = 5120  # Courier README.maildirquota: recalculate when the file grows beyond it


@dataclass(frozen=True, slots=True)
class _Known:
    """What we last summed of one maildirsize: its first `length` bytes and their sum."""

    length: int
    digest: bytes  # of those bytes: the sum holds only for a file that still begins with them
    total: int
    stamp: tuple[int, int, int]  # (inode, size, mtime) when read: unchanged means same sum


_known: dict[str, _Known] = {}
_known_lock = threading.Lock()


@contextlib.contextmanager
def _flock(root: Path, mode: int) -> Iterator[None]:
    # flock on the directory itself: no extra file in the Maildir, released if we crash.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, mode)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def changing(root: Path) -> Iterator[None]:
    """Hold while files appear/disappear and their `record()` lines are written."""
    with _flock(root, fcntl.LOCK_SH):
        yield


def record(root: Path, delta_bytes: int, delta_count: int) -> None:
    """Append one change line; call inside `changing(root)`."""
    if delta_bytes == 0 and delta_count == 0:
        return
    try:
        fd = os.open(root / FILE_NAME, os.O_WRONLY | os.O_APPEND)
    except FileNotFoundError:
        return  # the next usage() recalculates and counts this change
    try:
        os.write(fd, f"{delta_bytes} {delta_count}\n".encode())
    finally:
        os.close(fd)


def _sum(data: bytes) -> int | None:
    """Sum of a whole file: its header line, then "<bytes> <count>" lines; None if torn."""
    header_end = data.find(b"\n")
    return None if header_end < 0 else _sum_lines(data[header_end + 1 :])


def _folder_dirs(root: Path) -> Iterator[Path]:
    yield root
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir():
                yield Path(entry.path)


def _scan(root: Path) -> tuple[int, int]:
    total = count = 0
    for folder in _folder_dirs(root):
        for sub in ("new", "cur"):
            try:
                entries = os.scandir(folder / sub)
            except (FileNotFoundError, NotADirectoryError):
                continue  # not a (complete) folder: nothing of it is counted or readable
            with entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    size, _ = sizes_from_name(entry.name.split(":", 1)[0])
                    if size is None:
                        try:
                            size = entry.stat().st_size
                        except FileNotFoundError:
                            continue
                    total += size
                    count += 1
    return total, count


def _sum_lines(data: bytes) -> int | None:
    """Sum of "<bytes> <count>" lines (no header); None if one is malformed or torn."""
    if data and not data.endswith(b"\n"):
        return None
    total = 0
    for line in data.split(b"\n")[:-1]:
        fields = line.split()
        if len(fields) != 2:
            return None
        try:
            total += int(fields[0])
        except ValueError:
            return None
    return total


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def usage(root: Path, limit_bytes: int = 0) -> int:
    """Bytes used by the Maildir at `root`; recalculates the file when needed."""
    total = counted_usage(root)
    return recalculate(root, limit_bytes) if total is None else total


def counted_usage(root: Path) -> int | None:
    """`usage` from the file alone: None where it would have to recount the folders (missing,
    over-long or damaged file). A few small reads at most, so callable from an event loop."""
    path = os.fspath(root / FILE_NAME)
    with _known_lock:
        known = _known.get(path)
    try:
        if known is not None and _stamp(os.stat(path)) == known.stamp:
            return known.total  # one stat per delivery and RCPT, no read while nothing changed
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        # Stamped before reading: an append landing in between makes the next call read again.
        stamp = _stamp(os.fstat(fd))
        data = os.pread(fd, MAX_FILE_BYTES + 1, 0)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        return None
    total: int | None = None
    if (
        known is not None
        and len(data) >= known.length
        and _digest(data[: known.length]) == known.digest
    ):
        # The same file grown by appends (a replaced file differs in its first bytes: the
        # header or the recount line): only the new lines need parsing.
        added = _sum_lines(data[known.length :])
        total = None if added is None else known.total + added
    if total is None:
        total = _sum(data)
    if total is None:
        return None
    with _known_lock:
        _known[path] = _Known(len(data), _digest(data), total, stamp)
    return total


def _stamp(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def recalculate(root: Path, limit_bytes: int = 0) -> int:
    with _flock(root, fcntl.LOCK_EX):
        total, count = _scan(root)
        atomic_write(root / FILE_NAME, f"{limit_bytes}S\n{total} {count}\n", mode=0o600)
    return total


def invalidate(root: Path) -> None:
    """Forget the count; the next usage() recalculates from the listings."""
    with _flock(root, fcntl.LOCK_EX), contextlib.suppress(FileNotFoundError):
        (root / FILE_NAME).unlink()
