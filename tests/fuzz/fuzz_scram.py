"""atheris fuzz target for SCRAM-SHA-256 (mailstack/base/scram.py over scramp): any bytes as a
client-first message, and then as a client-final message, give an answer or a ScramError,
nothing else, and no final message is ever accepted without the password.

Run: `python tests/fuzz/fuzz_scram.py -runs=100000 [corpus_dir]` (`scripts/fuzz` runs it from
tests/fuzz/corpus/fuzz_scram/). Not collected by pytest. The input is split at its first
"\\r\\n": the client-first message before it, the client-final message after it. Any other
exception is a crash to turn into a case in tests/mailstack/test_scram.py.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.base import scram

KEYS = scram.make_keys("pencil")  # once: PBKDF2 is slow by design

SEEDS = [
    b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO\r\nc=biws,r=rOprNGfwEbeRWgbNEkqO,p=dHzbZapWIk4jUhN+Ute9yta=",
    b"y,,n=alice@example.test,r=abc\r\nc=eSws,r=abcdef,p=AAAA",
    b"p=tls-server-end-point,,n=u,r=abc",
    b"n,a=bob,n=alice,r=abc",
    b"n,,n=a=2Cb=3D,r=abc,x=ext\r\nc=biws,r=abc,x=1,p=AAAA",
    b"n,,n=u,r=abc,m=mandatory",
    b"n,,n=\xc3\xa9,r=\x7f",
]


def test_one_input(data: bytes) -> None:
    first, _, final = data.partition(b"\r\n")
    try:
        exchange = scram.ScramExchange(first)
    except scram.ScramError:
        return
    exchange.server_first(KEYS)
    if exchange.finish(final) is not None:
        raise AssertionError("a client-final message was accepted without the password")


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
