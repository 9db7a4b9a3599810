"""250 means durable: `mailstack serve` is SIGKILLed the instant it says 250, the mail is there.

Runs the real `python -m mailstack --dir D serve` as a subprocess (tests/support/serve.py), so
nothing in this process can finish the write after the reply. A process kill cannot show a
missing fsync (the kernel keeps the written pages); tests/delivery/test_fsync_order.py checks
the fsyncs themselves, from the system calls.
"""

from __future__ import annotations

import mailbox
import signal
import socket
from pathlib import Path

from tests.conftest import Cli
from tests.support.serve import ServeProcess
from tests.support.smtpserver import RawClient


def _without_inbound_checks(root: Path) -> None:
    # SPF/DKIM/DMARC would query the system resolver; this test is about the store.
    config = root / "mailstack.toml"
    text = config.read_text()
    assert "verify_inbound = true" in text
    config.write_text(text.replace("verify_inbound = true", "verify_inbound = false"))


def test_mail_survives_sigkill_right_after_250(cli: Cli, deployment_dir: Path) -> None:
    _without_inbound_checks(deployment_dir)
    assert cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n").returncode == 0
    bodies = [b"Subject: durable %d\r\n\r\nline one\r\n..dotted\r\n" % i for i in range(3)]
    serve = ServeProcess(deployment_dir).start()
    try:
        with socket.create_connection(("127.0.0.1", serve.port("smtp")), timeout=30) as sock:
            c = RawClient(sock)
            assert c.reply().startswith("220 mail.example.com")
            c.send(b"EHLO client.example.net\r\n")
            assert c.reply().startswith("250-")
            for body in bodies:
                c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
                assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
                c.send(body + b".\r\n")
                reply = c.reply()
                assert reply.startswith("250 2.0.0"), reply
            # The instant the last 250 arrived: no chance to flush anything afterwards.
            serve.signal(signal.SIGKILL)
            assert serve.proc is not None
            assert serve.proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        serve.stop()
    md = mailbox.Maildir(str(deployment_dir / "mail/example.com/alice"), factory=None, create=False)
    stored = sorted(md.get_bytes(key) for key in md.iterkeys())
    assert len(stored) == 3
    for body, message in zip(bodies, stored, strict=True):
        assert message.endswith(body.replace(b"\r\n", b"\n").replace(b"\n..", b"\n."))
        assert b"\nDelivered-To: alice@example.com\n" in b"\n" + message


def test_sigterm_says_421_to_idle_sessions_and_exits_0(cli: Cli, deployment_dir: Path) -> None:
    _without_inbound_checks(deployment_dir)
    serve = ServeProcess(deployment_dir).start()
    try:
        with socket.create_connection(("127.0.0.1", serve.port("smtp")), timeout=30) as sock:
            c = RawClient(sock)
            assert c.reply().startswith("220 ")
            c.send(b"EHLO client.example.net\r\n")
            assert c.reply().startswith("250-")
            serve.signal(signal.SIGTERM)
            assert c.reply().startswith("421 4.3.2")
            assert c.is_closed()
        assert serve.proc is not None
        assert serve.proc.wait(timeout=60) == 0  # one SIGTERM: drains and exits by itself
    finally:
        serve.stop()
