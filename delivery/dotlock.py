"""Dovecot-compatible dotlocks: `<file>.lock`, created with O_EXCL, replaced over `<file>`.

Dovecot locks a Maildir folder by creating `dovecot-uidlist.lock` and, when it rewrites the
uidlist, writes the new content into the lock file and renames it over `dovecot-uidlist`
(lib/file-dotlock.c: `file_dotlock_replace`), so taking, writing and releasing are one step and
a reader never sees half a file. We take the same lock, so Dovecot and mailstack can work on one
Maildir at the same time.

Threads of one process first serialise on a `threading.Lock` per path; then, with `queue_on`,
mailstack processes queue on a kernel flock (SMTP workers and the main process deliver into the
same folders), so only a lock held by another program (Dovecot) is polled for.

A lock older than `stale_s` is taken over, as Dovecot does: its
owner crashed (Dovecot's uidlist lock: MAILDIR_UIDLIST_LOCK_STALE_TIMEOUT = 2 minutes); a lock
whose "<pid>:<host>" names a process of this host that no longer exists is taken over at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

from mailstack.delivery.layout import current_pid
from mailstack.delivery.store import StoreError

from mailstack.base.fsutil import fsync_dir

STALE_S = 120.0  # Dovecot's uidlist dotlock stale timeout (maildir-uidlist.c)
TIMEOUT_S = 60.0  # how long we wait for a live lock before giving up with an error

_HOST = socket.gethostname()  # Dovecot's my_hostname

_registry_lock = threading.Lock()
_thread_locks: dict[str, threading.Lock] = {}


class LockTimeoutError(StoreError):
    """Another process held the folder lock for longer than we are willing to wait."""

    code = "INUSE"


def _thread_lock(path: Path) -> threading.Lock:
    key = os.fspath(path)
    with _registry_lock:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


class DotLock:
    """`with DotLock(path): ...` holds `path.lock`; `replace(data)` writes `path` and unlocks."""

    def __init__(
        self,
        path: Path,
        *,
        stale_s: float = STALE_S,
        timeout_s: float = TIMEOUT_S,
        queue_on: Path | None = None,
    ):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")
        self._stale_s = stale_s
        self._timeout_s = timeout_s
        self._thread_lock = _thread_lock(path)
        self._fd: int | None = None
        self._queue_on = queue_on
        self._queue_fd: int | None = None

    def acquire(self) -> None:
        if not self._thread_lock.acquire(timeout=self._timeout_s):
            raise LockTimeoutError(f"timed out waiting for {self.lock_path}")
        try:
            self._enter_queue()
            self._acquire_file()
        except BaseException:
            self._leave_queue()
            self._thread_lock.release()
            raise

    def _enter_queue(self) -> None:
        """Wait for other mailstack processes in the kernel (flock on `queue_on`), so the
        dotlock is free by the time we try it: no polling among ourselves, and the waiter is
        woken the moment the holder is done. Only Dovecot's holds are polled for."""
        if self._queue_on is None:
            return
        fd = os.open(self._queue_on, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._queue_fd = fd

    def _leave_queue(self) -> None:
        if self._queue_fd is not None:
            fd, self._queue_fd = self._queue_fd, None
            os.close(fd)  # drops the flock

    def _acquire_file(self) -> None:
        deadline = time.monotonic() + self._timeout_s
        delay_s = 0.001
        while True:
            try:
                self._fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                os.write(self._fd, f"{current_pid()}:{_HOST}".encode())  # as Dovecot writes it
                return
            except FileExistsError:
                pass
            try:
                st = self.lock_path.stat()
            except FileNotFoundError:
                continue  # released meanwhile: try again at once
            if time.time() - st.st_mtime > self._stale_s or self._owner_is_dead():
                # The owner died holding it; Dovecot overrides stale dotlocks the same way.
                # Unlink only the lock we judged (same inode): not one taken meanwhile.
                with contextlib.suppress(FileNotFoundError):
                    if self.lock_path.stat().st_ino == st.st_ino:
                        self.lock_path.unlink()
                continue
            if time.monotonic() > deadline:
                raise LockTimeoutError(f"timed out waiting for {self.lock_path}")
            # Another process holds it; no notification exists for dotlocks, so poll with
            # backoff (Dovecot polls too).
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 0.05)

    def _owner_is_dead(self) -> bool:
        """The lock names a process of this host that no longer exists.

        Lock holders write "<pid>:<host>" into the lock (Dovecot's file-dotlock.c does so, and
        so do we; replace() overwrites it with content), so a waiter on the same host can tell
        at once that the owner crashed instead of waiting out the stale timeout. Dovecot makes
        the same check, so it also takes over locks a crashed mailstack left behind.
        """
        try:
            text = self.lock_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return False
        pid, sep, host = text.partition(":")
        if not sep or host != _HOST or not pid.isdigit() or int(pid) <= 0:
            return False  # content (a uidlist being written) or another host's lock
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False  # exists, owned by another user
        return False

    @property
    def is_held(self) -> bool:
        return self._fd is not None

    def replace(self, data: bytes) -> None:
        """Write `data` into the lock file, fsync, rename it over `path`: this releases."""
        if self._fd is None:
            raise RuntimeError("replace() without holding the lock")
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # drop our "<pid>:<host>"
            os.lseek(fd, 0, os.SEEK_SET)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
            os.close(fd)
            os.rename(self.lock_path, self.path)
            fsync_dir(self.path.parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            raise
        finally:
            self._leave_queue()
            self._thread_lock.release()

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
        finally:
            self._leave_queue()
            self._thread_lock.release()

    @contextlib.contextmanager
    def in_process(self) -> Iterator[None]:
        """Only the threads of this process kept out: for a look at in-memory state that
        writes nothing (the files are read as they are, as Dovecot reads them)."""
        if not self._thread_lock.acquire(timeout=self._timeout_s):
            raise LockTimeoutError(f"timed out waiting for {self.lock_path}")
        try:
            yield
        finally:
            self._thread_lock.release()

    @contextlib.contextmanager
    def in_process_now(self) -> Iterator[bool]:
        """`in_process` without waiting: yields whether the lock was free (and is now held).
        For the event loop's thread, which must not wait for a thread doing I/O."""
        got = self._thread_lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self._thread_lock.release()

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
