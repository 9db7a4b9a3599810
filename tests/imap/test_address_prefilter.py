"""The address pre-filter's fast checks (imap/search.py) decide exactly what the regexes
they replace decide: `rewrites_address` what REWRITES (the rule as it was written, kept here
as the reference) matches, and `_is_placeholder_free`'s shortcut what `_MAILBOX_AT` finds."""

from __future__ import annotations

import re

from hypothesis import example, given, settings
from hypothesis import strategies as st
from mailstack.imap import search

REWRITES = re.compile(rb'[("\\\t]|  | @|@ |[^ ]<')
# The characters the rules look at, and a few others, so that hits are frequent.
ADDRESS_BYTES = st.binary(max_size=40) | st.lists(
    st.sampled_from([b" ", b"<", b">", b"@", b",", b"(", b'"', b"\\", b"\t", b"a", b"\r\n "]),
    max_size=20,
).map(b"".join)


@settings(max_examples=2000, deadline=None)
@given(ADDRESS_BYTES)
@example(b"<a@b>")
@example(b"x<a@b>")
@example(b" <a@b>")
@example(b"a  b")
def test_rewrites_address_is_the_regex(flat: bytes) -> None:
    expected = REWRITES.search(flat) is not None
    assert search.rewrites_address(flat) == expected


@settings(max_examples=2000, deadline=None)
@given(ADDRESS_BYTES)
@example(b"@x")
@example(b" @x a@b")
@example(b"\x0b@x")
@example(b"")
def test_placeholder_check_is_the_regex(value: bytes) -> None:
    pieces = value.split(b",")
    expected = all(search._MAILBOX_AT.search(p) is not None or not p.strip() for p in pieces)
    assert search._is_placeholder_free(value) == expected
