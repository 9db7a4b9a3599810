"""CONDSTORE and QRESYNC (RFC 7162): the pure parts the session uses.

Which commands turn CONDSTORE on (§3.1), how MODSEQ and VANISHED are written (§3.1.4.1,
§3.2.10), and which UIDs a resync reports as vanished (§3.2.5, §3.2.6). MODSEQs come from the
store (delivery/index_db.py explains how they stay strictly increasing). No I/O here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from mailstack.imap import commands as c
from mailstack.imap import response
from mailstack.imap.sequence import SequenceSet

CAPABILITIES = ("CONDSTORE", "QRESYNC")
ENABLEABLE = frozenset(CAPABILITIES)


def enables_condstore(command: c.Command) -> bool:
    """RFC 7162 §3.1: a CONDSTORE-enabling command (after it, FETCH responses carry MODSEQ)."""
    match command:
        case c.Select(condstore=condstore, qresync=qresync):
            return condstore or qresync is not None
        case c.Status(items=items):
            return "HIGHESTMODSEQ" in items
        case c.Fetch(attrs=attrs, changed_since=changed_since):
            return changed_since is not None or any(a.name == "MODSEQ" for a in attrs)
        case c.Store(unchanged_since=unchanged_since):
            return unchanged_since is not None
        case c.Search(key=key):
            return has_modseq_key(key)
    return False


def has_modseq_key(key: c.SearchKey) -> bool:
    match key:
        case c.SearchModseq():
            return True
        case c.SearchNot(key=inner):
            return has_modseq_key(inner)
        case c.SearchOr(left=left, right=right):
            return has_modseq_key(left) or has_modseq_key(right)
        case c.SearchAnd(keys=keys):
            return any(has_modseq_key(k) for k in keys)
    return False


def modseq_item(modseq: int) -> bytes:
    """The FETCH data item (RFC 7162 §3.1.4.1: "MODSEQ" SP "(" mod-sequence-value ")")."""
    return b"MODSEQ (%d)" % modseq


def highest_modseq_code(modseq: int) -> str:
    return f"HIGHESTMODSEQ {modseq}"


def vanished(uids: Iterable[int], *, earlier: bool) -> bytes:
    """`* VANISHED [(EARLIER)] uid-set` (RFC 7162 §3.2.10); b"" when there are none."""
    return vanished_ranges([(u, u) for u in sorted(uids)], earlier=earlier)


def vanished_ranges(intervals: Sequence[tuple[int, int]], *, earlier: bool) -> bytes:
    """`vanished` of ascending, disjoint (low, high) UID intervals (adjacent ones merge)."""
    merged: list[tuple[int, int]] = []
    for low, high in intervals:
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    if not merged:
        return b""
    text = ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in merged)
    return response.untagged(("VANISHED (EARLIER) " if earlier else "VANISHED ") + text)


def missing_uids(
    present: Sequence[int], limit: int, wanted: SequenceSet | None
) -> list[tuple[int, int]]:
    """Intervals of UIDs up to `limit` (within `wanted`, if given) that are not in `present`
    (ascending): what a resync reports when the expunge log does not reach back to the
    client's MODSEQ. RFC 7162 §3.2.10 lets VANISHED (EARLIER) name UIDs the client never
    saw (it ignores them). Costs O(messages + ranges), however large the UIDs."""
    out: list[tuple[int, int]] = []
    for low, high in wanted.intervals(limit) if wanted is not None else [(1, limit)]:
        high = min(high, limit)
        if low > high:
            continue
        i = bisect.bisect_left(present, low)
        cursor = low
        while i < len(present) and present[i] <= high:
            if present[i] > cursor:
                out.append((cursor, present[i] - 1))
            cursor = present[i] + 1
            i += 1
        if cursor <= high:
            out.append((cursor, high))
    return out


def expunged_in(expunged: Sequence[int], wanted: SequenceSet | None, largest: int) -> list[int]:
    """The logged expunges that fall inside the client's UID set (all when none is given)."""
    if wanted is None:
        return sorted(expunged)
    return sorted(wanted.select(expunged, largest))
