"""mailstack/base/sqlite_files.py: processes opening one new SQLite file at the same moment."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

from mailstack.smtp.sendlimits import SendLog


def _first_look(path: str, barrier: Any, results: Any) -> None:
    barrier.wait()
    try:
        SendLog(Path(path)).usage("alice@example.com", "127.0.0.0/24")
        results.put(None)
    except Exception as exc:
        results.put(repr(exc))


def test_processes_opening_a_new_send_log_together_all_get_it(tmp_path: Path) -> None:
    # Serve's two SMTP workers took a fresh deployment's first submissions at once: one of
    # them was told "database is locked" at once (no busy wait) and answered 451 at MAIL
    # FROM. Without the retry about one round in eight fails here.
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(40):
        path = tmp_path / f"send-{round_}.sqlite3"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [
            ctx.Process(target=_first_look, args=(str(path), barrier, results)) for _ in range(4)
        ]
        for p in procs:
            p.start()
        failures += [r for r in (results.get(timeout=30) for _ in procs) if r is not None]
        for p in procs:
            p.join(30)
    assert failures == []
