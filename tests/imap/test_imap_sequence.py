"""imap/sequence.py: sequence sets (RFC 9051 §9) against a mailbox."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap.sequence import (
    SequenceSetError,
    compress,
    compress_ordered,
    parse_sequence_set,
)


@pytest.mark.parametrize(
    ("text", "largest", "expanded"),
    [
        pytest.param("1", 5, [1], id="one"),
        pytest.param("2:4", 5, [2, 3, 4], id="range"),
        pytest.param("4:2", 5, [2, 3, 4], id="reversed"),
        pytest.param("3:*", 5, [3, 4, 5], id="star"),
        pytest.param("*", 5, [5], id="star-alone"),
        pytest.param("*:3", 5, [3, 4, 5], id="star-first"),
        pytest.param("1,3,3,2", 5, [1, 2, 3], id="dedupe-sorted"),
        pytest.param("7:9", 5, [], id="beyond"),
        pytest.param("1:*", 0, [], id="empty-mailbox"),
    ],
)
def test_expand(text: str, largest: int, expanded: list[int]) -> None:
    assert list(parse_sequence_set(text).expand(largest)) == expanded


def test_uid_range_beyond_largest_still_includes_the_last_uid() -> None:
    # RFC 9051 §6.4.9 (and 3501 §6.4.8): "559:*" includes the last UID even if 559 is larger.
    assert parse_sequence_set("559:*").select([10, 20, 30], largest=30) == [30]


def test_saved_result() -> None:
    assert parse_sequence_set("$").is_saved
    assert str(parse_sequence_set("$")) == "$"


@pytest.mark.parametrize("text", ["", "0", "1:0", "a", "1,,2", "1:2:3", "01", "4294967296"])
def test_malformed(text: str) -> None:
    with pytest.raises(SequenceSetError):
        parse_sequence_set(text)


@given(st.sets(st.integers(min_value=1, max_value=500), max_size=60))
def test_compress_round_trips(numbers: set[int]) -> None:
    text = compress(numbers)
    if not numbers:
        assert text == ""
        return
    assert set(parse_sequence_set(text).expand(1000)) == numbers


def test_compress_ordered_keeps_order() -> None:
    assert compress_ordered([5, 6, 7, 2, 3, 9]) == "5:7,2:3,9"


@given(st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=10))
def test_str_round_trips(numbers: list[int]) -> None:
    text = ",".join(map(str, numbers))
    assert str(parse_sequence_set(text)) == text


@given(
    st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=12),
    st.integers(0, 70),
)
def test_expand_select_and_contains_agree(ranges: list[tuple[int, int]], largest: int) -> None:
    text = ",".join(f"{a}:{b}" if a != b else str(a) for a, b in ranges)
    seqset = parse_sequence_set(text)
    brute = {n for a, b in ranges for n in range(min(a, b), max(a, b) + 1)}
    assert list(seqset.expand(largest)) == sorted(n for n in brute if n <= largest)
    values = list(range(1, 80))
    assert seqset.select(values, largest) == [v for v in values if v in brute]
    assert [v for v in values if seqset.contains(v, largest)] == sorted(brute)


def test_many_overlapping_ranges_stay_cheap() -> None:
    seqset = parse_sequence_set(",".join(["1:4000000000"] * 10000))
    assert seqset.intervals(5) == [(1, 4000000000)]
    assert len(seqset.select(range(1, 100001), 100000)) == 100000
