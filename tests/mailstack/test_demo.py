"""`mailstack demo`: what the README's first command runs, minus the foreground serve."""

from __future__ import annotations

import re
import shlex
import smtplib
import socket
import subprocess
from pathlib import Path

from tests.conftest import run_cli
from tests.support.serve import ServeProcess


def free_base_port() -> int:
    """A base port whose demo ports (base+25..+93) are free right now."""
    for base in range(20000, 60000, 137):
        ports = [base + n for n in (25, 43, 65, 87, 93)]
        try:
            socks = []
            for p in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free port range")


def test_demo_sets_up_and_serves(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    base = free_base_port()
    result = run_cli(root, "demo", "--base-port", str(base), "--no-serve")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    password = re.search(r"password\s+(\S+)", out)
    assert password is not None
    assert f"swaks --server 127.0.0.1:{base + 25}" in out
    assert f"127.0.0.1 port {base + 43} (STARTTLS)" in out
    swaks_line = next(line.strip() for line in out.splitlines() if line.strip().startswith("swaks"))
    with ServeProcess(root) as proc:
        assert proc.port("smtp") == base + 25
        # the exact line the demo tells a person to run
        sent = subprocess.run(
            [*shlex.split(swaks_line), "--body", "hello demo"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        with smtplib.SMTP("127.0.0.1", base + 25, timeout=10) as smtp:
            smtp.sendmail(
                "someone@example.org", ["demo@example.test"], b"Subject: hi\r\n\r\nsecond\r\n"
            )
    delivered = sorted((root / "mail/example.test/demo/new").iterdir())
    assert len(delivered) == 2
    assert any(b"hello demo" in p.read_bytes() for p in delivered)
    # running demo again reuses the deployment and resets the password
    again = run_cli(root, "demo", "--base-port", str(base), "--no-serve")
    assert again.returncode == 0, again.stderr
    assert re.search(r"password\s+(\S+)", again.stdout)[1] != password[1]  # type: ignore[index]
