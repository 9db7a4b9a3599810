#!/usr/bin/env python3
"""Server CPU per IMAP operation of one mailstack build: an A/B that a busy machine does not
spoil (wall times do; the CPU a server spends on a command barely moves with the load).

Not a test. Run with the Python of the build's own venv and its checkout, e.g. for an old
commit in a worktree with its own venv:

    /path/venv-old/bin/python -P bench/imap_cpu.py --checkout /path/worktree-old --out old.json
    .venv/bin/python -P bench/imap_cpu.py --checkout . --out new.json

It uses that checkout's bench/imap_bench.py (its Maildir generator and its way of starting
the server), so each build is measured with its own code. The server runs in a process of its
own; CPU is that process's user+system time (/proc/PID/stat, all threads) around each step:
- cold SELECT and the cold client header fetch on the first connection (one measurement);
- warm, per round of connect+LOGIN+SELECT+command+LOGOUT, minus a round without the command:
  FETCH 1:* (FLAGS), the client header fetch, ENVELOPE BODYSTRUCTURE (after one warm-up
  round, so every build reads cached structures), UID SEARCH SUBJECT and BODY;
- LOGIN+SELECT itself per round.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The client header fetch of imap_bench.py, for builds whose imap_bench.py predates it.
CLIENT_HEADERS = (
    "UID RFC822.SIZE FLAGS INTERNALDATE ENVELOPE"
    " BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID References)]"
)
ROUNDS = {
    "LOGIN+SELECT": 300,
    "FETCH FLAGS": 30,
    "client headers": 10,
    "ENVELOPE BODYSTRUCTURE": 10,
    "SEARCH SUBJECT": 30,
    "SEARCH BODY": 5,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, required=True, help="the build's checkout")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args()
    sys.path.insert(0, str(args.checkout.resolve() / "bench"))
    import imap_bench as b  # the build's own, chosen at run time

    headers = getattr(b, "CLIENT_HEADERS", CLIENT_HEADERS)
    work = Path(tempfile.mkdtemp(prefix="mailstack-imapcpu-"))
    work.chmod(0o711)  # the Maildir is read as its owner by the server process
    maildir = work / "maildir"
    b.make_maildir(maildir, args.messages)
    out: dict[str, float] = {}
    with b.mailstack_server(work, maildir) as server:
        pid = _server_pid(work)

        def cpu_ms() -> float:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") * 1000

        client = b.connect(server.port)
        start = cpu_ms()
        client.select("INBOX")
        out["cold SELECT"] = cpu_ms() - start
        start = cpu_ms()
        b.fetch_all(client, headers)
        out["cold client headers"] = cpu_ms() - start
        b.fetch_all(client, "ENVELOPE BODYSTRUCTURE")  # the warm-up: structures cached
        client.logout()

        commands: dict[str, Callable[[imaplib.IMAP4], Any]] = {
            "LOGIN+SELECT": lambda c: None,
            "FETCH FLAGS": lambda c: b.fetch_all(c, "FLAGS"),
            "client headers": lambda c: b.fetch_all(c, headers),
            "ENVELOPE BODYSTRUCTURE": lambda c: b.fetch_all(c, "ENVELOPE BODYSTRUCTURE"),
            "SEARCH SUBJECT": lambda c: c.uid("SEARCH", "SUBJECT", b.SUBJECT_WORD),
            "SEARCH BODY": lambda c: c.uid("SEARCH", "BODY", b.BODY_WORD),
        }
        for name, command in commands.items():
            start = cpu_ms()
            for _ in range(ROUNDS[name]):
                c = b.connect(server.port)
                c.select("INBOX")
                command(c)
                c.logout()
            out[name] = (cpu_ms() - start) / ROUNDS[name]
    login = out["LOGIN+SELECT"]
    result = {
        k: round(v - login if k in ROUNDS and k != "LOGIN+SELECT" else v, 1) for k, v in out.items()
    }
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result) + "\n")
    return 0


def _server_pid(work: Path) -> str:
    """The serving subprocess imap_bench.py started (its command line names `work`)."""
    found = subprocess.run(
        ["pgrep", "-f", "--newest", f"serve-mailstack {work}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return found.stdout.split()[0]


if __name__ == "__main__":
    sys.exit(main())
