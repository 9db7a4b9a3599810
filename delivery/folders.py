"""Account-level files of a Maildir++: folder directories, subscriptions, UIDVALIDITY, special use.

- A folder is `.<name>/` with `cur/ new/ tmp/`, an empty `maildirfolder` (Maildir++) and its
  `dovecot-uidlist`; `build_folder` assembles it inside the root's `tmp/` and renames it into
  place, so nobody (Dovecot included) ever sees a half-made folder.
- `subscriptions` is written under Dovecot's `subscriptions.lock` dotlock by replacing the file
  (subscription-file.c does the same); format in delivery/layout.py.
- UIDVALIDITY comes from Dovecot's allocator (mailbox-uidvalidity.c): `dovecot-uidvalidity`
  holds the last value in hex and the empty marker `dovecot-uidvalidity.<hex>` is renamed to
  the next value; the rename's atomicity keeps concurrent allocations distinct, across
  processes and between Dovecot and us. So a folder re-created under an old name never gets an
  old UIDVALIDITY again (RFC 9051 §2.3.1.1).
- Special use of the default folders is implied by DEFAULT_FOLDERS (as Dovecot's configuration
  names them); another folder created with a special use keeps it in `mailstack-special-use`
  inside its directory, so it moves along on RENAME. Dovecot ignores that file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from pathlib import Path

from mailstack.delivery.dotlock import DotLock
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.index_files import FILE_MODE
from mailstack.delivery.layout import (
    folder_dir_name,
    folder_from_dir_name,
    parse_subscriptions,
    serialize_subscriptions,
)
from mailstack.delivery.store import (
    DEFAULT_FOLDERS,
    INBOX,
    FolderExistsError,
    SpecialUse,
    StoreError,
)

from mailstack.base.fsutil import atomic_write, fsync_dir

DIR_MODE = 0o700
SUBSCRIPTIONS = "subscriptions"
UIDVALIDITY = "dovecot-uidvalidity"
SPECIAL_USE = "mailstack-special-use"
MAILDIRFOLDER = "maildirfolder"


def folder_names(root: Path) -> set[str]:
    """Names of the folders that exist (have cur/), INBOX included."""
    return set(folder_idents(root))


def folder_ident(directory: Path) -> int:
    """FolderInfo.ident of the folder in `directory` (0 if it is gone)."""
    try:
        return os.stat(directory).st_ino
    except OSError:
        return 0


def folder_idents(root: Path) -> dict[str, int]:
    """{name: inode of its directory} of the folders that exist (have cur/), INBOX included.
    A rename keeps the inode (FolderInfo.ident); readdir gives it, so it costs no stat."""
    idents = {INBOX: os.stat(root).st_ino}
    with os.scandir(root) as entries:
        for entry in entries:
            name = folder_from_dir_name(entry.name)
            if name and name != INBOX and (root / entry.name / "cur").is_dir():
                idents[name] = entry.inode()
    return idents


def build_folder(root: Path, name: str, special_use: SpecialUse | None) -> Path:
    """Create folder `name` (normalized, not INBOX); FolderExistsError if it exists."""
    final = root / folder_dir_name(name)
    if (final / "cur").is_dir():
        raise FolderExistsError(f"folder {name!r} exists")
    staging = root / "tmp" / f".mkfolder.{secrets.token_hex(8)}"
    staging.mkdir(mode=DIR_MODE)
    try:
        for sub in ("tmp", "new", "cur"):
            (staging / sub).mkdir(mode=DIR_MODE)
        (staging / MAILDIRFOLDER).touch(mode=FILE_MODE)
        if special_use is not None and DEFAULT_FOLDERS.get(name) != special_use:
            atomic_write(staging / SPECIAL_USE, f"{special_use}\n", mode=FILE_MODE)
        with FolderIndex(staging, lambda: next_uid_validity(root)).locked() as index:
            index.sync()  # writes the uidlist with a fresh UIDVALIDITY
        try:
            os.rename(staging, final)
        except OSError as exc:  # ENOTEMPTY/EEXIST: someone created it meanwhile
            raise FolderExistsError(f"folder {name!r} exists") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_dir(root)
    return final


def read_special_use(root: Path, name: str) -> SpecialUse | None:
    if name == INBOX:
        return None
    try:
        text = (root / folder_dir_name(name) / SPECIAL_USE).read_text().strip()
    except FileNotFoundError:
        return DEFAULT_FOLDERS.get(name)
    try:
        return SpecialUse(text)
    except ValueError:
        return DEFAULT_FOLDERS.get(name)


def read_subscriptions(root: Path) -> list[str]:
    try:
        return parse_subscriptions((root / SUBSCRIPTIONS).read_bytes())
    except FileNotFoundError:
        return []


def change_subscriptions(root: Path, add: list[str], remove: list[str]) -> None:
    with DotLock(root / SUBSCRIPTIONS) as lock:  # Dovecot's subscriptions.lock
        names = [n for n in read_subscriptions(root) if n not in remove]
        names += [n for n in add if n not in names]
        lock.replace(serialize_subscriptions(names))


def next_uid_validity(root: Path) -> int:
    path = root / UIDVALIDITY
    for _ in range(10):
        markers = [
            int(suffix, 16)
            for n in os.listdir(root)
            if n.startswith(UIDVALIDITY + ".") and _is_hex(suffix := n[len(UIDVALIDITY) + 1 :])
        ]
        if not markers:
            value = int(time.time())  # Dovecot's first value too
            try:
                fd = os.open(f"{path}.{value:08x}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            except FileExistsError:
                continue
            os.close(fd)
        else:
            current = max(markers)
            try:
                os.rename(f"{path}.{current:08x}", f"{path}.{current + 1:08x}")
            except FileNotFoundError:
                continue  # another allocator won this value; take the next one
            value = current + 1
            if len(markers) > 1:  # a race created two markers; Dovecot drops the smaller too
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{path}.{min(markers):08x}")
        atomic_write(path, f"{value:08x}", mode=FILE_MODE)
        return value
    raise StoreError(f"{path}: could not allocate a UIDVALIDITY")


def _is_hex(text: str) -> bool:
    return 0 < len(text) <= 8 and all(c in "0123456789abcdefABCDEF" for c in text)
