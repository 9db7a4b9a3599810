"""IMAP inside a real `mailstack serve` process: the app's wiring, STARTTLS with the
deployment's own CA, and a clean stop (BYE to an idling client, exit 0)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from tests.conftest import run_cli
from tests.imap.rawclient import RawClient
from tests.support.serve import ServeProcess

USER = "carol@example.com"
PASSWORD = "imap in serve"


def test_serve_imap_starttls_login_and_idle_until_sigterm(deployment_dir: Path) -> None:
    added = run_cli(deployment_dir, "user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    tls = ssl.create_default_context(cafile=str(deployment_dir / "tls/ca.pem"))
    proc = ServeProcess(deployment_dir).start()
    try:
        client = RawClient("127.0.0.1", proc.port("imap"))
        assert b"STARTTLS" in client.greeting
        assert client.tagged("STARTTLS").startswith(b"OK")
        client.sock = tls.wrap_socket(client.sock, server_hostname="mail.example.com")
        caps = client.command("CAPABILITY")[0]
        assert b"STARTTLS" not in caps and b"AUTH=PLAIN" in caps
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.tagged("SELECT INBOX").startswith(b"OK [READ-WRITE]")
        client.send(b"i IDLE\r\n")
        assert client.line() == b"+ idling\r\n"
        with (
            socket.create_connection(("127.0.0.1", proc.port("imaps")), timeout=10) as raw,
            tls.wrap_socket(raw, server_hostname="mail.example.com") as imaps,
        ):
            assert imaps.recv(4096).startswith(b"* OK [CAPABILITY IMAP4rev1")
    finally:
        status = proc.stop()
    # The idling session was told, not cut off; serve did not need its drain deadline.
    assert client.line().startswith(b"* BYE")
    client.close()
    assert status == 0, "".join(proc.log)
