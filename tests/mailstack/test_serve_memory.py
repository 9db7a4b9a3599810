"""`serve` limits glibc's malloc arenas in itself and its SMTP workers (mailstack.app
`limit_malloc_arenas`; issue 11's memory budget), unless the admin's environment sets it.

Real `mailstack serve` processes; what each worker was started with is read from
/proc/PID/environ (the main process sets the limit with mallopt() for itself and hands it on
in the environment, which glibc reads when a process starts).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.serve import ServeProcess

_READY = re.compile(r"SMTP worker (\d+) ready \(pid (\d+)\)")


def _worker_environ(root: Path) -> dict[str, str]:
    cfg = root / "mailstack.toml"
    cfg.write_text(re.sub(r"(?m)^workers = .*$", "workers = 1", cfg.read_text(), count=1))
    proc = ServeProcess(root).start()
    try:
        pids = [int(m[2]) for line in proc.log if (m := _READY.search(line))]
        assert len(pids) == 1, "".join(proc.log)
        raw = Path(f"/proc/{pids[0]}/environ").read_bytes()
    finally:
        assert proc.stop() == 0, "".join(proc.log)
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_workers_start_with_two_malloc_arenas(
    deployment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert _worker_environ(deployment_dir).get("MALLOC_ARENA_MAX") == "2"


def test_the_admins_malloc_arena_max_wins(
    deployment_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert _worker_environ(deployment_dir).get("MALLOC_ARENA_MAX") == "4"
