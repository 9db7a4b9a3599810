"""Submission: Resent-From: is checked as From: is (issue 10 item 8); slots reserved for
sessions that logged in (item 5)."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import time
from pathlib import Path

from tests.smtp.test_submission import ALICE, BOB, PASSWORD, running
from tests.support.smtpserver import HOSTNAME

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


async def test_slots_reserved_for_authenticated_sessions(tmp_path: Path) -> None:
    limits = {"max_connections": 3, "reserved_for_authenticated": 1}
    async with running(tmp_path / "state", smtp=limits) as sub:

        def run() -> list[bytes]:
            greetings = []
            idle = []
            for _ in range(3):  # not logged in: two places, the third is the reserve
                sock = socket.create_connection(("127.0.0.1", sub.tls_port), timeout=30)
                idle.append(sub.tls().wrap_socket(sock, server_hostname=HOSTNAME))
                sub.clients.append(idle[-1])
                greetings.append(idle[-1].recv(1000)[:9])
            idle[0].close()  # a place for one client, who logs in (and leaves its place)...
            deadline = time.monotonic() + 10
            while sub.services[1].open_connections() != 2 and time.monotonic() < deadline:
                time.sleep(0.01)  # bounded wait for the server to see the close
            user = sub.smtps()
            user.login(ALICE, PASSWORD)
            sock = socket.create_connection(("127.0.0.1", sub.tls_port), timeout=30)
            late = sub.tls().wrap_socket(sock, server_hostname=HOSTNAME)
            sub.clients.append(late)
            greetings.append(late.recv(1000)[:9])  # ...so the next one gets it: 3 in all
            return greetings

        greetings = await asyncio.to_thread(run)
    assert greetings == [b"220 mail.", b"220 mail.", b"421 4.7.0", b"220 mail."]
