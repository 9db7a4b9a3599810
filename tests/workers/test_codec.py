"""mailstack.workers.codec: the packets between serve and its SMTP workers, as a table."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailstack.workers.codec import (
    PACKET_MAX,
    Closed,
    Delivered,
    HandOff,
    Packet,
    Queued,
    Ready,
    decode,
    encode,
)

TABLE = [
    pytest.param(HandOff(7), b"C 7", id="hand-off"),
    pytest.param(Ready(), b"R", id="ready"),
    pytest.param(Closed(12345), b"D 12345", id="closed"),
    pytest.param(Delivered("alice@example.com", ".Sent"), b"E alice@example.com\0.Sent", id="e"),
    pytest.param(Delivered("b@example.com", ""), b"E b@example.com\0", id="delivered-inbox"),
    pytest.param(Delivered("j\u00f6rg@b\u00fccher.example", ".Arch"), None, id="utf-8"),
    pytest.param(Queued(), b"Q", id="queued"),
]


@pytest.mark.parametrize(("packet", "wire"), TABLE)
def test_table(packet: Packet, wire: bytes | None) -> None:
    data = encode(packet)
    if wire is not None:
        assert data == wire
    assert decode(data) == packet


@pytest.mark.parametrize(
    "data",
    [b"", b"X", b"C", b"C x", b"C -1", b"C 1 2", b"D ", b"R now", b"Q 1", b"E", b"E \0f", b"E a"],
)
def test_malformed_packets_decode_to_none(data: bytes) -> None:
    assert decode(data) is None


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_none(data: bytes) -> None:
    packet = decode(data)
    if packet is not None:
        assert decode(encode(packet)) == packet


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_tokens_round_trip(token: int) -> None:
    for packet in (HandOff(token), Closed(token)):
        assert decode(encode(packet)) == packet
        assert len(encode(packet)) < PACKET_MAX
