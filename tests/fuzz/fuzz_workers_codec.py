"""atheris fuzz target: the packets between serve and its SMTP workers
(mailstack/workers/codec.py), which now carry client-chosen login data.

Run: `python tests/fuzz/fuzz_workers_codec.py -runs=100000 [corpus_dir]`. Not collected by
pytest. Any bytes must decode to a packet or None, never raise, and a decoded packet must
encode and decode to itself.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.workers.codec import decode, encode

SEEDS = [
    b"C 7 smtp",
    b"C 8 submissions",
    b"U 9",
    b"L 3 dzEuczQ= 192.0.2.1 YWxpY2U= cHc=",
    b"S 5 dzIuczE= ::1 bixuPWEscj14",
    b"P 5 Yz1iaXdzLHI9eCxwPXk=",
    b"X 5",
    b"K 6 czE= ZXhhbXBsZS5jb20= AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    b"V 3 ok YWxpY2VAZXhhbXBsZS5jb20= =",
    b"E alice@example.com\0.Sent",
    b"D 12345",
    b"R",
    b"Q",
]


def test_one_input(data: bytes) -> None:
    packet = decode(data)
    if packet is not None:
        assert decode(encode(packet)) == packet


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
