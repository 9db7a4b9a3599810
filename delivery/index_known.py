"""What the persistent folder index (delivery/index_db.py) keeps in memory of its rows: each
message's flags and MODSEQ by UID, to tell which rows a reconcile must rewrite.

A dict of 100,000 UIDs (fresh int objects from SQLite) with a (flags, MODSEQ) tuple each
held about 150 bytes a message in a process serving that folder. `KnownRows` keeps the UIDs
in an array in ascending order and the pairs in a parallel list, one pair object shared by
every message with the same flags and MODSEQ (a folder opened for the first time has one
MODSEQ and a handful of flag sets): 16 bytes a message. Lookups bisect the array; new UIDs
are the largest, so recording a delivery appends.
"""

from __future__ import annotations

import bisect
import itertools
from array import array
from collections.abc import Iterable, Iterator, Sequence

Pair = tuple[str, int]  # (flags as index_db.flag_text stores them, MODSEQ)
REMOVE_ONE_BY_ONE = 32  # removals above which the arrays are rebuilt in one pass


class KnownRows:
    """uid -> (flags, MODSEQ), ascending UIDs (see the module docstring)."""

    __slots__ = ("_uids", "_values")

    def __init__(self, rows: Iterable[tuple[int, str, int]] = ()) -> None:
        """`rows`: (uid, flags, MODSEQ) in any order."""
        self._uids = array("q")
        self._values: list[Pair] = []
        shared: dict[Pair, Pair] = {}
        ordered = True
        for uid, flags, modseq in rows:
            pair = (flags, modseq)
            if self._uids and uid <= self._uids[-1]:
                ordered = False
            self._uids.append(uid)
            self._values.append(shared.setdefault(pair, pair))
        if not ordered:
            pairs = sorted(zip(self._uids, self._values, strict=True), key=_first)
            self._uids = array("q", (u for u, _ in pairs))
            self._values = [v for _, v in pairs]

    def _find(self, uid: int) -> int:
        """Position of `uid`, or -1."""
        i = bisect.bisect_left(self._uids, uid)
        return i if i < len(self._uids) and self._uids[i] == uid else -1

    def __len__(self) -> int:
        return len(self._uids)

    def __iter__(self) -> Iterator[int]:
        return iter(self._uids)

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, int) and self._find(uid) >= 0

    def get(self, uid: int) -> Pair | None:
        i = self._find(uid)
        return self._values[i] if i >= 0 else None

    def __getitem__(self, uid: int) -> Pair:
        i = self._find(uid)
        if i < 0:
            raise KeyError(uid)
        return self._values[i]

    def modseq(self, uid: int) -> int:
        """The MODSEQ of `uid`, 0 when it is not known."""
        i = self._find(uid)
        return self._values[i][1] if i >= 0 else 0

    def absent_from(self, uids: Sequence[int]) -> list[int]:
        """The known UIDs that are not among `uids`, ascending. When `uids` ascend (a
        folder's entries do) one merge, not a set of every message."""
        if any(a >= b for a, b in itertools.pairwise(uids)):
            present = set(uids)
            return [uid for uid in self._uids if uid not in present]
        absent: list[int] = []
        known, i, n = self._uids, 0, len(self._uids)
        for uid in uids:
            while i < n and known[i] < uid:
                absent.append(known[i])
                i += 1
            if i < n and known[i] == uid:
                i += 1
        absent.extend(known[i:])
        return absent

    def __setitem__(self, uid: int, pair: Pair) -> None:
        uids = self._uids
        if not uids or uid > uids[-1]:  # a new message: the largest UID yet
            uids.append(uid)
            self._values.append(pair)
            return
        i = bisect.bisect_left(uids, uid)
        if uids[i] == uid:
            self._values[i] = pair
        else:
            uids.insert(i, uid)
            self._values.insert(i, pair)

    def remove(self, uids: Iterable[int]) -> None:
        """Forget these UIDs (those not known are ignored)."""
        doomed = set(uids)
        if len(doomed) <= REMOVE_ONE_BY_ONE:
            for uid in doomed:
                i = self._find(uid)
                if i >= 0:
                    del self._uids[i]
                    del self._values[i]
            return
        kept_uids, kept_values = array("q"), []
        for uid, pair in zip(self._uids, self._values, strict=True):
            if uid not in doomed:
                kept_uids.append(uid)
                kept_values.append(pair)
        self._uids, self._values = kept_uids, kept_values

    def clear(self) -> None:
        self._uids = array("q")
        self._values = []


def _first(item: tuple[int, Pair]) -> int:
    return item[0]
