"""The folder operations of `MaildirStore` (delivery/maildir.py): `FolderOps`.

LIST, CREATE, DELETE, RENAME and the subscriptions of one account. The files they work on
(folder directories, `subscriptions`, UIDVALIDITY, special use) are delivery/folders.py's; this
module adds the IMAP semantics on top and keeps the store's index cache in step, and the
registry of shared folders (delivery/acl_registry.py) when a folder with an ACL file goes or moves.

DELETE of a folder that has children removes the folder and its messages; the name lives on as
the \\Noselect parent of its children (RFC 9051 §6.3.4), which `list_folders` reports with
`is_selectable=False` (Maildir++ stores "A.B" as `.A.B/` whether or not `.A/` exists). DELETE of
such a name, which has no folder of its own, is FolderNotFoundError, as the RFC asks. INBOX
cannot be deleted. RENAME of INBOX moves its messages into the new folder and leaves INBOX
empty; its children stay (RFC 9051 §6.3.6).

Like `BatchWriter` (delivery/maildir_write.py), `FolderOps` has no caches or locks of its own:
the store passes in its account and folder lookups, its per-folder `FolderIndex` cache (and the
way to drop entries from it) and the publish callback for IDLE sessions. The lock order of
delivery/maildir.py applies.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from mailstack.delivery import acl, folders, quota
from mailstack.delivery.acl_registry import AclRegistry
from mailstack.delivery.index import FolderIndex
from mailstack.delivery.layout import (
    folder_dir_name,
    folder_from_dir_name,
    normalize_folder,
    parent_folders,
)
from mailstack.delivery.store import (
    HIERARCHY_DELIMITER,
    INBOX,
    FolderExistsError,
    FolderInfo,
    InvalidFolderNameError,
    SpecialUse,
)

from mailstack.base.fsutil import fsync_dir


class _Publish(Protocol):
    def __call__(self, user: str, *folders: str) -> None: ...


class FolderOps:
    """Folder listing, creation, deletion, renaming and subscriptions for one `MaildirStore`."""

    def __init__(
        self,
        *,
        root: Callable[[str], Path],
        folder: Callable[[str, str], tuple[Path, str, Path]],
        index: Callable[[Path, Path], FolderIndex],
        forget_indexes: Callable[[Path], None],
        publish: _Publish,
        acls: AclRegistry | None = None,
    ) -> None:
        self._root = root  # user -> the account's Maildir; raises UnknownUserError
        self._folder = folder  # (user, folder) -> (root, normalized name, folder directory)
        self._index = index  # (account root, folder directory) -> the store's cached index
        self._forget_indexes = forget_indexes  # drop cached indexes at and below a directory
        self._publish = publish  # (user, *folders): tell IDLE sessions
        self._acls = acls  # told when a folder with an ACL file goes or moves

    def list_folders(self, user: str) -> list[FolderInfo]:
        root = self._root(user)
        idents = folders.folder_idents(root)
        real = set(idents)
        # Parents that exist only as a prefix ("A" of "A.B" made by Dovecot or a script).
        implied = {p for name in real for p in parent_folders(name)} - real
        subscribed = set(folders.read_subscriptions(root))
        names = sorted(real | implied, key=lambda n: (n != INBOX, n))
        return [
            FolderInfo(
                name=name,
                special_use=folders.read_special_use(root, name) if name in real else None,
                subscribed=name in subscribed,
                has_children=any(o.startswith(name + HIERARCHY_DELIMITER) for o in names),
                is_selectable=name in real,
                ident=idents.get(name, 0),
            )
            for name in names
        ]

    def create_folder(self, user: str, folder: str, special_use: SpecialUse | None = None) -> None:
        root = self._root(user)
        name = normalize_folder(folder)
        if name == INBOX:
            raise FolderExistsError("INBOX always exists")
        if (root / folder_dir_name(name) / "cur").is_dir():
            # Before the parents: a CREATE that fails must not bring back a deleted parent.
            raise FolderExistsError(f"folder {name!r} exists")
        for parent in parent_folders(name):
            # RFC 9051 §6.3.4: the server SHOULD create missing superior names.
            if parent != INBOX and not (root / folder_dir_name(parent) / "cur").is_dir():
                with contextlib.suppress(FolderExistsError):
                    self._create_one(root, parent, None)
        self._create_one(root, name, special_use)
        self._publish(user, name)

    def _create_one(self, root: Path, name: str, special_use: SpecialUse | None) -> None:
        final = folders.build_folder(root, name, special_use)
        self._forget_indexes(final)

    def delete_folder(self, user: str, folder: str) -> None:
        root, name, fdir = self._folder(user, folder)
        if name == INBOX:
            raise InvalidFolderNameError("INBOX cannot be deleted (RFC 9051 §6.3.4)")
        trash = root / "tmp" / f".deleted.{secrets.token_hex(8)}"
        self._move_dir(root, fdir, trash)
        if self._acls is not None and (trash / acl.ACL_FILE).exists():
            self._acls.forget(user, name)
        shutil.rmtree(trash, ignore_errors=True)
        quota.invalidate(root)
        self._publish(user, name)

    def _move_dir(self, root: Path, src: Path, dst: Path) -> None:
        """Rename a folder directory while holding its lock, so no writer is inside."""
        index = self._index(root, src)
        with index.locked():
            os.rename(src, dst)
            # Our dotlock moved along with the directory; remove it there (release() will
            # find nothing at the old path).
            with contextlib.suppress(FileNotFoundError):
                (dst / "dovecot-uidlist.lock").unlink()
        fsync_dir(root)
        self._forget_indexes(src)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        root, old_name, old_dir = self._folder(user, old)
        new_name = normalize_folder(new)
        if new_name == INBOX or (root / folder_dir_name(new_name) / "cur").is_dir():
            raise FolderExistsError(f"folder {new_name!r} exists")
        if old_name == INBOX:
            # INBOX's children stay where they are (RFC 3501 §6.3.5), so "INBOX.old" is fine.
            self._rename_inbox(user, root, new_name)
            return
        if new_name.startswith(old_name + HIERARCHY_DELIMITER):
            raise InvalidFolderNameError(f"cannot move {old_name!r} into itself")
        prefix = "." + old_name + HIERARCHY_DELIMITER
        moves = [(old_dir, root / folder_dir_name(new_name))] + [
            (root / child, root / f".{new_name}{child[len(prefix) - 1 :]}")
            for child in sorted(n for n in os.listdir(root) if n.startswith(prefix))
        ]
        # Check every target first: a clash halfway would leave the hierarchy half renamed.
        for _src, dst in moves:
            if dst.exists():
                raise FolderExistsError(f"folder {dst.name[1:]!r} exists")
        for parent in parent_folders(new_name):
            if parent != INBOX and not (root / folder_dir_name(parent) / "cur").is_dir():
                with contextlib.suppress(FolderExistsError):
                    self._create_one(root, parent, None)
        for src, dst in moves:
            self._move_dir(root, src, dst)
        # Their ACL files moved along: so must the registry's rows.
        shared = [(src.name, dst.name) for src, dst in moves if (dst / acl.ACL_FILE).exists()]
        if self._acls is not None and shared:
            self._acls.renamed(user, _folder_names(shared))
        self._publish(user, old_name, new_name)

    def _rename_inbox(self, user: str, root: Path, new_name: str) -> None:
        self.create_folder(user, new_name)
        dest = root / folder_dir_name(new_name)
        src_index, dest_index = self._index(root, root), self._index(root, dest)
        with src_index.locked():
            src_index.sync()
            entries = src_index.entries()
            keywords = src_index.keywords
            # The only place holding two folder locks, always INBOX first: no cycle possible.
            with dest_index.locked():
                dest_index.sync()
                dest_index.set_keywords(keywords)  # letters keep their meaning
                moved = []
                for entry in entries:  # in UID order, so the new UIDs keep the order
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(root / entry.sub / entry.name, dest / entry.sub / entry.name)
                        moved.append((entry.sub, entry.name, entry.meta))
                dest_index.added_many(moved)
                for sub in ("new", "cur"):
                    fsync_dir(dest / sub)
            src_index.removed((e.info.key for e in entries), rewrite=True)
        self._publish(user, INBOX, new_name)

    def subscriptions(self, user: str) -> list[str]:
        """Every subscribed name, those with no folder (any more) included (RFC 9051 §6.3.7)."""
        return folders.read_subscriptions(self._root(user))

    def set_subscribed(self, user: str, folder: str, subscribed: bool) -> None:
        root = self._root(user)
        name = normalize_folder(folder)  # RFC 9051 §6.3.7: may name a folder that doesn't exist
        if subscribed:
            folders.change_subscriptions(root, add=[name], remove=[])
        else:
            folders.change_subscriptions(root, add=[], remove=[name])


def _folder_names(moves: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(old folder, new folder) of (old, new) directory names."""
    names = [(folder_from_dir_name(old), folder_from_dir_name(new)) for old, new in moves]
    return [(old, new) for old, new in names if old is not None and new is not None]
