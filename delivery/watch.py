"""Notice changes other programs make to a Maildir folder (Dovecot, mbsync, a `cp` into
new/, another mailstack process) within milliseconds, with Linux inotify, and wake the IMAP
sessions IDLEing on it through the same `EventHub` our own writes publish to.

- One inotify instance per process (`MaildirWatcher`), read on the event loop
  (`loop.add_reader`): no thread, no polling while nothing happens.
- One watch on each of a folder's new/ and cur/, shared by every session watching the folder
  (reference counted) and removed when the last one leaves, so 10,000 IDLE sessions on 1,000
  folders cost 2,000 watches (fs.inotify.max_user_watches is 8,192 or more).
- What wakes: a file finished in or moved into new/ or cur/ (delivery, `cp`, a flag change
  is a rename within cur/), moved out or deleted (expunge, new/ -> cur/), and the directory
  itself going away (the folder deleted or renamed). A queue overflow (events lost) wakes
  every watched folder.
- Where inotify is unavailable (not Linux, the watch limit reached, a folder that vanished),
  `watch` yields False and the caller keeps polling; nothing here raises for that.
- `watch_account` watches an account's Maildir root (one watch per account, shared likewise)
  for NOTIFY's mailbox-level events (RFC 5465 §5.4, §5.5): a folder directory (`.Name`)
  made, removed or renamed, the `subscriptions` file or INBOX's `dovecot-acl` replaced, and
  the root's own attributes touched, which is how `mailstack share` and `mailstack mailbox`
  tell an account that what is shared with it changed (mailstack/sharing.py). Those publish
  `FOLDER_TREE_CHANGED`; everything else in the root (INBOX's uidlist, caches, indexes) is
  ignored, so a delivery costs nothing here. They are published `TREE_DELAY_S` after the
  first event of a burst, once per account: a script's or the CLI's many changes cost one
  look, and a change a session of this process made is announced by that session first
  (with RENAME's old name, which a look at the directory cannot tell).

Why inotify_simple: a maintained ctypes wrapper of the three system calls with nothing
else; asyncinotify would bring its own async iteration model where one `add_reader` suffices.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailstack.delivery.events import FOLDER_TREE_CHANGED, EventHub
from mailstack.delivery.layout import folder_dir_name
from mailstack.delivery.store import INBOX

try:  # Linux only; elsewhere (or without the package) IDLE polls
    import inotify_simple
except ImportError:  # pragma: no cover - a dependency, present on Linux
    inotify_simple = None

log = logging.getLogger(__name__)

_F: Any = inotify_simple.flags if inotify_simple is not None else None
# What a change to the folder's messages looks like in new/ or cur/ (see the docstring).
MASK: int = (
    0
    if _F is None
    else (
        _F.CLOSE_WRITE
        | _F.MOVED_TO
        | _F.MOVED_FROM
        | _F.DELETE
        | _F.DELETE_SELF
        | _F.MOVE_SELF
        | _F.ONLYDIR
    )
)
_GONE: int = 0 if _F is None else (_F.IGNORED | _F.DELETE_SELF | _F.MOVE_SELF)
# An account root: entries made, removed or renamed, files finished, the root touched.
ROOT_MASK: int = (
    0
    if _F is None
    else (
        _F.CREATE
        | _F.DELETE
        | _F.MOVED_FROM
        | _F.MOVED_TO
        | _F.CLOSE_WRITE
        | _F.ATTRIB
        | _F.DELETE_SELF
        | _F.MOVE_SELF
        | _F.ONLYDIR
    )
)
_ISDIR: int = 0 if _F is None else _F.ISDIR
_ATTRIB: int = 0 if _F is None else _F.ATTRIB
# Root entries that are the folder list, subscriptions or INBOX's rights (delivery/folders.py,
# delivery/acl.py name them as Dovecot does).
_ROOT_FILES = frozenset({"subscriptions", "dovecot-acl"})
# See the module docstring: long enough for our own session's announcement (microseconds to
# a few milliseconds after its system call), short beside a person watching a folder list.
TREE_DELAY_S = 0.1
_OVERFLOW: int = 0 if _F is None else _F.Q_OVERFLOW

Key = tuple[str, str]  # (user, folder)


class MaildirWatcher:
    """inotify watches on the folders sessions IDLE on; see the module docstring."""

    def __init__(self, events: EventHub, maildir: Callable[[str], Path]) -> None:
        self._events = events
        self._maildir = maildir  # account address -> its Maildir++ root
        self._inotify: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._is_unavailable = inotify_simple is None
        self._users: dict[Key, int] = {}  # sessions watching each folder
        self._watches: dict[Key, list[int]] = {}  # the folder's watch descriptors
        self._keys: dict[int, set[Key]] = {}  # watch descriptor -> folders (a dir is one wd)
        self._roots: dict[str, tuple[int, int]] = {}  # account -> (root wd, sessions)
        self._root_of: dict[int, str] = {}  # root wd -> account
        self._trees: set[str] = set()  # accounts whose FOLDER_TREE_CHANGED is due
        self._tree_timer: asyncio.TimerHandle | None = None

    @property
    def watched_folders(self) -> int:
        return len(self._watches)

    def _start(self) -> bool:
        """Create the inotify instance on first use (needs the running loop)."""
        if self._inotify is not None:
            return True
        if self._is_unavailable:
            return False
        try:
            self._inotify = inotify_simple.INotify(nonblocking=True)
        except (OSError, AttributeError) as exc:  # no inotify_init1 (not Linux), EMFILE
            log.warning("inotify unavailable, IDLE falls back to polling: %s", exc)
            self._is_unavailable = True
            return False
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._inotify.fileno(), self._read)
        return True

    def _folder_dir(self, user: str, folder: str) -> Path:
        root = self._maildir(user)
        return root if folder == INBOX else root / folder_dir_name(folder)

    @contextlib.contextmanager
    def watch(self, user: str, folder: str) -> Iterator[bool]:
        """Watch (user, folder) for the block; yields whether inotify covers it (False:
        poll). Call on the event loop's thread."""
        key = (user, folder)
        is_watched = self._acquire(key)
        try:
            yield is_watched
        finally:
            if is_watched:
                self._release(key)

    @contextlib.contextmanager
    def watch_account(self, user: str) -> Iterator[bool]:
        """Watch `user`'s Maildir root for the block (see the module docstring); yields
        whether inotify covers it. Call on the event loop's thread."""
        is_watched = self._acquire_root(user)
        try:
            yield is_watched
        finally:
            if is_watched:
                self._release_root(user)

    def _acquire_root(self, user: str) -> bool:
        if user in self._roots:
            wd, count = self._roots[user]
            self._roots[user] = (wd, count + 1)
            return True
        if not self._start():
            return False
        try:
            wd = int(self._inotify.add_watch(self._maildir(user), ROOT_MASK))
        except OSError as exc:  # ENOSPC, or no Maildir (yet)
            log.info("cannot watch %s's Maildir (%s)", user, exc)
            return False
        self._roots[user] = (wd, 1)
        self._root_of[wd] = user
        return True

    def _release_root(self, user: str) -> None:
        found = self._roots.get(user)
        if found is None:  # dropped when the root went away
            return
        wd, count = found
        if count > 1:
            self._roots[user] = (wd, count - 1)
            return
        del self._roots[user]
        self._root_of.pop(wd, None)
        with contextlib.suppress(OSError):
            self._inotify.rm_watch(wd)

    def _root_event(self, user: str, event: Any) -> bool:
        """Does this event in `user`'s root change what NOTIFY reports? (module docstring)"""
        if event.mask & _GONE:
            wd, _ = self._roots.pop(user, (event.wd, 0))
            self._root_of.pop(wd, None)
            return True
        name = event.name
        if not name:
            return bool(event.mask & _ATTRIB)  # the root itself touched
        return name in _ROOT_FILES or bool(event.mask & _ISDIR and name.startswith("."))

    def _acquire(self, key: Key) -> bool:
        if key in self._watches:
            self._users[key] = self._users.get(key, 0) + 1
            return True
        if not self._start():
            return False
        fdir = self._folder_dir(*key)
        wds: list[int] = []
        try:
            for sub in ("new", "cur"):
                wds.append(int(self._inotify.add_watch(fdir / sub, MASK)))
        except OSError as exc:  # ENOSPC: max_user_watches reached; ENOENT: folder gone
            log.info("cannot watch %s (%s): polling it", fdir, exc)
            for wd in wds:
                self._remove_wd(wd, key)
            return False
        self._watches[key] = wds
        self._users[key] = self._users.get(key, 0) + 1
        for wd in wds:
            self._keys.setdefault(wd, set()).add(key)
        return True

    def _release(self, key: Key) -> None:
        self._users[key] -= 1
        if self._users[key] > 0:
            return
        del self._users[key]
        for wd in self._watches.pop(key, []):
            self._remove_wd(wd, key)

    def _remove_wd(self, wd: int, key: Key) -> None:
        keys = self._keys.get(wd)
        if keys is not None:
            keys.discard(key)
            if keys:
                return  # another folder name for the same directory still wants it
            del self._keys[wd]
        with contextlib.suppress(OSError):  # already gone with its directory (IN_IGNORED)
            self._inotify.rm_watch(wd)

    def _read(self) -> None:
        """The loop's reader callback: publish each folder an event names, once a batch."""
        try:
            events = self._inotify.read(timeout=0)
        except (OSError, ValueError):  # pragma: no cover - EAGAIN races, closed meanwhile
            return
        changed: set[Key] = set()
        trees: set[str] = set()
        for event in events:
            if event.mask & _OVERFLOW:
                changed.update(self._watches)
                trees.update(self._roots)
                continue
            if (user := self._root_of.get(event.wd)) is not None:
                if self._root_event(user, event):
                    trees.add(user)
                continue
            keys = self._keys.get(event.wd, set())
            changed.update(keys)
            if event.mask & _GONE:
                # The directory went away: drop the folder's watches. Its sessions learn of
                # its fate on their next snapshot (and poll); later sessions watch afresh.
                for key in list(keys):
                    for wd in self._watches.pop(key, []):
                        self._remove_wd(wd, key)
        for user, folder in changed:
            self._events.publish(user, folder)
        if trees and self._loop is not None:
            self._trees |= trees
            if self._tree_timer is None:
                self._tree_timer = self._loop.call_later(TREE_DELAY_S, self._publish_trees)

    def _publish_trees(self) -> None:
        trees, self._trees, self._tree_timer = self._trees, set(), None
        for user in sorted(trees):
            self._events.publish_change(user, "", FOLDER_TREE_CHANGED)

    def close(self) -> None:
        if self._tree_timer is not None:
            self._tree_timer.cancel()
            self._tree_timer = None
        if self._inotify is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._inotify.fileno())
        self._inotify.close()
        self._inotify = None
        self._watches.clear()
        self._users.clear()
        self._keys.clear()
        self._roots.clear()
        self._root_of.clear()
