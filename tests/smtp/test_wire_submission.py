"""Submission's author checks (issue 10 item 8): Resent-From: is checked as From: is."""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

from tests.smtp.test_submission import ALICE, BOB, PASSWORD, running

REMOTE = "someone@remote.test"


def submit(port: int, tls: object, headers: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example.net", timeout=30) as s:
        s.starttls(context=tls)  # type: ignore[arg-type]
        s.login(ALICE, PASSWORD)
        try:
            s.sendmail(ALICE, [REMOTE], headers + b"Subject: r\r\n\r\nforwarded\r\n")
        except smtplib.SMTPDataError as exc:
            return exc.smtp_code, exc.smtp_error
        return 250, b""


async def test_resent_from_naming_another_user_is_refused_and_not_queued(tmp_path: Path) -> None:
    async with running(tmp_path / "state") as sub:
        resent_by_bob = f"From: {ALICE}\r\nResent-From: {BOB}\r\n".encode()
        code, text = await asyncio.to_thread(submit, sub.port, sub.tls(), resent_by_bob)
        assert (code, text[:5]) == (550, b"5.7.1")
        assert b"Resent-From" in text
        assert sub.queue.list() == []  # never queued, so never signed with our key
        resent_by_alice = f"From: {BOB}\r\nResent-From: Alice <{ALICE}>\r\n".encode()
        code, text = await asyncio.to_thread(submit, sub.port, sub.tls(), resent_by_alice)
        assert (code, text[:5]) == (550, b"5.7.1")  # From: is still checked
        own = f"From: {ALICE}\r\nResent-From: {ALICE}\r\n".encode()
        assert (await asyncio.to_thread(submit, sub.port, sub.tls(), own))[0] == 250
        (entry,) = sub.queue.list()
        assert [r.address for r in entry.recipients] == [REMOTE]
