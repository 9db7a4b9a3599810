"""How long MaildirStore.snapshot() takes on a 10,000-message folder (not a test: numbers vary).

    python bench/maildir_snapshot.py [COUNT]

Cases: the first snapshot (numbers 10,000 files another program dropped into cur/), a fresh
store instance (parses the uidlist, lists, stat()s each file once for INTERNALDATE), a warm
unchanged folder (directory mtimes settled: nothing is re-read) and a just-changed folder (one
delivery: the directory is re-listed by name, nothing is stat()ed).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailstack.delivery.layout import crlf_size, unique_name
from mailstack.delivery.maildir import MaildirStore

from mailstack.base.paths import StatePaths

USER = "bench@example.com"


def timed(call: Callable[[], object], repeat: int = 1) -> list[float]:
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main(count: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="maildir-bench-"))
    try:
        paths = StatePaths(root)
        store = MaildirStore(paths, hostname="bench")
        store.create_account(USER)
        cur = paths.maildir(USER) / "cur"
        body = b"Subject: bench\n\n" + b"x" * 2000 + b"\n"
        for i in range(count):
            name = unique_name("bench", len(body), crlf_size(body), now=1.7e9 + i)
            (cur / f"{name}:2,S").write_bytes(body)

        def snap(s: MaildirStore) -> Callable[[], object]:
            return lambda: s.snapshot(USER, "INBOX")

        (first,) = timed(snap(store))
        fresh = MaildirStore(paths, hostname="bench")
        (cold,) = timed(snap(fresh))
        time.sleep(2.1)  # let the directory mtimes settle (delivery/index.py DIR_SETTLE_NS)
        fresh.snapshot(USER, "INBOX")
        warm = timed(snap(fresh), 50)
        fresh.deliver([(USER, "INBOX")], b"Subject: one more\r\n\r\nhi\r\n")
        changed = timed(snap(fresh), 20)
        print(f"{count} messages")
        print(f"  first snapshot, numbering every file: {first:8.1f} ms")
        print(f"  fresh store instance:                 {cold:8.1f} ms")
        print(f"  unchanged folder (median of 50):      {statistics.median(warm):8.2f} ms")
        print(f"  just changed (median of 20):          {statistics.median(changed):8.2f} ms")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
