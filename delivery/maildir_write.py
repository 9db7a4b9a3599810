"""The group-commit write path of `MaildirStore` (delivery/maildir.py): `BatchWriter.flush`.

`MaildirStore` hands every deliver/append/copy to a `GroupCommitter` (delivery/commit.py) as a
`_Job`; the committer calls `BatchWriter.flush` with a batch of them. The flush writes and
fsyncs the tmp/ files, renames them into new/ or cur/ under one lock per folder, numbers them
with one uidlist append, fsyncs each directory once and records one quota line per account;
each job is all or nothing on its own (see `BatchWriter.flush`).

The writer has no caches or locks of its own: the store passes in what it needs (the host name
for unique file names, its per-folder `FolderIndex` cache, folder lookup, the quota check and
the publish callback for IDLE sessions). The lock order of delivery/maildir.py applies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mailstack.delivery import fsyncs, quota, recent
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.index_entry import Entry
from mailstack.delivery.index_files import FILE_MODE
from mailstack.delivery.keywords import file_name_with_flags, letters_from_flags, split_info
from mailstack.delivery.layout import lf_slices, unique_name
from mailstack.delivery.store import (
    FolderNotFoundError,
    MessageGoneError,
    MessageRef,
    StoreError,
    UnknownUserError,
)

from mailstack.base.fsutil import fsync_dir


@dataclass(frozen=True, slots=True)
class _Written:
    """One message copy on its way into a folder."""

    user: str
    root: Path  # the account's Maildir
    folder: str
    fdir: Path
    base: str  # unique base name, also its name in tmp/
    meta: tuple[float, int, int]  # (mtime, S, W)


@dataclass(frozen=True, slots=True)
class _Target:
    """A folder a new message goes into."""

    user: str
    root: Path
    folder: str
    fdir: Path


@dataclass(frozen=True, slots=True)
class _Job:
    """One all-or-nothing store call waiting for the group commit.

    Either `parts` to write into each target's tmp/ (deliver, APPEND: the flush writes them, so
    one thread makes the write syscalls of a batch, not one thread per message contending for
    the GIL; only the fsyncs may wait in a pool), or copies already in tmp/ (`written`: COPY's
    hard links). `flags` per copy.
    """

    flags: tuple[frozenset[str], ...]
    targets: tuple[_Target, ...] = ()
    parts: tuple[bytes, ...] = ()  # the message with LF endings, in slices
    sizes: tuple[int, int] = (0, 0)  # (S, W): bytes on disk, RFC822.SIZE
    mtime: float | None = None
    written: tuple[_Written, ...] = ()
    # `deliver_parts_nowait`: (user, folder) pairs the flush resolves, quota-checks and
    # writes `parts` (still with CRLF) to; nothing of it ran in the caller.
    unresolved: tuple[tuple[str, str], ...] = ()
    publish: bool = False  # tell IDLE sessions once durable (the flush does it)


@dataclass(slots=True)
class _Placed:
    """A copy renamed into its folder (and numbered, once `uid` is set)."""

    index: FolderIndex
    sub: str
    name: str
    uid: int = 0
    uid_validity: int = 0


@dataclass(frozen=True, slots=True)
class _OpenTmp:
    """A message file written into tmp/ and still open, waiting for its fsync."""

    fd: int
    path: Path
    base: str
    size: int
    vsize: int


def _discard(fd: int, path: Path) -> None:
    os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()


def _call(fn: Callable[[], None]) -> None:
    fn()


class BatchWriter:
    """Flushes batches of `_Job`s for one `MaildirStore`; the `GroupCommitter`'s `flush`."""

    def __init__(
        self,
        hostname: str,
        *,
        index: Callable[[Path, Path], FolderIndex],
        locate: Callable[[str, str], tuple[Path, str, Path]],
        check_quota: Callable[[str, Path, int], None],
        publish: Callable[[str, str], None],
    ) -> None:
        self._host = hostname
        self._index = index  # (account root, folder directory) -> the store's cached index
        self._locate = locate  # (user, folder) -> (root, normalized name, folder directory)
        self._check_quota = check_quota  # (user, root, adding); raises when over
        self._publish = publish  # (user, folder): tell IDLE sessions

    @staticmethod
    def _missing(target: _Target) -> StoreError | None:
        """Why writing into `target` found no directory: no account, no folder, or neither."""
        if not (target.root / "cur").is_dir():
            return UnknownUserError(f"no mailbox for {target.user}")
        if not (target.fdir / "cur").is_dir():
            return FolderNotFoundError(f"folder vanished: {target.folder}")
        return None

    def _create_tmp(
        self, fdir: Path, parts: Sequence[bytes], sizes: tuple[int, int], mtime: float | None
    ) -> _OpenTmp:
        """Write a message into `fdir`/tmp/, not yet durable: `_sync_tmp` finishes it."""
        size, vsize = sizes
        base = unique_name(self._host, size, vsize)  # the name says when it was stored
        path = fdir / "tmp" / base
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view) :]
            if mtime is not None:
                os.utime(fd, (mtime, mtime))  # INTERNALDATE is the mtime (Dovecot does so)
        except BaseException:
            _discard(fd, path)
            raise
        return _OpenTmp(fd, path, base, size, vsize)

    @staticmethod
    def _sync_tmp(tmp: _OpenTmp) -> tuple[str, tuple[float, int, int]]:
        """fsync (data and mtime) and close a `_create_tmp` file; removed again on failure."""
        try:
            os.fsync(tmp.fd)
            st = os.fstat(tmp.fd)
        except BaseException:
            _discard(tmp.fd, tmp.path)
            raise
        os.close(tmp.fd)
        return tmp.base, (st.st_mtime, tmp.size, tmp.vsize)

    def _write_tmp(
        self, fdir: Path, parts: Sequence[bytes], sizes: tuple[int, int], mtime: float | None
    ) -> tuple[str, tuple[float, int, int]]:
        return self._sync_tmp(self._create_tmp(fdir, parts, sizes, mtime))

    def write_tmp(
        self, target: _Target, data: bytes, sizes: tuple[int, int], mtime: float | None
    ) -> _Written:
        """MULTIAPPEND's message (LF endings) fsynced into `target`/tmp/, to commit as a group."""
        base, meta = self._write_tmp(target.fdir, (data,), sizes, mtime)
        return _Written(target.user, target.root, target.folder, target.fdir, base, meta)

    def link_tmp(
        self, user: str, root: Path, dest_name: str, dest_dir: Path, fdir: Path, entry: Entry
    ) -> _Written:
        """COPY's copy of `entry` into `dest_dir`/tmp/: a hard link, else a fsynced copy."""
        meta = entry.meta
        base = unique_name(self._host, meta[1], entry.info.size)
        src, tmp = fdir / entry.sub / entry.name, dest_dir / "tmp" / base
        try:
            os.link(src, tmp)  # messages are immutable: share the file, as Dovecot does
        except FileNotFoundError:
            raise MessageGoneError(f"UID {entry.uid} was expunged") from None
        except OSError:
            shutil.copyfile(src, tmp)
            os.utime(tmp, (meta[0], meta[0]))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        return _Written(user, root, dest_name, dest_dir, base, meta)

    def _prepare(self, job: _Job) -> tuple[tuple[_Target, ...], tuple[bytes, ...], tuple[int, int]]:
        """A `deliver_parts_nowait` job's targets, LF slices and sizes, its quota checked."""
        if not job.unresolved:
            return job.targets, job.parts, job.sizes
        parts = tuple(lf_slices(job.parts))
        size = sum(len(p) for p in parts)
        targets = tuple(
            _Target(user, *self._locate(user, folder)) for user, folder in job.unresolved
        )
        per_user: dict[str, tuple[_Target, int]] = {}
        for t in targets:
            per_user[t.user] = (t, per_user.get(t.user, (t, 0))[1] + size)
        for user, (t, adding) in per_user.items():
            try:
                self._check_quota(user, t.root, adding)
            except FileNotFoundError:
                raise self._missing(t) or FolderNotFoundError(f"no folder {t.folder!r}") from None
        return targets, parts, (size, size + sum(p.count(b"\n") for p in parts))

    def _write_jobs(
        self, jobs: Sequence[_Job], failed: dict[int, BaseException]
    ) -> list[list[_Written]]:
        """Write (and fsync) the tmp/ files of jobs that bring data; per job its copies.

        Every file is written first and then all are fsynced, at once from a thread pool while
        the disk is slow (delivery/fsyncs.py: concurrent fsyncs share one journal commit; 7 ms
        one after another against 0.4 ms per 10 KB file with 8 at once on a busy ext4 disk).
        """
        written: list[list[_Written]] = [list(job.written) for job in jobs]
        pending: list[tuple[int, _Target, _OpenTmp]] = []
        for j, job in enumerate(jobs):
            try:
                targets, parts, sizes = self._prepare(job)
            except (OSError, StoreError) as exc:
                failed[j] = exc
                continue
            for t in targets:
                try:
                    pending.append((j, t, self._create_tmp(t.fdir, parts, sizes, job.mtime)))
                except OSError as exc:
                    missing = self._missing(t) if isinstance(exc, FileNotFoundError) else None
                    failed[j] = missing or exc
                    break
        synced = fsyncs.run_all(self._sync_tmp, [tmp for _j, _t, tmp in pending])
        for (j, t, _tmp), outcome in zip(pending, synced, strict=True):
            if isinstance(outcome, BaseException):
                failed.setdefault(j, outcome)
                continue
            base, meta = outcome  # kept even for a failed job: flush's undo removes it
            written[j].append(_Written(t.user, t.root, t.folder, t.fdir, base, meta))
        return written

    def flush(self, jobs: Sequence[_Job]) -> list[list[MessageRef] | BaseException]:
        """Make a batch of jobs durable: per folder one lock, one uidlist append (one fsync)
        and one fsync of each directory renamed into; per account one quota line.

        Each job is all or nothing on its own: when anything of a job fails (a rename, its
        folder vanished, a shared fsync of a folder it has a copy in), every copy of that job
        is removed again and it gets the exception; the other jobs go on. A job is answered
        only after its renames, uidlist lines and directories were fsynced.
        """
        failed: dict[int, BaseException] = {}
        written: list[list[_Written]] = []
        placed: list[list[_Placed | None]] = []
        try:
            written = self._write_jobs(jobs, failed)
            placed = [[None] * len(mine) for mine in written]
            self._place_jobs(jobs, written, placed, failed)
        except BaseException:
            for j, mine in enumerate(written):
                if j not in failed:
                    self._undo(mine, placed[j] if j < len(placed) else [None] * len(mine))
            raise
        outcomes: list[list[MessageRef] | BaseException] = []
        for j, mine in enumerate(written):
            if j in failed:
                outcomes.append(failed[j])
                continue
            refs = [
                MessageRef(item.user, item.folder, done.uid, done.uid_validity)
                for item, done in zip(mine, placed[j], strict=True)
                if done is not None  # always, for a job that did not fail
            ]
            outcomes.append(refs)
            if jobs[j].publish:
                for ref in refs:
                    self._publish(ref.user, ref.folder)
        return outcomes

    def _place_jobs(
        self,
        jobs: Sequence[_Job],
        written: list[list[_Written]],
        placed: list[list[_Placed | None]],
        failed: dict[int, BaseException],
    ) -> None:
        """Rename, number and fsync per folder; quota lines per account; undo failed jobs."""
        by_folder: dict[Path, list[tuple[int, int]]] = {}
        for j, mine in enumerate(written):
            if j in failed:
                continue
            for i, item in enumerate(mine):
                by_folder.setdefault(item.fdir, []).append((j, i))
        roots = sorted({w.root for mine in written for w in mine})
        try:
            with contextlib.ExitStack() as stack:
                for root in roots:
                    try:
                        stack.enter_context(quota.changing(root))
                    except OSError as exc:
                        self._fail_jobs(written, failed, exc, root)
                for fdir, members in by_folder.items():
                    self._flush_folder(jobs, written, fdir, members, placed, failed)
                for root in roots:
                    ours = [
                        w
                        for j, mine in enumerate(written)
                        if j not in failed
                        for w in mine
                        if w.root == root
                    ]
                    if not ours:
                        continue
                    try:
                        quota.record(root, sum(w.meta[1] for w in ours), len(ours))
                    except OSError as exc:
                        self._fail_jobs(written, failed, exc, root)
                for j in failed:  # still under the quota locks: nobody counted these files
                    self._undo(written[j], placed[j])
        except BaseException:
            for j in failed:
                self._undo(written[j], placed[j])
            raise

    @staticmethod
    def _fail_jobs(
        written: list[list[_Written]],
        failed: dict[int, BaseException],
        exc: BaseException,
        root: Path,
    ) -> None:
        """Every job with a copy for the account at `root` fails with `exc`."""
        for j, mine in enumerate(written):
            if any(w.root == root for w in mine):
                failed.setdefault(j, exc)

    def _flush_folder(
        self,
        jobs: Sequence[_Job],
        written: list[list[_Written]],
        fdir: Path,
        members: list[tuple[int, int]],
        placed: list[list[_Placed | None]],
        failed: dict[int, BaseException],
    ) -> None:
        """Rename this folder's copies of the live jobs into new/ or cur/, number them with one
        uidlist append, fsync the directories once."""
        live = [(j, i) for j, i in members if j not in failed]
        if not live:
            return
        first = written[live[0][0]][live[0][1]]
        index = self._index(first.root, fdir)
        subs: set[str] = set()
        try:
            with index.locked():
                renamed: list[tuple[int, int, _Placed]] = []
                for j, i in live:
                    if j in failed:
                        continue
                    item, item_flags = written[j][i], jobs[j].flags[i]
                    try:
                        if item_flags:
                            index.ensure_keywords(item_flags)
                            letters = letters_from_flags(item_flags, index.keywords)
                            sub, name = "cur", file_name_with_flags(item.base, letters)
                        else:
                            sub, name = "new", item.base
                        os.rename(fdir / "tmp" / item.base, fdir / sub / name)
                    except (OSError, StoreError) as exc:
                        failed.setdefault(j, exc)
                        continue
                    done = placed[j][i] = _Placed(index, sub, name)
                    renamed.append((j, i, done))
                    subs.add(sub)
                numbered = [(j, i, done) for j, i, done in renamed if j not in failed]
                uids = index.added_many(
                    [(d.sub, d.name, written[j][i].meta) for j, i, d in numbered], sync=False
                )
                index.record_own_changes()  # MODSEQs recorded: other processes see them now
                for (_j, _i, done), uid in zip(numbered, uids, strict=True):
                    done.uid = uid
                    done.uid_validity = index.uidlist.uid_validity
                # Flags put these in cur/, where nothing marks them \Recent (delivery/recent.py).
                with contextlib.suppress(OSError):
                    recent.add(fdir, [d.uid for _j, _i, d in numbered if d.sub == "cur"])
            # The uidlist's fsync waits outside the lock, with the directories' (at once when
            # the disk is slow); the UIDs are answered (250, APPENDUID) only after all of them.
            syncs: list[Callable[[], None]] = [index.fsync_uidlist]
            syncs += [functools.partial(fsync_dir, fdir / sub) for sub in sorted(subs)]
            for outcome in fsyncs.run_all(_call, syncs):
                if isinstance(outcome, BaseException):
                    raise outcome
        except Exception as exc:  # the lock, the uidlist or a directory fsync: all of them
            for j, _i in live:
                failed.setdefault(j, exc)

    def _undo(self, written: list[_Written], placed: list[_Placed | None]) -> None:
        """Remove every copy of a failed job: placed ones under their folder lock (as every
        other removal), the rest from tmp/."""
        for done in placed:
            if done is None:
                continue
            with contextlib.suppress(OSError, StoreError), done.index.locked():
                (done.index.path / done.sub / done.name).unlink()
                # Rewritten at once: a UID taken back must not stay in the file.
                done.index.removed([split_info(done.name)[0]], rewrite=True)
        for item, done in zip(written, placed, strict=True):
            if done is None:
                with contextlib.suppress(OSError):
                    (item.fdir / "tmp" / item.base).unlink()
