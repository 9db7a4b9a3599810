"""Other accounts' folders over IMAP: the Shared and Public namespaces (RFC 2342) with the rights
of RFC 4314, as the folders' dovecot-acl files give them (delivery/acl.py).

Names. A folder Alice shared is `Shared/alice@example.com/Projects/2024` for Bob; a team
mailbox's folders (an account nobody logs in to, `mailstack mailbox add`) are
`Public/support@example.com/INBOX`. These two namespaces use "/" as hierarchy delimiter, because
addresses contain the personal namespace's "." (RFC 2342 lets each namespace have its own, and
Dovecot configurations sharing Maildir++ folders do the same); the owner's "Projects.2024" is
shown as "Projects/2024", and a folder whose name holds a "/" cannot be shown there.

`SharedStore` wraps the store for the IMAP server: personal names pass through unchanged; a
shared name is mapped to (owner, folder) and checked against the rights on every call, so a
change to an ACL applies to running sessions at once (the file is read on each access: a stat
and a small read):
- l: the folder is listed; r: SELECT/EXAMINE, STATUS, FETCH, SEARCH, COPY from it;
- s / t / w: STORE of \\Seen / \\Deleted / every other flag; i: APPEND and COPY/MOVE into it;
- e: EXPUNGE (and the source side of MOVE, with t); k: CREATE under it; x: DELETE it.
A folder on which the user has neither l nor r does not exist for them (RFC 4314 §4: no hint
that it exists); a missing right on a folder they can see is NO [NOPERM].
LIST finds the folders shared with the user in the registry of delivery/acl_registry.py (who
shares what with whom, kept by our writers, rescanned for files others wrote) and reads each
one's file for the rights: it costs what is shared with the user, not a look at every account.
Flags are shared: a message Bob reads in Alice's folder is \\Seen for Alice too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from mailstack.delivery import acl, folders
from mailstack.delivery.acl_registry import AclRegistry
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import (
    HIERARCHY_DELIMITER,
    INBOX,
    FlagChange,
    FolderChanges,
    FolderInfo,
    FolderNotFoundError,
    FolderSnapshot,
    HeaderIndex,
    MailStore,
    MessageBatch,
    MessageRef,
    R,
    SpecialUse,
    StoreError,
    TextIndex,
)

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts

SHARED, PUBLIC = "Shared", "Public"
OTHER_DELIMITER = "/"


class NoRightsError(StoreError):
    """RFC 4314 §4: the user may see the folder but not do this."""

    code = "NOPERM"


@dataclass(frozen=True, slots=True)
class Route:
    owner: str
    folder: str  # the owner's name for it (Maildir++ "." delimiter)
    rights: str
    visible: str  # the name the client used

    def need(self, letters: str, action: str) -> None:
        missing = [ch for ch in letters if ch not in self.rights]
        if missing:
            raise NoRightsError(
                f"no right to {action} in {self.visible} (needs {''.join(missing)})"
            )


def delimiter_of(name: str) -> str:
    """The hierarchy delimiter of the namespace `name` is in."""
    top = name.split(OTHER_DELIMITER, 1)[0]
    return OTHER_DELIMITER if top in (SHARED, PUBLIC) else HIERARCHY_DELIMITER


def visible_name(prefix: str, owner: str, folder: str) -> str | None:
    if OTHER_DELIMITER in folder:
        return None
    return OTHER_DELIMITER.join((prefix, owner, *folder.split(HIERARCHY_DELIMITER)))


def _split(name: str) -> tuple[str, str, str] | None:
    """(prefix, owner, folder) of a name in the Shared/Public namespaces, else None."""
    parts = name.split(OTHER_DELIMITER)
    if parts[0] not in (SHARED, PUBLIC):
        return None
    if len(parts) < 3 or not all(parts[1:]) or any(HIERARCHY_DELIMITER in p for p in parts[2:]):
        raise FolderNotFoundError(f"no folder {name!r}")
    folder = HIERARCHY_DELIMITER.join(parts[2:])
    return parts[0], parts[1].lower(), INBOX if folder.upper() == INBOX else folder


class SharedStore:
    """The store with other accounts' shared folders mapped in (see the module docstring)."""

    def __init__(self, inner: MailStore, paths: StatePaths, accounts: Accounts) -> None:
        self.inner = inner
        self.paths = paths
        self.accounts = accounts
        # Which folders are shared with whom: the store keeps it in step with its renames.
        self.acls = inner.acls if isinstance(inner, MaildirStore) else AclRegistry(paths)

    # -- names and rights ----------------------------------------------------------------------
    def _prefix_of(self, owner: str) -> str | None:
        account = self.accounts.get_user(owner)
        if account is None:
            return None
        return SHARED if account.enabled else PUBLIC  # nobody logs in to a team mailbox

    def route(self, user: str, name: str) -> Route:
        split = _split(name)
        if split is None:
            return Route(user, name, acl.ALL_RIGHTS, name)
        prefix, owner, folder = split
        if owner == user or self._prefix_of(owner) != prefix:
            raise FolderNotFoundError(f"no folder {name!r}")
        directory = acl.folder_dir(self.paths.maildir(owner), folder)
        rights = acl.rights_of(acl.read_acl(directory), user, owner)
        if "l" not in rights and "r" not in rights:
            raise FolderNotFoundError(f"no folder {name!r}")  # RFC 4314 §4: no hint it exists
        return Route(owner, folder, rights, name)

    def locate(self, user: str, name: str) -> tuple[str, str]:
        """(account, folder) whose changes a session on `name` hears about (IDLE)."""
        try:
            route = self.route(user, name)
        except StoreError:
            return user, name
        return route.owner, route.folder

    def _shared_infos(self, user: str) -> list[FolderInfo]:
        """What other accounts share with `user`: the registry says where to look, each
        folder's own file what the user may do (a revoke applies at once)."""
        infos: dict[str, FolderInfo] = {}
        for owner, folder in self.acls.shared_with(user):
            directory = acl.folder_dir(self.paths.maildir(owner), folder)
            if "l" not in acl.rights_of(acl.read_acl(directory), user, owner):
                continue
            prefix = self._prefix_of(owner)
            name = visible_name(prefix, owner, folder) if prefix else None
            if prefix is None or name is None:
                continue
            parts = name.split(OTHER_DELIMITER)
            for depth in range(1, len(parts)):  # parents: \Noselect, with children
                parent = OTHER_DELIMITER.join(parts[:depth])
                known = infos.get(parent)
                infos[parent] = FolderInfo(
                    parent,
                    None,
                    subscribed=False,
                    has_children=True,
                    is_selectable=known.is_selectable if known else False,
                )
            known = infos.get(name)
            infos[name] = FolderInfo(
                name,
                None,
                False,
                has_children=known.has_children if known else False,
                ident=folders.folder_ident(directory),
            )
        return list(infos.values())

    # -- the MailStore interface ---------------------------------------------------------------
    def create_account(self, user: str) -> None:
        self.inner.create_account(user)

    def delete_account(self, user: str) -> None:
        self.inner.delete_account(user)

    def usage_bytes(self, user: str) -> int:
        return self.inner.usage_bytes(user)

    def quota_of(self, user: str) -> int:
        return self.inner.quota_of(user)

    def is_full(self, user: str, *, blocking: bool = True, limit: int | None = None) -> bool | None:
        return self.inner.is_full(user, blocking=blocking, limit=limit)

    def counted_usage_bytes(self, user: str) -> int | None:
        return self.inner.counted_usage_bytes(user)

    def deliver(self, targets: Sequence[tuple[str, str]], message: bytes) -> list[MessageRef]:
        return self.inner.deliver(targets, message)

    def deliver_parts(
        self, targets: Sequence[tuple[str, str]], parts: Sequence[bytes]
    ) -> list[MessageRef]:
        return self.inner.deliver_parts(targets, parts)

    def deliver_parts_nowait(
        self, targets: Sequence[tuple[str, str]], parts: Sequence[bytes]
    ) -> Future[list[MessageRef]]:
        return self.inner.deliver_parts_nowait(targets, parts)

    def append(
        self,
        user: str,
        folder: str,
        message: bytes,
        *,
        flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> MessageRef:
        route = self.route(user, folder)
        route.need("i", "append")
        return self.inner.append(
            route.owner, route.folder, message, flags=flags, internal_date=internal_date
        )

    def append_many(
        self,
        user: str,
        folder: str,
        messages: Sequence[tuple[bytes, Iterable[str], float | None]],
    ) -> list[MessageRef]:
        """MULTIAPPEND (RFC 3502), under the same right as APPEND."""
        route = self.route(user, folder)
        route.need("i", "append")
        return self.inner.append_many(route.owner, route.folder, messages)

    def list_folders(self, user: str) -> list[FolderInfo]:
        shared = self._shared_infos(user)
        if shared:
            subscribed = set(self.inner.subscriptions(user))
            shared = [dataclasses.replace(f, subscribed=f.name in subscribed) for f in shared]
        return [*self.inner.list_folders(user), *shared]

    def create_folder(self, user: str, folder: str, special_use: SpecialUse | None = None) -> None:
        if _split(folder) is None:
            owner, name, parent = user, folder, folder.rpartition(HIERARCHY_DELIMITER)[0]
            self.inner.create_folder(user, folder, special_use)
        else:
            route = self.route(user, folder.rsplit(OTHER_DELIMITER, 1)[0])
            route.need("k", "create folders")
            owner, parent = route.owner, route.folder
            name = f"{parent}{HIERARCHY_DELIMITER}{folder.rsplit(OTHER_DELIMITER, 1)[1]}"
            self.inner.create_folder(owner, name)
        # A new folder starts with its parent's ACL, as Dovecot's ACL inheritance does: a
        # folder a member creates in a team mailbox is the team's too.
        if parent:
            entries = acl.read_acl(acl.folder_dir(self.paths.maildir(owner), parent))
            if entries is not None:
                self.acls.write(owner, name, entries)

    def delete_folder(self, user: str, folder: str) -> None:
        route = self.route(user, folder)
        route.need("x", "delete the folder")
        self.inner.delete_folder(route.owner, route.folder)

    def rename_folder(self, user: str, old: str, new: str) -> None:
        if _split(old) is not None or _split(new) is not None:
            raise NoRightsError("shared folders are renamed by their owner")
        self.inner.rename_folder(user, old, new)

    def set_subscribed(self, user: str, folder: str, subscribed: bool) -> None:
        if _split(folder) is None:
            self.inner.set_subscribed(user, folder, subscribed)
            return
        # A shared name is kept in the user's own subscriptions file as the client spells it
        # (Dovecot keeps its namespace prefix there too); LSUB then lists it with "/".
        if subscribed:
            self.route(user, folder)  # only what the user may see
        change = ([folder], []) if subscribed else ([], [folder])
        folders.change_subscriptions(self.paths.maildir(user), add=change[0], remove=change[1])

    def subscriptions(self, user: str) -> list[str]:
        return self.inner.subscriptions(user)

    def snapshot(self, user: str, folder: str, *, claim_recent: bool = False) -> FolderSnapshot:
        route = self.route(user, folder)
        route.need("r", "read")
        # \Recent belongs to the owner's sessions (RFC 3501 §2.3.2: one session sees it).
        snap = self.inner.snapshot(
            route.owner, route.folder, claim_recent=claim_recent and route.owner == user
        )
        return snap if route.owner == user else dataclasses.replace(snap, name=folder)

    def read_message(self, user: str, folder: str, uid: int) -> bytes:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.read_message(route.owner, route.folder, uid)

    def read_header(self, user: str, folder: str, uid: int) -> bytes:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.read_header(route.owner, route.folder, uid)

    def read_headers(self, user: str, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.read_headers(route.owner, route.folder, uids)

    def read_messages(
        self, user: str, folder: str, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes]]:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.read_messages(route.owner, route.folder, uids)

    def map_messages(
        self,
        user: str,
        folder: str,
        uids: Sequence[int],
        work: Callable[[MessageBatch], R],
        *,
        whole: bool,
    ) -> Iterator[R]:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.map_messages(route.owner, route.folder, uids, work, whole=whole)

    def store_flags(
        self, user: str, folder: str, uids: Iterable[int], flags: Iterable[str], mode: FlagMode
    ) -> dict[int, frozenset[str]]:
        change = self.change_flags(user, folder, uids, flags, mode)
        return {uid: info.flags for uid, info in change.done.items()}

    def expunged_since(self, user: str, folder: str, modseq: int) -> list[int] | None:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.expunged_since(route.owner, route.folder, modseq)

    def changes(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        route = self.route(user, folder)
        route.need("r", "read")
        # \Recent belongs to the owner's sessions, as in snapshot().
        return self.inner.changes(
            route.owner, route.folder, since, claim_recent=claim_recent and route.owner == user
        )

    def changes_now(
        self, user: str, folder: str, since: int, *, claim_recent: bool = False
    ) -> FolderChanges | None:
        if _split(folder) is not None:
            return None  # another account's folder: its ACL is read from disk (changes)
        return self.inner.changes_now(user, folder, since, claim_recent=claim_recent)

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
        route = self.route(user, folder)
        wanted = set(flags)
        if mode is FlagMode.REPLACE:  # replaces \Seen, \Deleted and the rest alike
            route.need("swt", "change flags")
        if Flag.SEEN in wanted:
            route.need("s", "set or clear \\Seen")
        if Flag.DELETED in wanted:
            route.need("t", "set or clear \\Deleted")
        if wanted - {Flag.SEEN, Flag.DELETED}:
            route.need("w", "change flags")
        return self.inner.change_flags(
            route.owner, route.folder, uids, wanted, mode, unchanged_since=unchanged_since
        )

    def copy(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        source, target = self.route(user, folder), self.route(user, dest)
        source.need("r", "read")
        target.need("i", "add messages")
        if source.owner == target.owner:
            return self.inner.copy(source.owner, source.folder, uids, target.folder)
        return self._copy_across(source, target, uids)

    def _copy_across(
        self, source: Route, target: Route, uids: Sequence[int]
    ) -> list[tuple[int, int]]:
        """COPY between two accounts' folders: read and append (flags kept, RFC 9051 §6.4.7);
        each copy is durable before the next, as the store's own copy promises."""
        snap = self.inner.snapshot(source.owner, source.folder)
        info = {m.uid: m for m in snap.messages}
        pairs: list[tuple[int, int]] = []
        for uid, data in self.inner.read_messages(source.owner, source.folder, uids):
            meta = info.get(uid)
            flags = meta.flags if meta else frozenset()
            date = meta.internal_date if meta else None
            ref = self.inner.append(
                target.owner, target.folder, data, flags=flags, internal_date=date
            )
            pairs.append((uid, ref.uid))
        return pairs

    def move(self, user: str, folder: str, uids: Sequence[int], dest: str) -> list[tuple[int, int]]:
        source, target = self.route(user, folder), self.route(user, dest)
        source.need("rte", "move messages out")
        target.need("i", "add messages")
        if source.owner == target.owner:
            return self.inner.move(source.owner, source.folder, uids, target.folder)
        pairs = self._copy_across(source, target, uids)
        moved = [old for old, _ in pairs]
        self.inner.store_flags(source.owner, source.folder, moved, [Flag.DELETED], FlagMode.ADD)
        self.inner.expunge(source.owner, source.folder, moved)
        return pairs

    def expunge(self, user: str, folder: str, uids: Iterable[int] | None = None) -> list[int]:
        route = self.route(user, folder)
        route.need("e", "expunge")
        return self.inner.expunge(route.owner, route.folder, uids)

    def fulltext(self, user: str, folder: str) -> TextIndex:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.fulltext(route.owner, route.folder)

    def header_index(self, user: str, folder: str) -> HeaderIndex:
        route = self.route(user, folder)
        route.need("r", "read")
        return self.inner.header_index(route.owner, route.folder)
