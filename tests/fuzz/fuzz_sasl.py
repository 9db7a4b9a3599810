"""atheris fuzz target for SASL (mailstack/base/sasl.py, smtp/auth.py): any bytes, as a base64
response or as a decoded PLAIN message, give credentials or a SASL error, nothing else.

Run: `python tests/fuzz/fuzz_sasl.py -atheris_runs=100000 tests/fuzz/corpus_sasl` (atheris is in
the test extras). Not collected by pytest (no test_ prefix). Seeds are written to the corpus
directory on first run. The first input byte picks the entry point: the RFC 4616 parser, the
base64 response decoder, or a whole SMTP AUTH exchange (PLAIN or LOGIN, the rest of the input
split into response lines). Any exception other than a SASL error is a crash to turn into an
`@example(...)` in tests/mailstack/test_sasl.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

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


def main() -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None and not corpus.exists():
        corpus.mkdir(parents=True)
        for i, seed in enumerate(SEEDS):
            for mode in range(4):
                (corpus / f"seed-{i}-{mode}").write_bytes(bytes([mode]) + seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
