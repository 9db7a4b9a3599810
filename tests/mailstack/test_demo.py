"""`mailstack demo`: what the README's first command runs, minus the foreground serve."""

from __future__ import annotations

import http.cookiejar
import mailbox
import re
import shlex
import smtplib
import socket
import ssl
import subprocess
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

from tests.conftest import run_cli
from tests.support.serve import ServeProcess


def free_base_port() -> int:
    """A base port whose demo ports (base+25..+93) are free right now."""
    for base in range(20000, 60000, 137):
        ports = [base + n for n in (25, 43, 44, 65, 80, 87, 93)]
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
    assert f"IMAP      127.0.0.1 port {base + 93} (SSL/TLS) or {base + 43} (STARTTLS)" in out
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
        # and the curl line it prints to read the mail over IMAPS, verified against its CA
        lines = out.splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith("curl"))
        curl_line = lines[at].rstrip(" \\") + " " + lines[at + 1].strip()
        read = subprocess.run(
            [*shlex.split(curl_line), "--silent", "--show-error"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert read.returncode == 0, read.stderr
        assert "hello demo" in read.stdout
        with smtplib.SMTP("127.0.0.1", base + 25, timeout=10) as smtp:
            smtp.sendmail(
                "someone@example.org", ["demo@example.test"], b"Subject: hi\r\n\r\nsecond\r\n"
            )
    inbox = mailbox.Maildir(root / "mail/example.test/demo", create=False)
    delivered = [inbox.get_bytes(key) for key in inbox.iterkeys()]
    assert len(delivered) == 2
    assert any(b"hello demo" in m for m in delivered)
    # running demo again reuses the deployment and resets the password
    again = run_cli(root, "demo", "--base-port", str(base), "--no-serve")
    assert again.returncode == 0, again.stderr
    assert re.search(r"password\s+(\S+)", again.stdout)[1] != password[1]  # type: ignore[index]


def test_demo_serves_the_admin_page_it_prints(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    base = free_base_port()
    result = run_cli(root, "demo", "--base-port", str(base), "--no-serve")
    assert result.returncode == 0, result.stderr
    url = re.search(r"^  (https://127\.0\.0\.1:\d+/)$", result.stdout, re.M)
    password = re.search(r"password\s+(\S+)", result.stdout)
    assert url is not None, result.stdout
    assert password is not None
    assert url[1] == f"https://127.0.0.1:{base + 44}/"
    assert "log in as demo@example.test" in result.stdout
    tls = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
    with ServeProcess(root) as proc:
        assert proc.port("https") == base + 44
        assert proc.port("http") == base + 80
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=tls),
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
        )
        page = opener.open(url[1] + "login", timeout=30).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None, page
        form = {"csrf": csrf[1], "address": "demo@example.test", "password": password[1]}
        answer = opener.open(
            url[1] + "login", data=urllib.parse.urlencode(form).encode(), timeout=30
        )
        assert answer.url == url[1] + "admin"  # the demo user is the pages' admin
        assert "<h1>Server status</h1>" in answer.read().decode()
        # Plain http answers with a redirect to the https page.
        with socket.create_connection(("127.0.0.1", base + 80), timeout=10) as plain:
            plain.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            head = plain.recv(4096).decode()
        assert head.startswith("HTTP/1.1 308"), head
        assert f"Location: https://127.0.0.1:{base + 44}/" in head


def test_demo_certificate_names_the_loopback_address(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    base = free_base_port()
    assert run_cli(root, "demo", "--base-port", str(base), "--no-serve").returncode == 0
    tls = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
    # By address, verified: what the demo tells people to connect to.
    with (
        ServeProcess(root),
        socket.create_connection(("127.0.0.1", base + 93), timeout=10) as raw,
        tls.wrap_socket(raw, server_hostname="127.0.0.1") as imaps,
    ):
        assert imaps.recv(100).startswith(b"* OK")


def test_a_second_demo_on_busy_ports_says_so_before_creating_anything(tmp_path: Path) -> None:
    base = free_base_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", base + 43))
        holder.listen()
        demos_before = set(Path(tempfile.gettempdir()).glob("mailstack-demo-*"))
        result = run_cli(tmp_path / "unused", "demo", "--base-port", str(base), "--no-serve")
        demos_after = set(Path(tempfile.gettempdir()).glob("mailstack-demo-*"))
    assert result.returncode == 1
    assert result.stdout == ""  # no banner, no password
    (error, hint) = result.stderr.splitlines()
    assert error == f"error: port {base + 43} on 127.0.0.1 is in use"
    assert "is a demo already running?" in hint
    other = int(re.search(r"--base-port (\d+)", hint)[1])  # type: ignore[index]
    assert other != base
    assert not (tmp_path / "unused").exists()
    assert demos_after == demos_before
