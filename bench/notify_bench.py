#!/usr/bin/env python3
"""NOTIFY benchmark: how long from a change to a folder that is not selected to the moment
every NOTIFY session watching it has read its `* STATUS`.

Not a test (pytest does not collect bench/). Run from the repository root with the installed
mailstack (and the test extra, for tests/support):

    python bench/notify_bench.py --sessions 200 --folders 20 --rounds 50

One IMAP listener in this process (tests/support/imapserver.py: the server the IMAP tests use,
with IDLE's rescan at 60 s, so only the change itself can wake a session), one account with
`--folders` folders, `--sessions` connections each `NOTIFY SET (personal (MessageNew
MessageExpunge))` and then silent, read by one client thread with selectors. Each round
changes one folder: a delivery through the store (what SMTP does), or a file another program
writes into new/ (inotify). Median and worst over the rounds, and the resident memory
(VmRSS) of this process, server and clients together, per session. Only 127.0.0.1 is
contacted. One run (2 shared cores, 100 sessions, 10 folders): a delivery reached all 100
in about 0.1 s, a foreign file in about 0.06 s (each session reads one STATUS).
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # last: the installed mailstack wins over the checkout's folders

from tests.support.imapserver import PASSWORD, USER, make_deployment, running_server  # noqa: E402

MESSAGE = b"From: a@example.com\r\nSubject: bench\r\n\r\nbody\r\n"


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def command(sock: socket.socket, line: bytes) -> None:
    sock.sendall(line + b"\r\n")
    tag, buf = line.split(b" ", 1)[0], b""
    while not any(x.startswith(tag + b" OK") for x in buf.split(b"\r\n")):
        chunk = sock.recv(65536)
        if not chunk or b"\r\n" + tag + b" NO" in b"\r\n" + buf + chunk:
            raise RuntimeError(f"{line!r} failed: {buf + chunk!r}")
        buf += chunk


def wait_all(selector: selectors.BaseSelector, count: int, timeout_s: float = 30) -> None:
    """Until `count` sockets have each received a STATUS line."""
    heard: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(heard) < count:
        for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if b"* STATUS" in sock.recv(65536):
                heard.add(sock.fileno())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(heard)} of {count} sessions heard the change")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--folders", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="notify-bench-") as tmp:
        room = args.sessions + 10
        dep = make_deployment(
            Path(tmp) / "state",
            max_connections_per_ip=room,
            max_connections_per_network=room,
            max_connections_per_user=room,
        )
        folders = [f"F{n}" for n in range(args.folders)]
        for folder in folders:
            dep.store.create_folder(USER, folder)
        with running_server(dep) as server:
            before = rss_kib()
            selector = selectors.DefaultSelector()
            socks = []
            for _ in range(args.sessions):
                sock = socket.create_connection(("127.0.0.1", server.imap_port))
                sock.recv(65536)  # greeting
                command(sock, f'a LOGIN {USER} "{PASSWORD}"'.encode())
                command(sock, b"b NOTIFY SET (personal (MessageNew MessageExpunge))")
                selector.register(sock, selectors.EVENT_READ)
                socks.append(sock)
            after = rss_kib()
            results: dict[str, list[float]] = {"store delivery": [], "foreign file": []}
            for n in range(args.rounds):
                folder = folders[n % len(folders)]
                start = time.monotonic()
                dep.store.deliver([(USER, folder)], MESSAGE)
                wait_all(selector, len(socks))
                results["store delivery"].append(time.monotonic() - start)
                start = time.monotonic()
                new = dep.paths.maildir(USER) / f".{folder}" / "new" / f"17000{n:05d}.b.host"
                new.write_bytes(MESSAGE)
                wait_all(selector, len(socks))
                results["foreign file"].append(time.monotonic() - start)
            for sock in socks:
                sock.close()
    print(f"{args.sessions} NOTIFY sessions on {args.folders} folders, {args.rounds} rounds")
    per_session = (after - before) / args.sessions
    print(f"RSS of this process (server and clients): +{per_session:.1f} KiB per session")
    for what, times in results.items():
        print(
            f"{what}: all sessions told in {statistics.median(times) * 1000:.1f} ms median, "
            f"{max(times) * 1000:.1f} ms worst"
        )


if __name__ == "__main__":
    main()
