"""SMTPUTF8 in, UTF8=ACCEPT out, end to end through `mailstack serve`: smtplib sends an
internationalized message to the MX; imaplib reads it as delivered after ENABLE UTF8=ACCEPT,
and downgraded (ASCII header fields, RFC 2047 words) without it."""

from __future__ import annotations

import imaplib
import smtplib
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.support.serve import ServeProcess

ALICE, PASSWORD = "alice@example.com", "utf8 accept"
MESSAGE = (
    "From: Jörg <jörg@bücher.example>\r\nTo: alice@example.com\r\nSubject: Grüße\r\n\r\nHallo\r\n"
).encode()


@pytest.fixture
def deployment(cli: Cli, deployment_dir: Path) -> Path:
    config = deployment_dir / "mailstack.toml"
    text = config.read_text()
    for old, new in (
        # SPF/DKIM/DMARC would ask the system resolver about bücher.example.
        ("verify_inbound = true", "verify_inbound = false"),
        ('relay = ""', 'relay = "127.0.0.1:9"'),  # nothing leaves for the Internet
    ):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text)
    added = cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    return deployment_dir


def test_smtputf8_message_read_with_and_without_utf8_accept(deployment: Path) -> None:
    with ServeProcess(deployment, timeout_s=60) as serve:
        with smtplib.SMTP("127.0.0.1", serve.port("smtp"), timeout=30) as smtp:
            smtp.ehlo("client.example")
            assert smtp.has_extn("smtputf8")
            smtp.sendmail(
                "jörg@bücher.example", [ALICE], MESSAGE, mail_options=["SMTPUTF8", "BODY=8BITMIME"]
            )
        for utf8 in (True, False):
            imap = imaplib.IMAP4("127.0.0.1", serve.port("imap"), timeout=30)
            try:
                imap.login(ALICE, PASSWORD)
                if utf8:
                    typ, data = imap._simple_command("ENABLE", "UTF8=ACCEPT")
                    assert typ == "OK", data
                imap.select("INBOX", readonly=True)
                typ, data = imap.fetch("1", "(BODY.PEEK[HEADER] ENVELOPE)")
                assert typ == "OK", data
                header = data[0][1]
                if utf8:
                    assert "Subject: Grüße\r\n".encode() in header
                    assert "From: Jörg <jörg@bücher.example>\r\n".encode() in header
                else:
                    assert header.isascii(), header
                    assert b"Subject: =?utf-8?" in header
                    assert b"To: alice@example.com\r\n" in header
                    assert data[1].isascii(), data[1]  # the ENVELOPE after the literal
            finally:
                imap.logout()
