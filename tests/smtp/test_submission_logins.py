"""SMTP AUTH on the implicit-TLS submission port (465) through the one login path: the
reviewer's bytes from issue 10 items 1 and 2, raw over TLS from chosen loopback addresses.

Loopback holds all of 127.0.0.0/8: 127.0.0.x is one client /24, 127.0.1.1 another network.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mailstack.base.throttle import LoginThrottle
from tests.smtp.test_submission import Submission, running
from tests.support.smtpserver import HOSTNAME, RawClient

ALICE = "alice@example.test"
PASSWORD = "pw"


def plain(name: bytes, password: bytes = PASSWORD.encode()) -> bytes:
    return b"AUTH PLAIN " + base64.b64encode(b"\0" + name + b"\0" + password) + b"\r\n"


def tls_client(sub: Submission, source_ip: str) -> RawClient:
    sock = socket.create_connection(
        ("127.0.0.1", sub.tls_port), timeout=60, source_address=(source_ip, 0)
    )
    client = RawClient(sub.tls().wrap_socket(sock, server_hostname=HOSTNAME))
    sub.clients.append(client)
    assert client.reply().startswith("220 ")
    client.send(b"EHLO client.example.net\r\n")
    assert "AUTH PLAIN LOGIN" in client.reply()
    return client


@pytest.fixture
async def locked(tmp_path: Path) -> AsyncIterator[Submission]:
    """Submission with alice@example.test, after 3 wrong passwords from 127.0.0.1 (the limit)."""
    async with running(tmp_path / "state") as sub:
        await asyncio.to_thread(sub.ctx.accounts.add_domain, "example.test", exist_ok=True)
        await asyncio.to_thread(sub.ctx.accounts.add_user, ALICE, PASSWORD)
        sub.ctx.logins.throttle = LoginThrottle(lockout_failures=3)  # 3 free: no delay

        def guess() -> None:
            client = tls_client(sub, "127.0.0.1")
            for _ in range(3):
                client.send(plain(ALICE.encode(), b"wrong"))
                assert client.reply() == "535 5.7.8 Authentication credentials invalid"

        await asyncio.to_thread(guess)
        yield sub


async def test_auth_plain_spellings_of_a_locked_account_are_locked(locked: Submission) -> None:
    def spell() -> list[str]:
        client = tls_client(locked, "127.0.0.2")  # same /24, another address
        out = []
        for name in (b"alice@example.test.", b" alice@example.test", b"Alice@EXAMPLE.test"):
            client.send(plain(name))  # issue 10 item 1: each got 235 on main
            out.append(client.reply())
        client.send(b"AUTH LOGIN " + base64.b64encode(b"alice@example.test.") + b"\r\n")
        assert client.reply() == "334 UGFzc3dvcmQ6"
        client.send(base64.b64encode(PASSWORD.encode()) + b"\r\n")
        out.append(client.reply())
        return out

    locked_out = "454 4.7.0 Too many failed authentication attempts, try again later"
    assert await asyncio.to_thread(spell) == [locked_out] * 4


async def test_auth_from_another_network_still_gets_in(locked: Submission) -> None:
    def elsewhere() -> tuple[str, str]:
        attacker = tls_client(locked, "127.0.0.1")
        attacker.send(plain(ALICE.encode()))
        user = tls_client(locked, "127.0.1.1")  # issue 10 item 2: 454 on main
        user.send(plain(ALICE.encode()))
        return attacker.reply(), user.reply()

    attacker, user = await asyncio.to_thread(elsewhere)
    assert attacker.startswith("454 4.7.0")
    assert user == "235 2.7.0 Authentication successful"
