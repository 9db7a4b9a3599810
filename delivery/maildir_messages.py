"""Reading and removing the messages of one Maildir folder: snapshots, changes since a
MODSEQ, message and header files, EXPUNGE. A part of `MaildirStore` (delivery/maildir.py),
which finds the folder and its index; every function here takes the folder lock itself.

\\Recent (RFC 3501 §2.3.2): a message in new/ has not been seen by any session.
`snapshot(claim_recent=True)` (SELECT) moves those files into cur/ and reports them in
`recent_uids`: only one session ever claims a message. Without claiming (EXAMINE, STATUS),
`recent_uids` lists what is still in new/. Deliveries, and APPEND/COPY without flags, land in
new/; APPEND/COPY with flags go to cur/ (the Maildir spec allows no info in new/) and are
listed in the folder's `mailstack-recent` until a claiming snapshot takes them
(delivery/recent.py).

Files are opened under the lock and read after it: an open file survives a flag rename.
`map_files` is the exception: worker processes cannot share our descriptors, so they read by
path and report a file renamed (or expunged) meanwhile; such messages are opened again here.
Expunged files are unlinked under the quota lock (shared) and then the folder lock, the
store's lock order (delivery/maildir.py), and recorded before the folder lock goes.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from mailstack.delivery import quota, recent
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.store import (
    FolderChanges,
    FolderSnapshot,
    MessageBatch,
    MessageGoneError,
    MessageInfo,
)

from mailstack.base import parallel
from mailstack.base.flags import Flag
from mailstack.base.fsutil import fsync_dir

R = TypeVar("R")
# Messages per batch of `map_files`: per worker round trip, and what the caller holds at once.
MAP_BATCH = 500
# Fewer messages than this are read and worked on in the caller's process: below it, starting
# the worker processes costs more than it saves (measured: 10,000 header blocks, 0.4 s).
PARALLEL_MIN = 5_000


def snapshot(
    index: FolderIndex, fdir: Path, name: str, *, claim_recent: bool
) -> tuple[FolderSnapshot, bool]:
    """(the folder's snapshot, whether others changed its files since we last looked)."""
    with index.locked():
        result = index.sync()
        claimed = frozenset(index.claim_new()) if claim_recent else frozenset()
        messages, in_new, _ = index.view()
        # APPEND/COPY with flags land in cur/ but are recent too (delivery/recent.py).
        stored = recent.take(fdir) if claim_recent else recent.peek(fdir)
        if stored:
            live = {m.uid for m in messages}
            claimed, in_new = claimed | (stored & live), in_new | (stored & live)
        snap = FolderSnapshot(
            name=name,
            uid_validity=index.uidlist.uid_validity,
            uid_next=index.uidlist.next_uid,
            messages=messages,
            keywords=index.keywords.defined(),
            recent_uids=claimed if claim_recent else in_new,
            highest_modseq=index.highest_modseq,
        )
    return snap, result.foreign_changes


def changes(
    index: FolderIndex, since: int, *, claim_recent: bool
) -> tuple[FolderChanges | None, bool]:
    """(what changed after MODSEQ `since`, None when the expunge log does not reach back so
    far; whether others changed the folder's files since we last looked)."""
    with index.looking():
        if _is_known(index, claim_recent=claim_recent):
            # Nothing to sync, claim or record: the answer without the dotlock.
            return _answer(index, since, claim_recent=claim_recent), False
    with index.locked():
        result = index.sync()
        claimed = frozenset(index.claim_new()) if claim_recent else frozenset()
        found = _answer(index, since, claim_recent=claim_recent, claimed=claimed)
    return found, result.foreign_changes


def changes_now(index: FolderIndex, since: int, *, claim_recent: bool) -> FolderChanges | None:
    """`changes` when the index can answer at once: no other thread of this process holds
    it and it is current (then the answer is a few stat() calls and indexed reads of the
    index file). None when it cannot, or when the expunge log does not reach back so far."""
    with index.glancing() as free:
        if not free:
            return None
        with index.db.not_waiting() as is_open:  # never opens the file, never waits on it
            if is_open and _is_known(index, claim_recent=claim_recent):
                return _answer(index, since, claim_recent=claim_recent)
    return None


def _is_known(index: FolderIndex, *, claim_recent: bool) -> bool:
    """The index can tell what changed without a sync, and there is nothing to claim."""
    return index.is_current() and not (claim_recent and index.in_new())


def _answer(
    index: FolderIndex, since: int, *, claim_recent: bool, claimed: frozenset[int] = frozenset()
) -> FolderChanges | None:
    highest = index.highest_modseq
    changed: tuple[MessageInfo, ...] = ()
    expunged: list[int] = []
    if since < highest:
        logged = index.expunged_since(since)
        if logged is None:
            return None
        expunged, changed = logged, tuple(e.info for e in index.changed_since(since))
    return FolderChanges(
        uid_validity=index.uidlist.uid_validity,
        uid_next=index.uidlist.next_uid,
        highest_modseq=highest,
        changed=changed,
        expunged=tuple(expunged),
        keywords=index.keywords.defined(),
        recent_uids=claimed if claim_recent else index.in_new(),
    )


def open_message(index: FolderIndex, fdir: Path, uid: int) -> BinaryIO:
    """The file of `uid`, opened under the folder lock. Raises MessageGoneError."""
    with index.locked():
        index.sync()
        entry = index.entry(uid)
        if entry is None:
            raise MessageGoneError(f"UID {uid} does not exist")
        try:
            return open(fdir / entry.sub / entry.name, "rb")
        except FileNotFoundError:
            raise MessageGoneError(f"UID {uid} was expunged") from None


class OpenFile(NamedTuple):
    """A message file opened by `open_messages`: its descriptor and its size as the index
    knows it (S=). A bare descriptor, not a file object: a first header fetch of a big
    folder reads every file, and Python's file object took six system calls a file (it
    checks and sizes the file again, and reads once more to find the end) where this takes
    three."""

    fd: int
    size: int


def open_messages(index: FolderIndex, fdir: Path, uids: Sequence[int]) -> dict[int, OpenFile]:
    """Open each of `uids` that still exists, in the order given, under one folder lock. The
    caller closes them (`close_all`, or each as it is read)."""
    files: dict[int, OpenFile] = {}
    try:
        with index.locked():
            index.sync()
            entries = index.entries_by_uid()
            prefix = f"{fdir}/"  # a str path: a Path join per message cost a tenth
            for uid in uids:
                entry = entries.get(uid)
                if entry is not None:
                    with contextlib.suppress(FileNotFoundError):
                        path = f"{prefix}{entry.sub}/{entry.name}"
                        files[uid] = OpenFile(os.open(path, os.O_RDONLY), entry.disk_size)
    except BaseException:
        close_all(files.values())
        raise
    return files


def close_all(files: Iterable[OpenFile]) -> None:
    for f in files:
        os.close(f.fd)


def read_whole(f: OpenFile) -> bytes:
    """The whole file: one read when it has the size the index knows (a Maildir message
    never changes), more only when it does not."""
    data = os.read(f.fd, f.size + 1)
    if len(data) == f.size:
        return data
    parts = [data]
    while chunk := os.read(f.fd, 1 << 16):
        parts.append(chunk)
    return b"".join(parts)


# Where a message is, for a reader in another process: (uid, key, RFC822.SIZE, path, S= size
# on disk). Valid when made under the folder lock (a flag change renames the file after). A
# plain tuple: a NamedTuple pickles through Python code, a tenth of the job's cost to send.
MessageFile = tuple[int, str, int, str, int]


def message_files(index: FolderIndex, fdir: Path, uids: Iterable[int]) -> list[MessageFile]:
    """The files of `uids` that still exist, in the order given."""
    prefix = f"{fdir}/"
    out = []
    with index.locked():
        index.sync()
        entries = index.entries_by_uid()
        for uid in uids:
            e = entries.get(uid)
            if e is not None:
                path = f"{prefix}{e.sub}/{e.key}{e.suffix}"
                out.append((uid, e.key, e.size, path, e.disk_size))
    return out


def work_on_files(
    work: Callable[[MessageBatch], R], whole: bool, files: Sequence[MessageFile]
) -> tuple[R, list[MessageFile]]:
    """(work(the batch read), the MessageFile of each file that was gone): runs in a worker."""
    batch: MessageBatch = []
    gone: list[MessageFile] = []
    for f in files:
        uid, key, size, path, disk_size = f
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            gone.append(f)
            continue
        try:
            opened = OpenFile(fd, disk_size)
            data = read_whole(opened) if whole else header_block(opened)
        finally:
            os.close(fd)
        batch.append((uid, key, size, data))
    return work(batch), gone


def map_files(
    index: FolderIndex,
    fdir: Path,
    uids: Sequence[int],
    work: Callable[[MessageBatch], R],
    whole: bool,
) -> Iterator[R]:
    """`work` on batches of the messages of `uids` still there (the store's map_messages).
    A big job runs in worker processes (mailstack/base/parallel.py); each batch's files are
    found as it is handed out, so the workers start while the rest are being found."""
    job = functools.partial(work_on_files, work, whole)
    batches = (
        message_files(index, fdir, uids[i : i + MAP_BATCH]) for i in range(0, len(uids), MAP_BATCH)
    )
    results = parallel.POOL.map(job, batches) if len(uids) >= PARALLEL_MIN else map(job, batches)
    gone: list[MessageFile] = []
    for result, missed in results:
        gone += missed
        yield result
    # Renamed by a flag change (or expunged) since `message_files`: opened under the lock
    # this time, which a rename cannot race.
    known = {f[0]: f for f in gone}
    for i in range(0, len(gone), MAP_BATCH):
        opened = open_messages(index, fdir, [f[0] for f in gone[i : i + MAP_BATCH]])
        batch: MessageBatch = []
        try:
            for uid, f in opened.items():
                _, key, size, _, _ = known[uid]
                batch.append((uid, key, size, read_whole(f) if whole else header_block(f)))
        finally:
            close_all(opened.values())
        yield work(batch)


def header_block(f: OpenFile) -> bytes:
    """Read up to and including the blank line that ends a message's header."""
    data = b""
    while chunk := os.read(f.fd, 8192):
        start = max(0, len(data) - 3)  # the blank line may straddle two chunks
        data += chunk
        for blank in (b"\n\n", b"\n\r\n"):
            end = data.find(blank, start)
            if end >= 0:
                return data[: end + len(blank)]
    return data


def remove(
    index: FolderIndex,
    root: Path,
    fdir: Path,
    uids: Iterable[int] | None,
    *,
    only_deleted: bool,
) -> list[int]:
    """Unlink `uids` (None: every message), with `only_deleted` just those flagged \\Deleted
    (EXPUNGE); the UIDs removed. `root` is the account's, whose quota is kept."""
    wanted = None if uids is None else set(uids)
    removed: list[tuple[int, str, int]] = []
    with quota.changing(root), index.locked():
        index.sync()
        by_uid = index.entries_by_uid()
        chosen = (
            index.entries()
            if wanted is None
            else [by_uid[u] for u in sorted(wanted) if u in by_uid]  # no folder-wide scan
        )
        if only_deleted:
            # One pass in a comprehension with a plain str: EXPUNGE of a big folder looks at
            # every message's flags, and the loop below spent 16% of a STORE+EXPUNGE there.
            deleted = Flag.DELETED.value
            chosen = [entry for entry in chosen if deleted in entry.flags]
        for entry in chosen:
            try:
                (fdir / entry.sub / entry.name).unlink()
                size = entry.disk_size
            except FileNotFoundError:
                size = -1  # someone else removed it (and accounted for it): expunged anyway
            removed.append((entry.uid, entry.info.key, size))
        if removed:
            index.removed(key for _uid, key, _size in removed)
            index.entries()  # recorded (MODSEQ, expunge log) before the lock goes
            for sub in {entry.sub for entry in chosen}:  # where files were unlinked
                fsync_dir(fdir / sub)
            mine = [size for *_, size in removed if size >= 0]
            quota.record(root, -sum(mine), -len(mine))
    return [uid for uid, *_ in removed]
