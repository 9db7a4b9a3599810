"""IMAP sequence sets: parsing, and expansion against a mailbox (RFC 9051 §9 `sequence-set`).

    sequence-set    = (seq-number / seq-range) ["," sequence-set]
    seq-range       = seq-number ":" seq-number
    seq-number      = nz-number / "*"
    sequence-set    =/ "$"          ; RFC 5182 SEARCHRES: the saved search result

The same syntax names message sequence numbers and UIDs; the caller says which by the
`largest` value it passes ("*" is the number of messages, or the largest UID in use).
Pure: no I/O. Invariant: a parsed set never contains 0 and every number fits in 32 bits.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# RFC 9051 §9: nz-number = digit-nz *DIGIT ; (0 < n < 4,294,967,296)
MAX_NUMBER = 2**32 - 1


class SequenceSetError(ValueError):
    """The text is not a sequence set."""


@dataclass(frozen=True, slots=True)
class SeqRange:
    """`start:end` as written (either order); None stands for "*"."""

    start: int | None
    end: int | None

    def bounds(self, largest: int) -> tuple[int, int]:
        """(low, high) with "*" replaced by `largest` (RFC 9051 §9: "*" is the largest in use)."""
        a = largest if self.start is None else self.start
        b = largest if self.end is None else self.end
        return (a, b) if a <= b else (b, a)


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set; `is_saved` is "$", the saved search result (RFC 5182)."""

    ranges: tuple[SeqRange, ...] = ()
    is_saved: bool = False

    def intervals(self, largest: int) -> list[tuple[int, int]]:
        """Sorted, disjoint (low, high) bounds, "*" meaning `largest`. Merging first keeps
        every other operation O((n + r) log r) even for a 64 KiB line of overlapping ranges."""
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(r.bounds(largest) for r in self.ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, n: int, largest: int) -> bool:
        """Is `n` in the set, "*" meaning `largest`? ("$" must be resolved first.)"""
        return any(lo <= n <= hi for lo, hi in (r.bounds(largest) for r in self.ranges))

    def select(self, values: Iterable[int], largest: int) -> list[int]:
        """Members of the set among `values` (UIDs or sequence numbers), in the given order."""
        merged = self.intervals(largest)
        starts = [lo for lo, _ in merged]
        out = []
        for v in values:
            i = bisect.bisect_right(starts, v) - 1
            if i >= 0 and v <= merged[i][1]:
                out.append(v)
        return out

    def expand(self, largest: int) -> Iterator[int]:
        """Every number in the set from 1 to `largest`, ascending, each once."""
        for lo, hi in self.intervals(largest):
            yield from range(max(lo, 1), min(hi, largest) + 1)

    def __str__(self) -> str:
        if self.is_saved:
            return "$"
        return format_ranges(self.ranges)


def _number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or not text.isascii() or text[0] == "0":
        raise SequenceSetError(f"{text!r} is not a message number")
    n = int(text)
    if n > MAX_NUMBER:
        raise SequenceSetError(f"{text} is larger than 4294967295")
    return n


def parse_sequence_set(text: str) -> SequenceSet:
    """'1:3,5,7:*' -> SequenceSet; '$' -> the saved result. Raises SequenceSetError."""
    if text == "$":
        return SequenceSet(is_saved=True)
    if not text:
        raise SequenceSetError("empty sequence set")
    ranges: list[SeqRange] = []
    for item in text.split(","):
        first, colon, last = item.partition(":")
        if colon:
            ranges.append(SeqRange(_number(first), _number(last)))
        else:
            n = _number(first)
            ranges.append(SeqRange(n, n))
    return SequenceSet(tuple(ranges))


def format_ranges(ranges: Iterable[SeqRange]) -> str:
    def one(n: int | None) -> str:
        return "*" if n is None else str(n)

    return ",".join(
        one(r.start) if r.start == r.end else f"{one(r.start)}:{one(r.end)}" for r in ranges
    )


def compress(numbers: Iterable[int]) -> str:
    """[1,2,3,5,7,8] -> '1:3,5,7:8' (for COPYUID, APPENDUID and ESEARCH ALL); '' if empty."""
    out: list[str] = []
    run_start = prev = None
    for n in sorted(set(numbers)):
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if run_start is not None:
            out.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
        run_start = prev = n
    if run_start is not None:
        out.append(str(run_start) if run_start == prev else f"{run_start}:{prev}")
    return ",".join(out)


def compress_ordered(numbers: Iterable[int]) -> str:
    """Like `compress` but keeping the given order (COPYUID pairs source and destination UIDs
    by position, RFC 4315 §3), so only ascending runs are merged."""
    out: list[str] = []
    items = list(numbers)
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        out.append(str(items[i]) if i == j else f"{items[i]}:{items[j]}")
        i = j + 1
    return ",".join(out)
