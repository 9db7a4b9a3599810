"""atheris fuzz target: BDAT framing (the command argument and the chunks' line endings).

Run: `python tests/fuzz/fuzz_smtp_bdat.py -runs=100000 [corpus_dir]`. Not collected by pytest.
The input is "<BDAT argument>\\n<message bytes>"; the message is fed to `LineEndings` in pieces
of the size the argument names (or 7). Invariant: the verdict (any bare CR/LF?) does not depend
on how the message is cut, and equals a direct count on the whole.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.smtp.framing import LineEndings, parse_bdat

SEEDS = [b"5 LAST\nab\r\ncd", b"3\nhello\r.\rMAIL FROM:<x@y>\r\n", b"1\n\r\n\r", b"x\nq"]


def clean_when_cut(message: bytes, step: int) -> bool:
    endings = LineEndings()
    for i in range(0, len(message), step):
        if not endings.feed(message[i : i + step]):
            return False
    return endings.finish()


def test_one_input(data: bytes) -> None:
    arg, _, message = data.partition(b"\n")
    parsed = parse_bdat(arg.decode("utf-8", "surrogateescape"))
    step = min(max(parsed[0], 1), 64) if parsed is not None else 7
    expected = message.count(b"\r") == message.count(b"\n") == message.count(b"\r\n")
    assert clean_when_cut(message, step) == expected
    assert clean_when_cut(message, max(len(message), 1)) == expected



if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
