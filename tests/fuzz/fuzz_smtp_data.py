"""atheris fuzz target: the DATA framer (smtp.framing.DataFramer), cut into random pieces.

Run: `python tests/fuzz/fuzz_smtp_data.py -runs=100000 [corpus_dir]`. Not collected by pytest.
The first input byte picks where the bytes are cut (chunking must not change the event); any
exception from the framer is a crash. Invariants checked: the framer yields at most one
DataEnd, a clean message holds no bare CR/LF, and it is the same however the bytes are cut.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.smtp.framing import DataEnd, DataError, DataFramer

SEEDS = [
    b"\x07Subject: x\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@b>\r\n",
    b"\x03a\n.\nMAIL FROM:<evil@example.net>\n\r\n.\r\n",
    b"\x05a\r\n.\rMAIL FROM:<evil@example.net>\r\n.\r\n",
    b"\x02..dot\r\n.\r\n",
    b"\x01" + b"x" * 1200 + b"\r\n.\r\n",
]


def frame(data: bytes, step: int) -> DataEnd | None:
    framer = DataFramer(max_bytes=4096)
    for i in range(0, len(data), step):
        framer.receive_data(data[i : i + step])  # after the end: pipelined bytes, as leftover
    return framer.next_event()


def test_one_input(data: bytes) -> None:
    if not data:
        return
    step, body = data[0] % 16 + 1, data[1:]
    event = frame(body, step)
    whole = frame(body, max(len(body), 1))
    if event is None or whole is None:
        assert event is None and whole is None
        return
    if event.error is None:
        assert event == whole, (event, whole)
        content = event.content
        assert content.count(b"\r") == content.count(b"\n") == content.count(b"\r\n")
    else:
        assert isinstance(event.error, DataError)



if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
