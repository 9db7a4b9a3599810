"""An SMTP worker process loads what MX sessions need, not the rest of `serve`.

Each module a worker imports costs every worker process its memory (issue 11: 10,000 IDLE
sessions, all of `serve`'s processes under 300 MB; docs/benchmarks.md). The worker here is the
real one (`mailstack.workers.child.main`), given a socketpair as `serve` gives it, a real SMTP
connection handed over and a message delivered through it; a wrapper only adds a signal
handler that writes the names in `sys.modules` to a file.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from mailstack.workers.codec import Closed, Delivered, HandOff, Ready, decode, encode
from tests.conftest import run_cli

ALICE = "alice@example.com"
# Test-side only: SIGUSR1 dumps the worker's loaded modules (written aside, then renamed).
WRAPPER = """
import json, os, signal, sys
def dump(signum, frame):
    out = os.environ["WORKER_MODULES"]
    with open(out + ".part", "w") as f:
        json.dump(sorted(sys.modules), f)
    os.rename(out + ".part", out)
signal.signal(signal.SIGUSR1, dump)
from mailstack.workers import child
sys.exit(child.main(sys.argv[1:]))
"""
# What a worker must not load: the IMAP server, the web side, the CLI and `serve`'s
# orchestration, and the libraries only they use. (Submission sessions run in the workers.)
FORBIDDEN = (
    "mailstack.imap",
    "mailstack.app",
    "mailstack.cli",
    "mailstack.checks",
    "mailstack.status",
    "mailstack.web.server",
    "mailstack.web.app",
    "mailstack.delivery.queue",  # the outbound runner (the spool is delivery.queue_spool)
    "aiohttp",
    "jinja2",
    "rich",
    "click",
    "acme",
    "cryptography",  # DKIM: the main process does the RSA step for the workers
)


def _receive(sock: socket.socket, timeout_s: float = 30) -> object:
    sock.settimeout(timeout_s)
    packet, _fds, _flags, _addr = socket.recv_fds(sock, 4096, 4)
    return decode(packet)


def test_a_worker_that_delivered_mail_loaded_no_imap_web_or_cli(
    deployment_dir: Path, tmp_path: Path
) -> None:
    add = run_cli(deployment_dir, "user", "add", ALICE, "--password-stdin", input="pw pw pw\n")
    assert add.returncode == 0, add.stderr
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    modules_file = tmp_path / "modules.json"
    worker = subprocess.Popen(
        [sys.executable, "-P", "-c", WRAPPER, "--dir", str(deployment_dir),
         "--ipc-fd", str(theirs.fileno()), "--tag", "w1"],
        pass_fds=[theirs.fileno()],
        env={**os.environ, "WORKER_MODULES": str(modules_file)},
        cwd=tmp_path,
    )  # fmt: skip
    theirs.close()
    try:
        assert _receive(ours) == Ready()
        # One real MX session through the worker, as `serve` hands it over.
        with socket.create_server(("127.0.0.1", 0)) as listener:
            port = listener.getsockname()[1]
            errors: list[BaseException] = []

            def send() -> None:
                try:
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
                        smtp.sendmail("someone@example.org", [ALICE], b"Subject: hi\r\n\r\nhi\r\n")
                except BaseException as exc:
                    errors.append(exc)

            client = threading.Thread(target=send)
            client.start()
            conn, _ = listener.accept()
            socket.send_fds(ours, [encode(HandOff(1))], [conn.fileno()])
            conn.close()
            client.join(60)
        assert not errors, errors
        got = [_receive(ours), _receive(ours)]
        assert Delivered(ALICE, "INBOX") in got, got
        assert Closed(1) in got, got
        worker.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not modules_file.exists():
            assert time.monotonic() < deadline, "the worker wrote no module list"
            time.sleep(0.05)
        modules = json.loads(modules_file.read_text())
    finally:
        ours.close()  # EOF: the worker finishes and exits
        assert worker.wait(60) == 0
    assert "mailstack.delivery.queue_spool" in modules  # the list is the worker's, complete
    loaded = sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    assert loaded == []
