"""Durable file writes: nothing mailstack writes is ever seen half-written.

`atomic_write` writes to a temporary file in the same directory, fsyncs it, renames it over the
target and fsyncs the directory, so after a crash the path holds the old or the new content.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or create inside `path` durable (POSIX needs the directory fsynced)."""
    fsync_path(path, os.O_DIRECTORY)


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync `path` by name: what any process wrote into it reaches the disk."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    sync_dir: Callable[[Path], None] = fsync_dir,
) -> None:
    """Replace `path` with `data` atomically and durably, with permission bits `mode`.
    `sync_dir`: how the directory is made durable (the queue shares fsyncs between threads)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask; the caller's is not
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    sync_dir(path.parent)


def ensure_dir(path: Path, *, mode: int = 0o755) -> Path:
    """Create `path` (and parents) if missing, and give it `mode` in any case."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    return path


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """Temporarily set the process umask (for files created by libraries we call)."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)
