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
    LoggedIn,
    LoginCheck,
    Packet,
    Queued,
    Ready,
    ScramAbandon,
    ScramProof,
    ScramStart,
    SignRequest,
    Verdict,
    decode,
    encode,
)

TABLE = [
    pytest.param(HandOff(7), b"C 7 smtp", id="hand-off"),
    pytest.param(HandOff(8, "submissions"), b"C 8 submissions", id="hand-off-465"),
    pytest.param(LoggedIn(9), b"U 9", id="logged-in"),
    pytest.param(
        LoginCheck(3, "w1.s4", "192.0.2.1", b"alice", b"pw"),
        b"L 3 dzEuczQ= 192.0.2.1 YWxpY2U= cHc=",
        id="login",
    ),
    pytest.param(LoginCheck(4, "", "::1", b"a b\0c", b""), None, id="login-any-bytes"),
    pytest.param(ScramStart(5, "w2.s1", "::1", b"n,,n=a,r=x"), None, id="scram-start"),
    pytest.param(ScramProof(5, b"c=biws,r=x,p=y"), None, id="scram-proof"),
    pytest.param(ScramAbandon(5), b"X 5", id="scram-abandon"),
    pytest.param(SignRequest(6, "s1", "example.com", b"\x00" * 32), None, id="sign"),
    pytest.param(Verdict(6, "signed", "", b"\xff" * 256), None, id="signature"),
    pytest.param(Verdict(3, "ok", "alice@example.com"), None, id="verdict"),
    pytest.param(Verdict(5, "challenge", "", b"r=x,s=y,i=4096"), None, id="challenge"),
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
    [
        *(b"", b"X", b"C", b"C x", b"C -1", b"C 1 2", b"C 7", b"C 7 imap", b"D ", b"R now"),
        *(b"Q 1", b"E", b"E \0f", b"E a", b"U", b"U x", b"X 1 2", b"L 1 a b c", b"L 1 = ip = !"),
        *(b"S 1 = ip", b"P 1", b"P 1 a b", b"V 1 ok", b"V 1 ok = \xff", b"P 1 YQ"),
        *(b"K 1", b"K 1 = =", b"K x = = =", b"K 1 = = ! ="),
    ],
)
def test_malformed_packets_decode_to_none(data: bytes) -> None:
    assert decode(data) is None


@given(st.binary(max_size=64))
def test_any_bytes_decode_or_none(data: bytes) -> None:
    packet = decode(data)
    if packet is not None:
        assert decode(encode(packet)) == packet


@given(st.binary(max_size=300), st.binary(max_size=300), st.text(max_size=40))
def test_login_fields_of_any_bytes_round_trip(name: bytes, secret: bytes, conn: str) -> None:
    # Whatever a client sends as a name, password or SCRAM message crosses intact.
    for packet in (
        LoginCheck(1, conn, "2001:db8::1", name, secret),
        ScramStart(2, conn, "192.0.2.1", secret),
        ScramProof(3, name),
        Verdict(4, "challenge", conn, secret),
        SignRequest(5, conn, conn, secret),
    ):
        assert decode(encode(packet)) == packet


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_tokens_round_trip(token: int) -> None:
    for packet in (HandOff(token), Closed(token), LoggedIn(token), ScramAbandon(token)):
        assert decode(encode(packet)) == packet
        assert len(encode(packet)) < PACKET_MAX
