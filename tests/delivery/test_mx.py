"""delivery.mx: preference order, randomisation among equals, implicit and null MX."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.mx import MxLoopError, MxRecord, NullMxError, order_hosts

HOST = st.from_regex(r"[a-e]{1,3}\.example\.net", fullmatch=True)
RECORDS = st.lists(
    st.builds(MxRecord, st.integers(min_value=0, max_value=5), HOST), min_size=1, max_size=8
)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param(
            [MxRecord(20, "b.test."), MxRecord(10, "a.test.")],
            ["a.test", "b.test"],
            id="preference",
        ),
        pytest.param([], ["example.com"], id="implicit-mx"),
        pytest.param([MxRecord(5, "A.Test"), MxRecord(10, "a.test")], ["a.test"], id="dedup"),
        pytest.param(
            [MxRecord(0, "."), MxRecord(10, "a.test")], ["a.test"], id="root-among-others"
        ),
    ],
)
def test_order(records: list[MxRecord], expected: list[str]) -> None:
    assert order_hosts("example.com", records) == expected


def test_null_mx() -> None:
    with pytest.raises(NullMxError):
        order_hosts("example.com", [MxRecord(0, ".")])


def test_equal_preferences_are_shuffled() -> None:
    records = [MxRecord(10, f"h{i}.test") for i in range(6)]
    firsts = {order_hosts("x.test", records, random.Random(seed))[0] for seed in range(40)}
    assert len(firsts) > 1


@given(RECORDS, st.integers())
def test_order_respects_preference_and_keeps_every_host(records: list[MxRecord], seed: int) -> None:
    hosts = order_hosts("example.com", records, random.Random(seed))
    best: dict[str, int] = {}
    for rec in records:
        best[rec.exchange] = min(best.get(rec.exchange, rec.preference), rec.preference)
    assert sorted(hosts) == sorted(best)
    prefs = [best[h] for h in hosts]
    assert prefs == sorted(prefs)


def test_we_are_an_mx() -> None:
    records = [
        MxRecord(10, "a.test"),
        MxRecord(20, "Me.Test."),
        MxRecord(20, "b.test"),
        MxRecord(30, "c.test"),
    ]
    assert order_hosts("x.test", records, self_names=["me.test"]) == ["a.test"]
    with pytest.raises(MxLoopError):
        order_hosts(
            "x.test", [MxRecord(5, "me.test"), MxRecord(9, "a.test")], self_names=["me.test"]
        )


@given(RECORDS, st.integers(), HOST)
def test_never_ourselves_nor_worse(records: list[MxRecord], seed: int, me: str) -> None:
    try:
        hosts = order_hosts("example.com", records, random.Random(seed), self_names=[me])
    except MxLoopError:
        assert min(r.preference for r in records if r.exchange == me) == min(
            r.preference for r in records
        )
        return
    mine = [r.preference for r in records if r.exchange == me]
    assert me not in hosts
    if mine:  # every host kept is better than us at its best preference
        assert all(min(r.preference for r in records if r.exchange == h) < min(mine) for h in hosts)
