"""atheris fuzz target: the SRS codec (delivery/srs.py).

Run: `python tests/fuzz/fuzz_srs.py -runs=100000 [corpus_dir]`. Not collected by pytest. Any
text as a recipient must reverse or raise SrsError; any text as a sender must forward or raise
SrsError; a forwarded sender must reverse to itself (SRS0) or to an SRS0 address (SRS1).
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.delivery.srs import SrsCodec, SrsError

CODEC = SrsCodec((b"fuzz-secret", b"older"), "fwd.example")
NOW = 1_800_000_000.0

SEEDS = [
    b"alice@example.net",
    b"SRS0=nVzb=JZ=example.net=alice@fwd.example",
    b"SRS1=5vvH=fwd.example==nVzb=JZ=example.net=alice@second.example",
    b"srs0+AAAA=zz=a=b@fwd.example",
    b"SRS1=x=h=+y@fwd.example",
    b"SRS0=====@x",
]


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    try:
        CODEC.reverse(text, NOW)
    except SrsError:
        pass
    try:
        forwarded = CODEC.forward(text, NOW)
    except SrsError:
        return
    if forwarded == text:
        return
    back = CODEC.reverse(forwarded, NOW + 86400)
    assert back == text or back.upper().startswith("SRS0")


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
