"""Waking IDLE sessions (RFC 2177) at a cost per folder, not per session.

A session waiting in IDLE holds one `Waiter`: a future it awaits, resolved by whichever
comes first of its client's bytes, a change to its folder, its rescan timer or `serve`
stopping. What the process must watch is shared: `IdleWaiters` subscribes once per folder
to the store's `EventHub` and the `MaildirWatcher` (inotify) while any session IDLEs on it,
and one relay task per folder (plus one for shutdown) fans each event out to every waiter.
10,000 sessions on 1,000 folders cost 1,000 tasks and subscriptions, not 30,000 tasks and
30,000 subscriptions (each asyncio task with its coroutine is over a kilobyte; issue 11's
budget is 300 MB for all of it).

Subscribing happens synchronously in `add`, before the session's first rescan, so a change
made between that rescan and the relay's first wait is not lost: the event stays set.
Call everything on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from mailstack.delivery.events import EventHub
from mailstack.delivery.watch import MaildirWatcher

Key = tuple[str, str]  # (user, folder) as the store publishes it


class Waiter:
    """One IDLE session's wake-up: `wake()` from any callback, `wait(timeout)` once at a time.
    A wake while the session is busy (rescanning) is remembered, not lost."""

    __slots__ = ("_future", "_pending")

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None
        self._pending = False

    def wake(self, _: object = None) -> None:  # also a done-callback: ignores its argument
        self._pending = True
        if self._future is not None and not self._future.done():
            self._future.set_result(None)

    async def wait(self, timeout_s: float) -> None:
        """Until woken or `timeout_s` passed (both mean: look again); clears the wake."""
        if not self._pending:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            timer = loop.call_later(timeout_s, self.wake)
            try:
                await self._future
            finally:
                timer.cancel()
                self._future = None
        self._pending = False


@dataclass
class _Folder:
    """A folder some sessions IDLE on: its subscriptions, relay task and waiters."""

    waiters: set[Waiter] = field(default_factory=set)
    is_watched: bool = False  # inotify covers it (else the sessions poll)
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    relay: asyncio.Task[None] | None = None


class IdleWaiters:
    """The IDLE sessions of one IMAP service, by folder; see the module docstring."""

    def __init__(
        self, events: EventHub, watcher: MaildirWatcher | None, stopping: asyncio.Event
    ) -> None:
        self._events = events
        self._watcher = watcher
        self._stopping = stopping
        self._folders: dict[Key, _Folder] = {}
        self._all: set[Waiter] = set()
        self._stop_relay: asyncio.Task[None] | None = None

    @property
    def folders(self) -> int:
        return len(self._folders)

    def add(self, waiter: Waiter, key: Key | None) -> bool:
        """Wake `waiter` on changes to `key` (None: only on shutdown) until `discard`.
        Returns whether inotify watches the folder (False: the session must poll)."""
        self._all.add(waiter)
        if self._stop_relay is None or self._stop_relay.done():
            self._stop_relay = asyncio.ensure_future(self._relay_stop())
        if key is None:
            return False
        folder = self._folders.get(key)
        if folder is None:
            folder = self._folders[key] = _Folder()
            event = folder.stack.enter_context(self._events.watch(*key))
            if self._watcher is not None:
                folder.is_watched = folder.stack.enter_context(self._watcher.watch(*key))
            folder.relay = asyncio.ensure_future(self._relay(folder, event))
        folder.waiters.add(waiter)
        return folder.is_watched

    def discard(self, waiter: Waiter, key: Key | None) -> None:
        self._all.discard(waiter)
        folder = self._folders.get(key) if key is not None else None
        if folder is None or key is None:
            return
        folder.waiters.discard(waiter)
        if not folder.waiters:
            del self._folders[key]
            if folder.relay is not None:
                folder.relay.cancel()
            folder.stack.close()

    @staticmethod
    async def _relay(folder: _Folder, event: asyncio.Event) -> None:
        while True:
            await event.wait()
            event.clear()
            for waiter in list(folder.waiters):
                waiter.wake()

    async def _relay_stop(self) -> None:
        await self._stopping.wait()
        for waiter in list(self._all):
            waiter.wake()

    def close(self) -> None:
        """Drop every subscription (the service is closing)."""
        for folder in self._folders.values():
            if folder.relay is not None:
                folder.relay.cancel()
            folder.stack.close()
        self._folders.clear()
        self._all.clear()
        if self._stop_relay is not None:
            self._stop_relay.cancel()
