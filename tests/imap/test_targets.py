"""imap/session_base.py `Targets`: the (sequence number, message) pairs of a command, made
when asked from runs of messages, read exactly as the list of those pairs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.store import MessageInfo
from mailstack.imap.session_base import Targets

MESSAGES = [
    MessageInfo(uid, frozenset(), 0.0, 10, f"k{uid}", modseq=uid * 7 % 61) for uid in range(1, 61)
]
RUNS = st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), max_size=6)


@given(RUNS, st.integers(-70, 70), st.integers(-70, 70), st.integers(-70, 70), st.integers(-1, 61))
def test_targets_read_as_the_list_of_pairs(
    runs: list[tuple[int, int]], index: int, start: int, stop: int, modseq: int
) -> None:
    targets, expected, low = Targets(), [], 0
    for a, b in runs:  # ascending, disjoint runs, as sequence sets give them
        first, last = low + min(a, b), low + max(a, b)
        messages = MESSAGES[first:last]
        targets.add(first + 1, messages)
        expected += [(first + 1 + i, m) for i, m in enumerate(messages)]
        low = last
        if low >= len(MESSAGES):
            break
    assert len(targets) == len(expected)
    assert list(targets) == expected
    assert targets[start:stop] == expected[start:stop]
    assert targets[start:stop:2] == expected[start:stop:2]
    assert bool(targets) == bool(expected)
    assert targets.changed_since(modseq) == [(n, m) for n, m in expected if m.modseq > modseq]
    numbers = {n for n, _ in expected}
    assert [targets.covers(n) for n in range(-1, 63)] == [n in numbers for n in range(-1, 63)]
    if -len(expected) <= index < len(expected):
        assert targets[index] == expected[index]
    else:
        try:
            targets[index]
        except IndexError:
            pass
        else:
            raise AssertionError(f"no IndexError for {index}")
