"""The IMAP listeners' per-account structure caches (imap/cache.py) stay bounded in number:
each open one holds an SQLite connection (about 150 KB resident), and a `serve` with 1,000
accounts must not keep them all (issue 11; tests/delivery/test_open_indexes.py does the
same for the folder indexes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mailstack.imap import cache
from mailstack.imap.cache import CACHE_FILE, StructureCaches

CAP = 5


def open_cache_files() -> int:
    return sum(
        os.readlink(f"/proc/self/fd/{fd}").endswith(f"/{CACHE_FILE}-wal")
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    )


def test_open_structure_caches_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At most MAX_OPEN_CACHES stay open; a dropped one answers again from its file."""
    monkeypatch.setattr(cache, "MAX_OPEN_CACHES", CAP)
    caches = StructureCaches()
    roots = [tmp_path / f"user{i}" for i in range(4 * CAP)]
    for i, root in enumerate(roots):
        root.mkdir()
        caches.for_root(root).put_many([(f"m{i}", 10, f"structure {i}")])
    assert open_cache_files() <= CAP
    # A dropped cache opens again from its file: what it held is still there.
    assert caches.for_root(roots[0]).get_many([("m0", 10)]) == {"m0": "structure 0"}
    assert open_cache_files() <= CAP
    caches.close()
    assert open_cache_files() == 0
