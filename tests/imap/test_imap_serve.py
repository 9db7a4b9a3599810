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


def test_appenduid_survives_sigkill(deployment_dir: Path) -> None:
    """APPENDUID is a promise: kill -9 right after it, and the message is there with that UID."""
    import imaplib
    import mailbox
    import re
    import signal

    added = run_cli(deployment_dir, "user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    tls = ssl.create_default_context(cafile=str(deployment_dir / "tls/ca.pem"))
    proc = ServeProcess(deployment_dir).start()
    body = b"Subject: durable\r\nMessage-ID: <durable@example.com>\r\n\r\nkept after kill -9\r\n"
    try:

        class Imaps(imaplib.IMAP4_SSL):  # connect to loopback, verify the certificate's name
            def _create_socket(self, timeout: float | None) -> socket.socket:
                raw = socket.create_connection(("127.0.0.1", self.port), timeout)
                wrapped: socket.socket = self.ssl_context.wrap_socket(
                    raw, server_hostname="mail.example.com"
                )
                return wrapped

        imap = Imaps("127.0.0.1", proc.port("imaps"), ssl_context=tls, timeout=30)
        imap.login(USER, PASSWORD)
        typ, data = imap.append("INBOX", r"(\Flagged)", None, body)
        assert typ == "OK"
        m = re.search(rb"APPENDUID (\d+) (\d+)", data[0] or b"")
        assert m is not None
        proc.signal(signal.SIGKILL)  # no chance to flush anything after the tagged OK
        assert proc.proc is not None
        proc.proc.wait(timeout=30)
        imap.shutdown()
    finally:
        proc.stop()
    maildir = mailbox.Maildir(deployment_dir / "mail/example.com/carol", create=False)
    kept = [maildir.get_bytes(k) for k in maildir.iterkeys()]
    assert [b"kept after kill -9" in k for k in kept] == [True]
    uidlist = (deployment_dir / "mail/example.com/carol/dovecot-uidlist").read_text()
    assert f" V{int(m[1])} " in uidlist.splitlines()[0] + " "
    assert any(line.split()[0] == m[2].decode() for line in uidlist.splitlines()[1:])
