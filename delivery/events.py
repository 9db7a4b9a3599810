"""Change notification: the store publishes "folder changed", IMAP IDLE sessions wake up.

`publish` may be called from any thread (the store runs in worker threads); subscribers are
asyncio events on the loop that created the hub. Publishing is best-effort and never blocks:
a subscriber that missed a wake-up still rescans on its next command.

Listeners (`listen`) hear every folder of an account by name, and the mailbox-level changes
`publish_change` carries (IMAP NOTIFY, RFC 5465: one registration per session, not one per
folder); they are called on the hub's loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

# (folder, change): change is None for "its messages changed", else what publish_change got.
Listener = Callable[[str, object], None]


class FolderTreeChange:
    """`publish_change`'s change when an account's folder list, subscriptions or sharing
    changed on disk by a hand we do not know (another program, another process, the CLI):
    delivery/watch.py sees it; a NOTIFY session (imap/session_notify.py) looks again."""

    def __repr__(self) -> str:
        return "FolderTreeChange()"


FOLDER_TREE_CHANGED = FolderTreeChange()


class EventHub:
    """Maps (user, folder) to the asyncio.Events of sessions watching it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: defaultdict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: defaultdict[str, set[Listener]] = defaultdict(set)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Attach to the serving loop (done by the app at start-up)."""
        self._loop = loop

    @contextmanager
    def watch(self, user: str, folder: str) -> Iterator[asyncio.Event]:
        """Yield an Event set whenever (user, folder) changes, until the block exits."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        key = (user, folder)
        with self._lock:
            self._watchers[key].add(event)
        try:
            yield event
        finally:
            with self._lock:
                self._watchers[key].discard(event)
                if not self._watchers[key]:
                    del self._watchers[key]

    @contextmanager
    def listen(self, user: str, listener: Listener) -> Iterator[None]:
        """Call `listener(folder, change)` on the loop for each change to `user`'s folders
        until the block exits."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        with self._lock:
            self._listeners[user].add(listener)
        try:
            yield
        finally:
            with self._lock:
                self._listeners[user].discard(listener)
                if not self._listeners[user]:
                    del self._listeners[user]

    def publish(self, user: str, folder: str) -> None:
        with self._lock:
            events = list(self._watchers.get((user, folder), ()))
            listeners = list(self._listeners.get(user, ())) if self._listeners else []
        if (not events and not listeners) or self._loop is None or self._loop.is_closed():
            return
        for event in events:
            self._loop.call_soon_threadsafe(event.set)
        for listener in listeners:
            self._loop.call_soon_threadsafe(listener, folder, None)

    def publish_change(self, user: str, folder: str, change: object) -> None:
        """Tell `user`'s listeners about a mailbox-level change (created, renamed, ...)."""
        with self._lock:
            listeners = list(self._listeners.get(user, ()))
        if not listeners or self._loop is None or self._loop.is_closed():
            return
        for listener in listeners:
            self._loop.call_soon_threadsafe(listener, folder, change)
