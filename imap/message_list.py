"""The selected folder's messages as one session has reported them (index = sequence number
- 1), sharing the store's snapshot until the session changes them.

A folder's snapshot hands out one tuple of its messages, the same for every session that
opens the folder while nothing changes (delivery/index.py caches it). A list copied from it
per session cost 8 bytes a message apiece: 6 MB for eight sessions on a 100,000-message
folder, and a `FETCH 1:*` copied it again (imap/session_base.py `Targets`), where a whole
slice of a tuple is the tuple itself. `MessageList` keeps the tuple until the first change
(an expunge, new flags, arrivals) and makes its own list then.
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from mailstack.delivery.store import MessageInfo

_UID = operator.attrgetter("uid")


class MessageList(Sequence[MessageInfo]):
    """A list of messages that starts as a view of a shared tuple (see the module
    docstring), changed as sessions change theirs: by index, and `extend`. Iterating while
    changing it behaves as a list's iteration does for assignments; the sessions delete by
    index, never while iterating."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[MessageInfo] = ()) -> None:
        self._items: tuple[MessageInfo, ...] | list[MessageInfo] = (
            items if isinstance(items, tuple) else list(items)
        )

    def _own(self) -> list[MessageInfo]:
        items = self._items
        if isinstance(items, tuple):
            items = self._items = list(items)
        return items

    @property
    def shared(self) -> bool:
        """Still the snapshot's tuple (no change made here yet)."""
        return isinstance(self._items, tuple)

    def frozen(self) -> Sequence[MessageInfo]:
        """The messages as they are now, unchanged by what this list does later (for a
        command that works in a thread): the shared tuple itself while it is shared."""
        items = self._items
        return items if isinstance(items, tuple) else list(items)

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, i: int) -> MessageInfo: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[MessageInfo]: ...

    def __getitem__(self, i: int | slice) -> MessageInfo | Sequence[MessageInfo]:
        return self._items[i]

    def __setitem__(self, i: int, value: MessageInfo) -> None:
        self._own()[i] = value

    def __delitem__(self, i: int) -> None:
        del self._own()[i]

    def extend(self, values: Iterable[MessageInfo]) -> None:
        added = list(values)
        if added:  # nothing to add: stay shared
            self._own().extend(added)

    def position(self, uid: int) -> int | None:
        """Index of `uid` (UID order), by bisection over the tuple or list itself: through
        `__getitem__` it was a tenth of a one-message STORE's CPU."""
        items = self._items
        i = bisect.bisect_left(items, uid, key=_UID)
        return i if i < len(items) and items[i].uid == uid else None

    def uid_span(self, low: int, high: int) -> tuple[int, int]:
        """(i, j): `self[i:j]` are the messages with UIDs from `low` to `high`."""
        items = self._items
        return bisect.bisect_left(items, low, key=_UID), bisect.bisect_right(items, high, key=_UID)

    def __iter__(self) -> Iterator[MessageInfo]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"MessageList({list(self._items)!r})"
