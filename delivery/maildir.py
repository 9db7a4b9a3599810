"""`MaildirStore`: the one `MailStore` (delivery/store.py), on Maildir++ as Dovecot lays it out.

Layout and names: delivery/layout.py. UIDs: `dovecot-uidlist` (delivery/uidmap.py), kept per
folder by delivery/index.py under Dovecot's `dovecot-uidlist.lock`. Flags and keywords: the
":2," info letters and `dovecot-keywords` (delivery/keywords.py). Quota: `maildirsize`
(delivery/quota.py, which explains the choice), per account: delivery/maildir_quota.py.
Folders, subscriptions, UIDVALIDITY and special use: delivery/folders.py; LIST, CREATE,
DELETE, RENAME and their semantics (DELETE of a folder with children, RENAME of INBOX):
delivery/maildir_folders.py. Snapshots, reading, EXPUNGE: delivery/maildir_messages.py.

Writing a message (cr.yp.to/proto/maildir.html): write tmp/<unique>, fsync, rename into new/
(or cur/ when it carries flags), give it its UID in the uidlist, fsync the directory; only then
return. `deliver()` to several targets is all or nothing: every copy is written into tmp/ first,
and on any failure every file written so far is removed before the error propagates.

\\Recent (RFC 3501 §2.3.2): a message in new/ has not been seen by any session; only one
session ever claims it (delivery/maildir_messages.py, delivery/recent.py).

Lock order, to stay deadlock-free: the quota flock (shared) before any folder lock; at most one
folder lock at a time; nothing that takes the quota lock exclusively runs under a folder lock.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TypeVar

from mailstack.delivery import folders, maildir_flags, maildir_messages, quota
from mailstack.delivery.acl_registry import AclRegistry
from mailstack.delivery.commit import GroupCommitter
from mailstack.delivery.events import EventHub
from mailstack.delivery.folders import DIR_MODE, SUBSCRIPTIONS
from mailstack.delivery.fulltext import FolderText
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.index_headers import HeaderTable
from mailstack.delivery.layout import crlf_size, folder_dir_name, normalize_folder, to_lf
from mailstack.delivery.maildir_flags import storable_flags
from mailstack.delivery.maildir_folders import FolderOps
from mailstack.delivery.maildir_quota import AccountQuotas
from mailstack.delivery.maildir_write import BatchWriter, _Job, _Target, _Written
from mailstack.delivery.store import (
    DEFAULT_FOLDERS,
    INBOX,
    FlagChange,
    FolderChanges,
    FolderExistsError,
    FolderInfo,
    FolderNotFoundError,
    FolderSnapshot,
    MessageBatch,
    MessageGoneError,
    MessageRef,
    R,
    SpecialUse,
    StoreError,
    UnknownUserError,
)

from mailstack.base.flags import FlagMode
from mailstack.base.fsutil import fsync_dir
from mailstack.base.paths import StatePaths

_T = TypeVar("_T")
_LOCATE_CACHE_MAX = 10_000  # (user, folder) paths remembered by `_locate`
# Folder indexes kept per process, least recently used dropped first. Each holds an open
# SQLite connection (about 150 KB resident: page cache, WAL index), so 1,000 accounts' six
# folders would cost a gigabyte; a dropped folder is read again as another process reads it
# (its connection closes when the last thread using it lets go).
MAX_OPEN_INDEXES = 128


class MaildirStore:
    """Maildir++ under `paths.maildir(user)`; safe for many threads and other processes."""

    def __init__(
        self,
        paths: StatePaths,
        events: EventHub | None = None,
        hostname: str = socket.gethostname(),
        quota_of: Callable[[str], int] | None = None,
    ) -> None:
        self._paths = paths
        self._quotas = AccountQuotas(quota_of)  # delivery/maildir_quota.py
        self._events = events
        self._indexes: OrderedDict[Path, FolderIndex] = OrderedDict()  # LRU, see above
        self._texts: dict[Path, FolderText] = {}
        self._headers: dict[Path, HeaderTable] = {}
        self._indexes_lock = threading.Lock()
        # (user, folder) -> (root, name, folder directory, its cur/ as str): `_locate`
        self._located: dict[tuple[str, str], tuple[Path, str, Path, str]] = {}
        # The group-commit write path lives in delivery/maildir_write.py; it reaches the
        # store's caches, quota check and IDLE events only through these callables.
        self._writer = BatchWriter(
            hostname,
            index=self._index,
            locate=self._locate,
            check_quota=self._quotas.check,
            publish=self._publish,
        )
        self._committer: GroupCommitter[_Job, list[MessageRef]] = GroupCommitter(self._writer.flush)
        self.acls = AclRegistry(paths)  # which folders are shared with whom (for LIST)
        # LIST/CREATE/DELETE/RENAME and subscriptions live in delivery/maildir_folders.py; they
        # reach the store's lookups, index cache and IDLE events only through these callables.
        self._folder_ops = FolderOps(
            root=self._root,
            folder=self._folder,
            index=self._index,
            forget_indexes=self._forget_indexes,
            publish=self._publish,
            acls=self.acls,
        )

    @property
    def committer(self) -> GroupCommitter[_Job, list[MessageRef]]:
        """The group commit every deliver/append/copy goes through (its counters, for tests)."""
        return self._committer

    # -- paths and caches ----------------------------------------------------------------------
    def _user_root(self, user: str) -> Path:
        local, at, domain = user.rpartition("@")
        for part in (local, domain):
            if not at or not part or "/" in part or part.startswith(".") or "\0" in part:
                raise UnknownUserError(f"not an account address: {user!r}")
        return self._paths.maildir(user)

    def _root(self, user: str) -> Path:
        root, _name, _fdir, cur = self._locate_all(user, INBOX)  # INBOX's folder is the root
        if not os.path.isdir(cur):
            raise UnknownUserError(f"no mailbox for {user}")
        return root

    def _folder(self, user: str, folder: str) -> tuple[Path, str, Path]:
        """(account root, normalized name, folder directory); the folder must exist."""
        root = self._root(user)
        _, name, fdir, cur = self._locate_all(user, folder)
        if name != INBOX and not os.path.isdir(cur):
            raise FolderNotFoundError(f"no folder {name!r}")
        return root, name, fdir

    def _locate(self, user: str, folder: str) -> tuple[Path, str, Path]:
        """`_folder` without looking at the disk (cached: pure path arithmetic). Deliveries
        use it and learn of a missing account or folder from the failing write instead of a
        stat() per message beforehand (see `BatchWriter._missing`)."""
        root, name, fdir, _ = self._locate_all(user, folder)
        return root, name, fdir

    def _locate_all(self, user: str, folder: str) -> tuple[Path, str, Path, str]:
        # Paths made once per account and folder: pathlib arithmetic on every store call was
        # a fifth of the CPU of "what changed?" with ten busy sessions.
        key = (user, folder)
        found = self._located.get(key)
        if found is None:
            root = self._user_root(user)
            name = normalize_folder(folder)
            fdir = root / folder_dir_name(name) if name != INBOX else root
            if len(self._located) >= _LOCATE_CACHE_MAX:
                self._located.clear()
            found = self._located[key] = (root, name, fdir, os.path.join(fdir, "cur"))
        return found

    def _index(self, root: Path, fdir: Path) -> FolderIndex:
        with self._indexes_lock:
            index = self._indexes.get(fdir)
            if index is None:
                index = FolderIndex(fdir, lambda: folders.next_uid_validity(root))
                self._indexes[fdir] = index
                while len(self._indexes) > MAX_OPEN_INDEXES:
                    self._indexes.popitem(last=False)
            else:
                self._indexes.move_to_end(fdir)
            return index

    def _forget_indexes(self, prefix: Path) -> None:
        with self._indexes_lock:
            for path in [p for p in self._indexes if p == prefix or prefix in p.parents]:
                del self._indexes[path]
            for path in [p for p in self._texts if p == prefix or prefix in p.parents]:
                self._texts.pop(path).close()
            for path in [p for p in self._headers if p == prefix or prefix in p.parents]:
                self._headers.pop(path).close()

    def fulltext(self, user: str, folder: str) -> FolderText:
        """The folder's full-text pre-filter (delivery/fulltext.py)."""
        return self._per_folder(self._texts, user, folder, FolderText)

    def header_index(self, user: str, folder: str) -> HeaderTable:
        """The folder's stored header fields (delivery/index_headers.py)."""
        return self._per_folder(self._headers, user, folder, HeaderTable)

    def _per_folder(
        self, opened: dict[Path, _T], user: str, folder: str, make: Callable[[Path], _T]
    ) -> _T:
        """One per folder and process, shared by its sessions; made on first use."""
        _, _, fdir = self._folder(user, folder)
        with self._indexes_lock:
            found = opened.get(fdir)
            if found is None:
                found = opened[fdir] = make(fdir)
            return found

    def _publish(self, user: str, *folders: str) -> None:
        if self._events is not None:
            for folder in dict.fromkeys(folders):
                self._events.publish(user, folder)

    # -- accounts ------------------------------------------------------------------------------
    def create_account(self, user: str) -> None:
        root = self._user_root(user)
        self._paths.mail_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for parent in reversed(root.parents):
            if parent.is_relative_to(self._paths.mail_dir) and not parent.exists():
                parent.mkdir(mode=DIR_MODE, exist_ok=True)
        is_new = not root.exists()
        root.mkdir(mode=DIR_MODE, exist_ok=True)
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(mode=DIR_MODE, exist_ok=True)
        with self._index(root, root).locked() as index:
            index.sync()  # writes INBOX's dovecot-uidlist
        for folder, use in DEFAULT_FOLDERS.items():
            with contextlib.suppress(FolderExistsError):
                self.create_folder(user, folder, use)
        if is_new or not (root / SUBSCRIPTIONS).exists():
            folders.change_subscriptions(root, add=[INBOX, *DEFAULT_FOLDERS], remove=[])
        quota.recalculate(root)
        fsync_dir(root)

    def delete_account(self, user: str) -> None:
        root = self._root(user)
        # Renamed away first, so the account vanishes at once rather than file by file (no
        # local part starts with ".", so the name cannot be an account's).
        doomed = root.with_name(f".deleted.{root.name}.{secrets.token_hex(8)}")
        os.rename(root, doomed)
        fsync_dir(root.parent)
        self._forget_indexes(root)
        self.acls.forget_account(user)
        shutil.rmtree(doomed)

    def usage_bytes(self, user: str) -> int:
        return self._quotas.usage(self._root(user))

    def counted_usage_bytes(self, user: str) -> int | None:
        return self._quotas.counted(self._locate(user, INBOX)[0])

    def quota_of(self, user: str) -> int:
        return self._quotas.limit(user)

    def is_full(self, user: str, *, blocking: bool = True, limit: int | None = None) -> bool | None:
        if limit is None:
            limit = self.quota_of(user)
        if limit <= 0:
            return False
        used = self.usage_bytes(user) if blocking else self.counted_usage_bytes(user)
        return None if used is None else used >= limit

    # -- writing (the flush itself: delivery/maildir_write.py) ----------------------------------
    def _commit(
        self,
        written: list[_Written],
        flags: Sequence[frozenset[str]],
    ) -> list[MessageRef]:
        """Place `written` (all already fsynced in tmp/) atomically as a group, or remove them
        all; concurrent callers share the folder locks and fsyncs (delivery/commit.py)."""
        if not written:
            return []
        return self._committer.commit(_Job(tuple(flags), written=tuple(written)))

    def deliver(
        self,
        targets: Sequence[tuple[str, str]],
        message: bytes,
    ) -> list[MessageRef]:
        return self.deliver_parts(targets, [to_lf(message)])

    def deliver_parts(
        self,
        targets: Sequence[tuple[str, str]],
        parts: Sequence[bytes],
    ) -> list[MessageRef]:
        # Sizes slice by slice: one count over 25 MB would hold the GIL (and stall the event
        # loop) for tens of ms; a slice of a MB takes about one.
        size = sum(len(p) for p in parts)
        sizes = (size, size + sum(p.count(b"\n") for p in parts))
        resolved = [(user, *self._folder(user, folder)) for user, folder in targets]
        per_user: dict[str, int] = {}
        for user, *_ in resolved:
            per_user[user] = per_user.get(user, 0) + size
        for user, adding in per_user.items():
            self._quotas.check(user, self._root(user), adding)
        if not resolved:
            return []
        # The flush writes, fsyncs and places the files (see _Job), then publishes.
        return self._committer.commit(
            _Job(
                (frozenset(),) * len(resolved),
                targets=tuple(_Target(*r) for r in resolved),
                parts=tuple(parts),
                sizes=sizes,
                publish=True,
            )
        )

    def deliver_parts_nowait(
        self,
        targets: Sequence[tuple[str, str]],
        parts: Sequence[bytes],
    ) -> Future[list[MessageRef]]:
        """`deliver_parts` for an event loop: returns at once. `parts` may still have CRLF
        endings; everything else (folder checks, the quota, LF, the writes) happens in the
        group commit's thread, and the future resolves once the copies are durable."""
        if not targets:
            done: Future[list[MessageRef]] = Future()
            done.set_result([])
            return done
        return self._committer.submit(
            _Job(
                (frozenset(),) * len(targets),
                parts=tuple(parts),
                unresolved=tuple(targets),
                publish=True,
            )
        )

    def append(
        self,
        user: str,
        folder: str,
        message: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> MessageRef:
        root, name, fdir = self._folder(user, folder)
        data = to_lf(message)
        self._quotas.check(user, root, len(data))
        wanted = storable_flags(flags)
        target = _Target(user, root, name, fdir)
        (ref,) = self._committer.commit(
            _Job(
                (wanted,),
                targets=(target,),
                parts=(data,),
                sizes=(len(data), crlf_size(data)),
                mtime=internal_date,
                publish=True,
            )
        )
        return ref

    def append_many(
        self,
        user: str,
        folder: str,
        messages: Sequence[tuple[bytes, Iterable[str], float | None]],
    ) -> list[MessageRef]:
        """MULTIAPPEND (RFC 3502): (message, flags, internal date) each, all or nothing: every
        message is fsynced in tmp/ first, then they are placed and numbered as one group (as
        COPY's links are); on any failure the files written so far are removed."""
        root, name, fdir = self._folder(user, folder)
        data = [to_lf(message) for message, _flags, _when in messages]
        self._quotas.check(user, root, sum(len(d) for d in data))
        target = _Target(user, root, name, fdir)
        written: list[_Written] = []
        try:
            for lf, (_message, _flags, when) in zip(data, messages, strict=True):
                written.append(self._writer.write_tmp(target, lf, (len(lf), crlf_size(lf)), when))
        except BaseException:
            for item in written:
                with contextlib.suppress(OSError):
                    (item.fdir / "tmp" / item.base).unlink()
            raise
        refs = self._commit(written, [storable_flags(flags) for _m, flags, _w in messages])
        if refs:
            self._publish(user, name)
        return refs

    # -- folders (the work itself: delivery/maildir_folders.py) -------------------------------
    def list_folders(self, user: str) -> list[FolderInfo]:
        return self._folder_ops.list_folders(user)

    def create_folder(self, user: str, folder: str, special_use: SpecialUse | None = None) -> None:
        self._folder_ops.create_folder(user, folder, special_use)

    def delete_folder(self, user: str, folder: str) -> None:
        self._folder_ops.delete_folder(user, folder)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        self._folder_ops.rename_folder(user, old, new)

    def subscriptions(self, user: str) -> list[str]:
        """Every subscribed name, those with no folder (any more) included (RFC 9051 §6.3.7)."""
        return self._folder_ops.subscriptions(user)

    def set_subscribed(self, user: str, folder: str, subscribed: bool) -> None:
        self._folder_ops.set_subscribed(user, folder, subscribed)

    # -- reading and changing messages ---------------------------------------------------------
    def snapshot(self, user: str, folder: str, *, claim_recent: bool = False) -> FolderSnapshot:
        root, name, fdir = self._folder(user, folder)
        snap, foreign = maildir_messages.snapshot(
            self._index(root, fdir), fdir, name, claim_recent=claim_recent
        )
        if foreign:
            quota.invalidate(root)  # someone else added or removed files: recount lazily
        return snap

    def changes(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        root, _name, fdir = self._folder(user, folder)
        found, foreign = maildir_messages.changes(
            self._index(root, fdir), since, claim_recent=claim_recent
        )
        if foreign:
            quota.invalidate(root)
        return found

    def changes_now(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        """`changes` if the folder's index is open, free and current (the changes are the
        ones this process made, or none): a few stat() calls and indexed reads, no lock
        waited for, nothing written. Every command of every session asks; this answers on
        the event loop's thread, without a trip to a worker thread and back. None: ask
        `changes`."""
        try:
            _root, _name, fdir = self._locate(user, folder)
        except StoreError:
            return None
        with self._indexes_lock:
            index = self._indexes.get(fdir)
        if index is None:
            return None
        try:
            return maildir_messages.changes_now(index, since, claim_recent=claim_recent)
        except (sqlite3.Error, OSError):
            return None  # `changes` deals with it (a rebuilt index file, a vanished folder)

    def read_message(self, user: str, folder: str, uid: int) -> bytes:
        root, _name, fdir = self._folder(user, folder)
        with maildir_messages.open_message(self._index(root, fdir), fdir, uid) as f:
            return f.read()

    def read_messages(
        self, user: str, folder: str, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes]]:
        """(uid, message) for each of `uids` that still exists, in the order given, under one
        folder lock (FETCH of a whole folder would otherwise take it once per message). The
        files are opened under the lock and read one at a time as the caller iterates."""
        files = list(self._open_messages(user, folder, uids).items())
        closed = 0  # files[:closed] are closed: a descriptor is never closed twice
        try:
            for uid, f in files:
                try:
                    data = maildir_messages.read_whole(f)
                finally:
                    os.close(f.fd)
                    closed += 1
                yield uid, data
        finally:
            maildir_messages.close_all(f for _, f in files[closed:])

    def map_messages(
        self,
        user: str,
        folder: str,
        uids: Sequence[int],
        work: Callable[[MessageBatch], R],
        *,
        whole: bool,
    ) -> Iterator[R]:
        root, _name, fdir = self._folder(user, folder)
        return maildir_messages.map_files(self._index(root, fdir), fdir, uids, work, whole)

    def read_header(self, user: str, folder: str, uid: int) -> bytes:
        """The message's header block, through the blank line that ends it (the whole message
        if it has none), reading no more of the file than that. Raises MessageGoneError."""
        found = self.read_headers(user, folder, [uid])
        if uid not in found:
            raise MessageGoneError(f"UID {uid} was expunged")
        return found[uid]

    def read_headers(self, user: str, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        """`read_header` of several messages under one folder lock (SEARCH over a whole folder
        would otherwise take the lock once per message); expunged ones are absent."""
        files = self._open_messages(user, folder, uids)
        try:
            return {uid: maildir_messages.header_block(f) for uid, f in files.items()}
        finally:
            maildir_messages.close_all(files.values())

    def _open_messages(
        self, user: str, folder: str, uids: Sequence[int]
    ) -> dict[int, maildir_messages.OpenFile]:
        """Open each of `uids` that still exists, in the order given, under one folder lock: an
        open file survives a flag rename, so reading after the lock is safe. The caller closes
        them."""
        root, _name, fdir = self._folder(user, folder)
        return maildir_messages.open_messages(self._index(root, fdir), fdir, uids)

    def store_flags(
        self, user: str, folder: str, uids: Iterable[int], flags: Iterable[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        change = self.change_flags(user, folder, uids, flags, mode)
        return {uid: info.flags for uid, info in change.done.items()}

    def change_flags(
        self,
        user: str,
        folder: str,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: FlagMode,
        *,
        unchanged_since: int | None = None,
    ) -> FlagChange:
        root, name, fdir = self._folder(user, folder)
        wanted = storable_flags(flags)
        index = self._index(root, fdir)
        with index.locked():
            result, changed = maildir_flags.change_flags(
                index, fdir, uids, wanted, mode, unchanged_since
            )
        if changed:
            self._publish(user, name)
        return result

    def expunged_since(self, user: str, folder: str, modseq: int) -> list[int] | None:
        root, _name, fdir = self._folder(user, folder)
        index = self._index(root, fdir)
        with index.locked():
            index.sync()
            return index.expunged_since(modseq)

    def copy(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        root, _name, fdir = self._folder(user, folder)
        _, dest_name, dest_dir = self._folder(user, dest)
        index = self._index(root, fdir)
        written: list[_Written] = []
        sources: list[tuple[int, frozenset[str]]] = []
        if self.quota_of(user) > 0:
            # Checked before taking the folder lock: a recount takes the quota lock
            # exclusively, which must never happen under a folder lock (see module docstring).
            with index.locked():
                index.sync()
                by_uid = index.entries_by_uid()
                adding = sum(by_uid[u].disk_size for u in dict.fromkeys(uids) if u in by_uid)
            self._quotas.check(user, root, adding)
        try:
            with index.locked():
                index.sync()
                by_uid = index.entries_by_uid()
                chosen = [by_uid[u] for u in dict.fromkeys(uids) if u in by_uid]
                for entry in chosen:
                    written.append(
                        self._writer.link_tmp(user, root, dest_name, dest_dir, fdir, entry)
                    )
                    sources.append((entry.uid, entry.info.flags))
        except BaseException:
            for item in written:
                with contextlib.suppress(OSError):
                    (item.fdir / "tmp" / item.base).unlink()
            raise
        refs = self._commit(written, [flags for _uid, flags in sources])
        if refs:
            self._publish(user, dest_name)
        return [(uid, ref.uid) for (uid, _flags), ref in zip(sources, refs, strict=True)]

    def move(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        pairs = self.copy(user, folder, uids, dest)
        self._remove(user, folder, [src for src, _new in pairs], only_deleted=False)
        return pairs

    def expunge(self, user: str, folder: str, uids: Iterable[int] | None = None) -> list[int]:
        return self._remove(user, folder, uids, only_deleted=True)

    def _remove(
        self, user: str, folder: str, uids: Iterable[int] | None, *, only_deleted: bool
    ) -> list[int]:
        root, name, fdir = self._folder(user, folder)
        index = self._index(root, fdir)
        removed = maildir_messages.remove(index, root, fdir, uids, only_deleted=only_deleted)
        if removed:
            self._publish(user, name)
        return removed
