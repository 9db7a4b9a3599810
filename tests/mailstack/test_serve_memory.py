"""`serve` limits glibc's malloc arenas in itself and its SMTP workers (mailstack.app
`limit_malloc_arenas`; issue 11's memory budget), unless the admin's environment sets it.

Real `mailstack serve` processes; what each worker was started with is read from
/proc/PID/environ (the main process sets the limit with mallopt() for itself and hands it on
in the environment, which glibc reads when a process starts).
"""

from __future__ import annotations

import re
import subprocess
import sys
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


TRIM_PROBE = """
import sys
from mailstack.app import trim_malloc

def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

# Freed memory between live blocks stays resident until trimmed: 100 KB blocks (below
# glibc's mmap threshold, so they are on the heap), every 16th kept.
blocks = [bytearray(100_000) for _ in range(2000)]
kept = blocks[::16]
del blocks
before = rss_kb()
released = trim_malloc()
print(released, before - rss_kb())
"""


def test_trim_malloc_gives_freed_heap_memory_back() -> None:
    # What `serve` does every TRIM_S (mailstack.app trim_memory): after a burst (the first
    # logins of many accounts) the freed memory otherwise stays resident.
    out = subprocess.run(
        [sys.executable, "-P", "-c", TRIM_PROBE], capture_output=True, text=True, check=True
    )
    released, freed_kb = out.stdout.split()
    assert released == "True"
    assert int(freed_kb) > 100_000  # of about 190 MB freed between the kept blocks
