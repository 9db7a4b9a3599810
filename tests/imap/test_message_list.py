"""imap/message_list.py `MessageList`: a session's messages read and change exactly as a list
of them, and share the snapshot's tuple until the session changes something."""

from __future__ import annotations

import bisect

from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.store import MessageInfo
from mailstack.imap.message_list import MessageList

SNAPSHOT = tuple(MessageInfo(uid, frozenset(), 0.0, 10, f"k{uid}") for uid in range(1, 41))
OTHER = MessageInfo(99, frozenset({"\\Seen"}), 0.0, 10, "k99")
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(-45, 45)),
        st.tuples(st.just("del"), st.integers(-45, 45)),
        st.tuples(st.just("extend"), st.integers(0, 3)),
        st.tuples(st.just("read"), st.integers(-45, 45)),
    ),
    max_size=12,
)


def _uid(m: MessageInfo) -> int:
    return m.uid


@given(STEPS, st.integers(-45, 45), st.integers(-45, 45))
def test_a_message_list_behaves_as_a_list(
    steps: list[tuple[str, int]], start: int, stop: int
) -> None:
    ours, expected = MessageList(SNAPSHOT), list(SNAPSHOT)
    for op, n in steps:
        if op == "extend":
            added = [OTHER] * n
            ours.extend(iter(added))
            expected.extend(added)
            continue
        try:
            want: object = expected[n]
        except IndexError:
            want = IndexError
        try:
            if op == "set":
                ours[n] = OTHER
            elif op == "del":
                del ours[n]
            got: object = ours[n] if op == "read" else want
        except IndexError:
            got = IndexError
        assert got == want
        if want is not IndexError and op == "set":
            expected[n] = OTHER
        elif want is not IndexError and op == "del":
            del expected[n]
    assert list(ours) == expected and len(ours) == len(expected)
    assert list(ours[start:stop]) == expected[start:stop]
    if not steps:
        assert ours.shared


def test_the_snapshot_is_shared_until_a_change() -> None:
    a, b = MessageList(SNAPSHOT), MessageList(SNAPSHOT)
    assert a[0 : len(a)] is SNAPSHOT  # a `1:*` FETCH's run: no copy
    a.extend([])
    assert [m.uid for m in a] == list(range(1, 41)) and a[-1] is SNAPSHOT[-1]
    assert bisect.bisect_left(a, 7, key=_uid) == 6
    assert a.shared and b.shared
    a[3] = OTHER
    assert not a.shared and b.shared and b[3] is SNAPSHOT[3]
    del b[0]
    assert not b.shared and len(b) == 39 and len(SNAPSHOT) == 40 and a[3] is OTHER
