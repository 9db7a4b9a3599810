"""Every input in the fuzz targets' checked-in corpora (tests/fuzz/corpus/<target>/) runs through
its target once, as libFuzzer replays a corpus: an input that once crashed a parser stays a
regression test. (`scripts/fuzz` searches for new ones, for a bounded time.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
TARGETS = sorted(FUZZ.glob("fuzz_*.py"))


def test_every_target_has_a_corpus() -> None:
    assert len(TARGETS) >= 5  # IMAP, SMTP command/DATA/BDAT/address (and more as they come)
    for target in TARGETS:
        corpus = FUZZ / "corpus" / target.stem
        assert corpus.is_dir() and any(corpus.iterdir()), f"no corpus for {target.name}"


@pytest.mark.parametrize("target", TARGETS, ids=[t.stem for t in TARGETS])
def test_corpus_replays_without_a_crash(target: Path, tmp_path: Path) -> None:
    corpus = FUZZ / "corpus" / target.stem
    # The target imports its harness from its own folder: not with PYTHONSAFEPATH set.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    result = subprocess.run(
        [sys.executable, str(target), "-runs=0", f"-artifact_prefix={tmp_path}/", str(corpus)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    replayed = len(list(corpus.iterdir()))
    assert f"Done {replayed + 1} runs" in result.stderr  # each input, plus the empty one
