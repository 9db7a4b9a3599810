"""delivery/index_known.py: `KnownRows` answers as a dict of uid -> (flags, MODSEQ) would,
under any sequence of loads, sets and removals (one by one and in one pass)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.index_known import REMOVE_ONE_BY_ONE, KnownRows

UIDS = st.integers(min_value=1, max_value=200)
FLAGS = st.sampled_from(["", "\\Seen", "\\Deleted \\Seen", "$Junk"])
ROWS = st.lists(st.tuples(UIDS, FLAGS, st.integers(1, 10)), unique_by=lambda r: r[0])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), UIDS, FLAGS, st.integers(1, 50)),
        st.tuples(st.just("remove"), st.lists(UIDS, max_size=2 * REMOVE_ONE_BY_ONE)),
        st.tuples(st.just("clear")),
    )
)


@given(ROWS, OPS)
def test_known_rows_behave_as_a_dict(rows: list[tuple[int, str, int]], ops: list[tuple]) -> None:  # type: ignore[type-arg]
    known = KnownRows(rows)
    model = {uid: (flags, modseq) for uid, flags, modseq in rows}
    for op in ops:
        match op:
            case ("set", uid, flags, modseq):
                known[uid] = model[uid] = (flags, modseq)
            case ("remove", uids):
                known.remove(uids)
                for uid in uids:
                    model.pop(uid, None)
            case ("clear",):
                known.clear()
                model.clear()
        assert list(known) == sorted(model)
        assert len(known) == len(model)
    for uid in range(202):
        assert known.get(uid) == model.get(uid)
        assert (uid in known) == (uid in model)
        if uid in model:
            assert known[uid] == model[uid]


def test_messages_with_the_same_flags_and_modseq_share_one_pair() -> None:
    known = KnownRows((uid, "\\Seen" if uid % 2 else "", 7) for uid in range(1, 1001))
    assert known[1] is known[999]
    assert known[2] is known[1000]


@given(ROWS, st.lists(UIDS), st.booleans())
def test_absent_from_is_a_set_difference(
    rows: list[tuple[int, str, int]], uids: list[int], ascending: bool
) -> None:
    """A merge when the UIDs ascend (a folder's entries), a set otherwise: the same answer."""
    present = sorted(set(uids)) if ascending else uids
    known = KnownRows(rows)
    assert known.absent_from(present) == sorted({r[0] for r in rows} - set(uids))
    assert known.modseq(0) == 0
    for uid, _flags, modseq in rows:
        assert known.modseq(uid) == modseq
