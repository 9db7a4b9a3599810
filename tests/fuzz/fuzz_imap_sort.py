"""atheris fuzz target for SORT and THREAD (imap/sort.py, imap/thread.py): any Subject value
gives a base subject, any header blocks give messages that sort and thread, nothing raises.

Run: `python tests/fuzz/fuzz_imap_sort.py -runs=100000 [corpus_dir]` (`scripts/fuzz` runs it
from tests/fuzz/corpus/fuzz_imap_sort/). Not collected by pytest. The first input byte picks
the entry point: the RFC 5256 §2.1 base-subject extraction on the rest as text, or the rest
split at NUL NUL into header blocks that are sorted by every key and threaded both ways.
Any exception is a crash to turn into an `@example(...)` in tests/imap/test_sort.py.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.delivery.store import MessageInfo
    from mailstack.imap import sort, thread

SEEDS = [
    b"Re: [list] Fwd: hello (fwd)",
    b"[fwd: [Fwd: Re: x]]",
    b"=?utf-8?q?Re=3A_caf=C3=A9?= (fwd)",
    b"[a] [b] [c",
    b"re:re:fw:fwd:",
    b"\tRe \t[x]  :  \r\n y ",
    b"Subject: Re: a\r\nMessage-ID: <1@x>\r\nReferences: <2@x>\r\n"
    b"\0\0Subject: a\r\nMessage-ID: <2@x>\r\nReferences: <1@x>\r\nDate: 1 Jan 2024 00:00 +0000",
    b"From: \"A\" <a@b>\r\nTo: g: x@y;\r\nCc: (c) c@d\r\nDate: Thu, 31 Feb 2024 99:99:99"
    b"\0\0From: <@>\r\nIn-Reply-To: <x@y> <z@w>\r\n\0\0",
]
KEYS = sorted(sort.SORT_KEYS)


def number(m: sort.Message) -> int:
    return m.seq


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, rest = data[0] % 2, data[1:]
    if mode == 0:
        sort.base_subject(rest.decode("utf-8", "surrogateescape"))
        return
    found = [
        sort.Message.of(
            seq, MessageInfo(seq, frozenset(), float(len(block)), len(block), str(seq)), block
        )
        for seq, block in enumerate(rest.split(b"\0\0")[:50], start=1)
    ]
    for key in KEYS:
        sort.sort(found, [sort.Criterion(key, reverse=len(found) % 2 == 1)])
    for algorithm in (thread.references, thread.ordered_subject):
        thread.render(algorithm(found), number)


if __name__ == "__main__":
    harness.run(test_one_input, [bytes([mode]) + seed for seed in SEEDS for mode in range(2)])
