"""Change notification: the store publishes "folder changed", IMAP IDLE sessions wake up.

`publish` may be called from any thread (the store runs in worker threads); subscribers are
asyncio events on the loop that created the hub. Publishing is best-effort and never blocks:
a subscriber that missed a wake-up still rescans on its next command.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager


class EventHub:
    """Maps (user, folder) to the asyncio.Events of sessions watching it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watchers: defaultdict[tuple[str, str], set[asyncio.Event]] = defaultdict(set)
        self._loop: asyncio.AbstractEventLoop | None = None

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

    def publish(self, user: str, folder: str) -> None:
        with self._lock:
            events = list(self._watchers.get((user, folder), ()))
        if not events or self._loop is None or self._loop.is_closed():
            return
        for event in events:
            self._loop.call_soon_threadsafe(event.set)
