"""A worker's logins (mailstack/workers/logins.py) decided by the main process's desk
(mailstack/workers/login_desk.py) over a real SOCK_SEQPACKET socketpair, on real `Logins`
with a real account database: the same verdicts as in-process, SCRAM included, and an answer
even when deciding fails."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import scramp

from mailstack.base import scram
from mailstack.base.config import AuthConfig
from mailstack.base.login import LoginResult, Logins, Outcome
from mailstack.base.throttle import LoginThrottle
from mailstack.base.users import Accounts
from mailstack.workers.channel import Channel
from mailstack.workers.codec import (
    LoginCheck,
    ScramAbandon,
    ScramProof,
    ScramStart,
    Verdict,
    decode,
)
from mailstack.workers.login_desk import LoginDesk
from mailstack.workers.logins import RemoteLogins

ALICE, PASSWORD = "alice@example.test", "correct horse"


class Pair:
    def __init__(self, logins: Logins) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.main, self.worker = Channel(ours), Channel(theirs)
        self.desk = LoginDesk(logins, self.main, 1)
        self.remote = RemoteLogins(self.worker)
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._pump, self.main, self._to_desk)
        loop.add_reader(theirs.fileno(), self._pump, self.worker, self._to_remote)

    def _to_desk(self, packet: object) -> None:
        assert isinstance(packet, LoginCheck | ScramStart | ScramProof | ScramAbandon)
        self.desk.handle(packet)

    def _to_remote(self, packet: object) -> None:
        assert isinstance(packet, Verdict)
        self.remote.answer(packet)

    @staticmethod
    def _pump(channel: Channel, deliver: Callable[[object], None]) -> None:
        while (got := channel.receive()) is not None:
            data, _fds = got
            if data:
                deliver(decode(data))

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for channel in (self.main, self.worker):
            loop.remove_reader(channel.sock.fileno())
            channel.close()


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    db = Accounts(tmp_path / "users.sqlite3")
    db.add_domain("example.test")
    db.add_user(ALICE, PASSWORD)
    return db


@pytest.fixture
async def pair(accounts: Accounts) -> AsyncIterator[tuple[Pair, Logins]]:
    logins = Logins(accounts, AuthConfig(), LoginThrottle())
    pair = Pair(logins)
    yield pair, logins
    pair.close()
    accounts.close()


async def _scram(remote: RemoteLogins, password: str) -> LoginResult:
    client = scramp.ScramClient([scram.MECHANISM], ALICE, password)
    login = remote.scram("192.0.2.1")
    started = await login.start(client.get_client_first().encode())
    assert isinstance(started, bytes)
    client.set_server_first(started.decode())
    result = await login.finish(client.get_client_final().encode())
    if result.outcome is Outcome.OK:
        assert login.server_final is not None
        client.set_server_final(login.server_final.decode())  # our signature checks out
    return result


async def test_verdicts_cross_the_socketpair(pair: tuple[Pair, Logins]) -> None:
    link, logins = pair
    assert await link.remote.login(ALICE, PASSWORD, "192.0.2.1") == LoginResult(Outcome.OK, ALICE)
    assert (await link.remote.login(ALICE, "wrong", "192.0.2.1")).outcome is Outcome.FAILED
    assert (await _scram(link.remote, PASSWORD)).address == ALICE
    assert (await _scram(link.remote, "wrong")).outcome is Outcome.FAILED
    assert logins.verified == 2  # PLAIN's checks ran here, in the main process's Logins


async def test_a_scram_message_refused_there_raises_here(pair: tuple[Pair, Logins]) -> None:
    link, _ = pair
    with pytest.raises(scram.ScramProxyError):
        await link.remote.scram("192.0.2.1").start(b"n,a=bob@example.test,n=alice,r=abc")
    with pytest.raises(scram.ScramSyntaxError):
        await link.remote.scram("192.0.2.1").start(b"not scram")


async def test_credentials_too_long_for_a_packet_fail_without_a_check(
    pair: tuple[Pair, Logins],
) -> None:
    link, logins = pair
    result = await link.remote.login(ALICE, "x" * 5000, "192.0.2.1")
    assert result.outcome is Outcome.FAILED
    assert logins.verified == 0


async def test_a_login_that_cannot_be_decided_is_answered_busy(
    pair: tuple[Pair, Logins], accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    link, _ = pair
    accounts.close()  # the database breaks under the login path:
    for leftover in accounts.path.parent.glob("users.sqlite3*"):
        leftover.unlink()
    accounts.path.write_bytes(b"not a database " * 1000)
    result = await asyncio.wait_for(link.remote.login(ALICE, PASSWORD, "192.0.2.1"), 30)
    assert result.outcome is Outcome.BUSY
    assert "login 1 could not be decided" in caplog.text
