"""MODSEQ never goes back: `mailstack serve` is SIGKILLed right after answering a STORE or an
APPEND with its new MODSEQ, restarted, and every MODSEQ a client saw is still at or below what
the restarted server reports (RFC 7162 §3.1.1: strictly increasing)."""

from __future__ import annotations

import re
import signal
import ssl
from pathlib import Path

from tests.conftest import run_cli
from tests.imap.rawclient import RawClient
from tests.support.serve import ServeProcess

USER = "dave@example.com"
PASSWORD = "modseq survives"
BODY = b"Subject: modseq\r\n\r\nkept\r\n"


def connect(root: Path, proc: ServeProcess) -> RawClient:
    tls = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
    client = RawClient("127.0.0.1", proc.port("imap"))
    assert client.tagged("STARTTLS").startswith(b"OK")
    client.sock = tls.wrap_socket(client.sock, server_hostname="mail.example.com")
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def number(pattern: bytes, lines: list[bytes]) -> int:
    (value,) = {int(m[1]) for line in lines if (m := re.search(pattern, line))}
    return value


def test_modseq_never_goes_back_after_sigkill(deployment_dir: Path) -> None:
    added = run_cli(deployment_dir, "user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    seen: dict[int, int] = {}  # uid -> the newest MODSEQ a client was told
    top = 0
    for round_ in range(3):
        proc = ServeProcess(deployment_dir).start()
        try:
            client = connect(deployment_dir, proc)
            lines = client.command("SELECT INBOX (CONDSTORE)")
            highest = number(rb"HIGHESTMODSEQ (\d+)", lines)
            assert highest >= top, f"round {round_}: HIGHESTMODSEQ went back"
            if seen:
                lines = client.command("UID FETCH 1:* (MODSEQ)")
                now = {
                    int(m[1]): int(m[2])
                    for line in lines
                    if (m := re.search(rb"UID (\d+) .*MODSEQ \((\d+)\)", line))
                }
                assert all(now[uid] >= modseq for uid, modseq in seen.items()), (now, seen)
            client.send(b"a APPEND INBOX {%d+}\r\n" % len(BODY) + BODY + b"\r\n")
            appended = client.until_tagged(b"a")
            uid = number(rb"APPENDUID \d+ (\d+)", appended)
            lines = client.command(f"UID STORE 1:{uid} +FLAGS (\\Seen $Round{round_})")
            modseqs = {
                int(m[1]): int(m[2])
                for line in lines
                if (m := re.search(rb"UID (\d+) .*MODSEQ \((\d+)\)", line))
            }
            assert set(modseqs) == set(range(1, uid + 1))
            assert min(modseqs.values()) > max([highest, *seen.values()])
            seen.update(modseqs)
            top = max(seen.values())
            # The instant the answer arrived: nothing can be flushed afterwards.
            proc.signal(signal.SIGKILL)
            assert proc.proc is not None
            assert proc.proc.wait(timeout=30) == -signal.SIGKILL
            client.close()
        finally:
            proc.stop()
