"""What every atheris target here shares: its seeds into the corpus directory, then libFuzzer.

A target is run as `python tests/fuzz/fuzz_X.py [libFuzzer flags] [CORPUS_DIR ...]`
(`scripts/fuzz` runs them all for a bounded time). The first corpus directory is where libFuzzer
writes new inputs; when it is empty, the target's seeds are written there first. The checked-in
corpora (tests/fuzz/corpus/<target>/) are replayed by tests/test_fuzz_corpus.py in every test
run: an input that once crashed a parser is added there and stays a regression test.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import atheris


def run(test_one_input: Callable[[bytes], None], seeds: Sequence[bytes]) -> None:
    corpus = next((Path(a) for a in sys.argv[1:] if not a.startswith("-")), None)
    if corpus is not None:
        corpus.mkdir(parents=True, exist_ok=True)
        if not any(corpus.iterdir()):
            for i, seed in enumerate(seeds):
                (corpus / f"seed-{i}").write_bytes(seed)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
