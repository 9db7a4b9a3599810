"""atheris fuzz target for SASL (mailstack/base/sasl.py, smtp/auth.py): any bytes, as a base64
response or as a decoded PLAIN message, give credentials or a SASL error, nothing else.

Run: `python tests/fuzz/fuzz_sasl.py -runs=100000 [corpus_dir]` (`scripts/fuzz` runs it from
tests/fuzz/corpus/fuzz_sasl/). Not collected by pytest. The first input byte picks the entry
point: the RFC 4616 parser, the base64 response decoder, or a whole SMTP AUTH exchange (PLAIN
or LOGIN, the rest of the input split into response lines). Any exception other than a SASL error is a crash to turn into an
`@example(...)` in tests/mailstack/test_sasl.py.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.base import sasl
    from mailstack.smtp import auth

SEEDS = [
    b"\0alice@example.test\0pw",
    b"alice@example.test\0alice@example.test\0pw",
    b"bob\0alice\0pw",
    b"\0\0pw",
    b"\0alice\0",
    "\0jos\u00e9@example.test\0p\u00e4ss".encode(),
    b"AGFsaWNlQGV4YW1wbGUudGVzdABwdw==",
    b"=",
    b"*",
    b"!!!",
    b"YWxpY2U=\r\ncHc=",
]


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 4, data[1:]
    try:
        if mode == 0:
            sasl.parse_plain(rest)
        elif mode == 1:
            sasl.decode_response(rest.decode("latin-1"))
        else:
            lines = rest.decode("latin-1").split("\r\n")
            exchange = auth.SaslExchange("PLAIN" if mode == 2 else "LOGIN", lines[0] or None)
            for line in lines[1:]:
                if exchange.credentials is not None:
                    break
                exchange.feed(line)
    except (sasl.SaslError, auth.SaslError):
        pass


if __name__ == "__main__":
    # The first byte picks the entry point: every seed through every one.
    harness.run(test_one_input, [bytes([mode]) + seed for seed in SEEDS for mode in range(4)])
