"""delivery.mx: preference order, randomisation among equals, implicit and null MX."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delivery.mx import MxRecord, NullMxError, order_hosts

HOST = st.from_regex(r"[a-e]{1,3}\.example\.net", fullmatch=True)
RECORDS = st.lists(
    st.builds(MxRecord, st.integers(min_value=0, max_value=5), HOST), min_size=1, max_size=8
)


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([MxRecord(20, "b.test."), MxRecord(10, "a.test.")], ["a.test", "b.test"],
                     id="preference"),
        pytest.param([], ["example.com"], id="implicit-mx"),
        pytest.param([MxRecord(5, "A.Test"), MxRecord(10, "a.test")], ["a.test"], id="dedup"),
        pytest.param([MxRecord(0, "."), MxRecord(10, "a.test")], ["a.test"],
                     id="root-among-others"),
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
