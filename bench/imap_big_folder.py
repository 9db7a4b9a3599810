#!/usr/bin/env python3
"""A big INBOX in several sessions: server memory and the first commands on it.

Not a test. Run from the repository root with the venv's Python:

    python -P bench/imap_big_folder.py --messages 100000 --sessions 8

imap_bench.py generates the Maildir (no uidlist or index: mail another program left) and
starts the server in a process of its own. Then: one session opens INBOX (cold) and fetches
`UID FETCH 1:* (UID FLAGS)`; the other sessions open it; all send `UID FETCH 1:* (UID FLAGS)`
and a header `UID SEARCH SUBJECT` at once (the header rows not filled yet, so the search reads
every header block, in the worker processes of mailstack/base/parallel.py); one STORE. The
server's resident memory (VmRSS) is printed after each step, with that of its worker
processes while they run, and once more after they stopped (idle).
"""

from __future__ import annotations

import argparse
import imaplib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import imap_bench as b

from mailstack.base import parallel


def rss_mb(pid: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) // 1024
    return -1


def helpers_mb(pid: str) -> tuple[int, int]:
    """(count, MB resident) of the server's worker processes (mailstack/base/parallel.py)."""
    count = total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[1] == pid and b"base.parallel" in cmdline:
            count += 1
            total += rss_mb(entry.name)
    return count, total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mailstack-big-"))
    try:
        return measure(work, args.messages, args.sessions)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # 100,000 files: not left behind


def measure(work: Path, messages: int, sessions: int) -> int:
    work.chmod(0o711)  # the Maildir is read as its owner by the server process
    maildir = work / "maildir"
    b.make_maildir(maildir, messages)
    with b.mailstack_server(work, maildir) as server:
        found = subprocess.run(
            ["pgrep", "-f", "--newest", f"serve-mailstack {work}"],
            capture_output=True,
            text=True,
            check=True,
        )
        pid = found.stdout.split()[0]

        def step(name: str, started: float | None = None) -> None:
            took = "" if started is None else f" in {time.perf_counter() - started:.2f} s"
            count, helpers = helpers_mb(pid)
            also = f" (+ {count} worker processes: {helpers} MB)" if count else ""
            print(f"{name}{took}: server RSS {rss_mb(pid)} MB{also}", flush=True)

        step("idle")
        first = b.connect(server.port)
        started = time.perf_counter()
        b.check(first.select("INBOX"))
        step("cold SELECT", started)
        started = time.perf_counter()
        b.check(first.uid("FETCH", "1:*", "(UID FLAGS)"))
        step("UID FETCH 1:* (UID FLAGS)", started)
        clients = [first]
        for _ in range(sessions - 1):
            client = b.connect(server.port)
            b.check(client.select("INBOX"))
            clients.append(client)
        step(f"{sessions} sessions selected")
        errors: list[BaseException] = []

        def work_on(client: imaplib.IMAP4) -> None:
            try:
                b.check(client.uid("FETCH", "1:*", "(UID FLAGS)"))
                b.check(client.uid("SEARCH", "SUBJECT", b.SUBJECT_WORD))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=work_on, args=(c,)) for c in clients]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        step(f"{sessions} x (UID FETCH FLAGS + UID SEARCH SUBJECT) at once", started)
        started = time.perf_counter()
        b.check(first.uid("STORE", "5", "+FLAGS", "(\\Seen)"))
        step("UID STORE 5 +FLAGS (\\Seen)", started)
        deadline = time.monotonic() + parallel.IDLE_S + 30
        while helpers_mb(pid)[0] and time.monotonic() < deadline:
            time.sleep(1)
        step("worker processes stopped (idle)")
        for client in clients:
            client.logout()
    return 0


if __name__ == "__main__":
    sys.exit(main())
