"""NOTIFY (RFC 5465) inside a real `mailstack serve`: mail the MX accepts over SMTP (in a worker
process) and a file another program writes into a folder reach a NOTIFY session that sends no
command: STATUS for a mailbox that is not selected, EXISTS and the MessageNew FETCH for the
selected one."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from tests.conftest import run_cli
from tests.imap.rawclient import RawClient
from tests.support.serve import ServeProcess

USER = "dana@example.com"
PASSWORD = "notify in serve"
WAIT_S = 10.0  # generous on a loaded machine; how fast it is belongs in bench/


def message(n: int) -> bytes:
    return b"From: x@example.org\r\nTo: %s\r\nSubject: note %d\r\n\r\nhello\r\n" % (
        USER.encode(),
        n,
    )


def wait_for(client: RawClient, pattern: bytes) -> bytes:
    while True:
        line = client.line()
        if re.search(pattern, line):
            return line


def test_smtp_delivery_and_a_foreign_file_reach_notify(deployment_dir: Path) -> None:
    added = run_cli(deployment_dir, "user", "add", USER, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    proc = ServeProcess(deployment_dir).start()
    try:
        client = RawClient("127.0.0.1", proc.port("imap"), timeout_s=WAIT_S)
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.tagged("SELECT Archive").startswith(b"OK")
        notify = (
            "NOTIFY SET (selected (MessageNew (UID ENVELOPE) MessageExpunge)) "
            "(personal (MessageNew MessageExpunge))"
        )
        assert client.tagged(notify).startswith(b"OK")
        with smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=60) as smtp:
            smtp.sendmail("x@example.org", [USER], message(1))
        line = wait_for(client, rb"^\* STATUS")
        assert line == b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UNSEEN 1)\r\n"
        # Another program writes into the selected folder (inotify in the serve process).
        maildir = deployment_dir / "mail/example.com/dana"
        (maildir / ".Archive/new/1700000000.foreign.elsewhere").write_bytes(message(2))
        assert wait_for(client, rb"EXISTS") == b"* 1 EXISTS\r\n"
        fetched = wait_for(client, rb"FETCH")
        assert fetched.startswith(b'* 1 FETCH (UID 1 ENVELOPE (NIL "note 2" ')
        # SMTP into INBOX once it is selected: EXISTS and FETCH, no STATUS.
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        with smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=60) as smtp:
            smtp.sendmail("x@example.org", [USER], message(3))
        assert wait_for(client, rb"EXISTS|STATUS") == b"* 2 EXISTS\r\n"
        assert wait_for(client, rb"FETCH").startswith(b'* 2 FETCH (UID 2 ENVELOPE (NIL "note 3" ')
        assert client.tagged("LOGOUT").startswith(b"OK")
        client.close()
    finally:
        status = proc.stop()
    assert status == 0, "".join(proc.log)
