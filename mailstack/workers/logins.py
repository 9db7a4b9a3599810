"""The login path of an SMTP worker process: every login goes to the main process.

Submission sessions run in the workers (mailstack.workers.parent), but a login is decided
where IMAP's are, by the main process's `Logins` (mailstack/base/login.py): one throttle, one
auth cache, one verifier pool, whichever process serves the connection. A worker's throttle
of its own would give a guesser a fresh budget per process and per protocol.

`RemoteLogins` is what `ctx.logins` is in a worker: `login()` sends an `L` packet and waits
for the `V` that answers it; `scram()` gives a `RemoteScram` whose steps are `S`, `P` and `X`
(mailstack/workers/codec.py). The main process's side is `LoginDesk` in
mailstack/workers/login_desk.py. Once asked, a login is the main process's to decide: a
session that goes away meanwhile does not withdraw it (the reason is in login.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from mailstack.base import scram
from mailstack.base.login import LoginResult, Outcome
from mailstack.delivery.dkim import RemoteSigner
from mailstack.workers.channel import Channel
from mailstack.workers.codec import (
    PACKET_MAX,
    LoginCheck,
    Packet,
    ScramAbandon,
    ScramProof,
    ScramStart,
    SignRequest,
    Verdict,
    encode,
)

log = logging.getLogger(__name__)

SIGN_TIMEOUT_S = 10.0  # then the worker signs itself (delivery.dkim)

# A refused SCRAM message, as the main process names it, and the error that stands for it.
SCRAM_ERRORS: dict[str, type[scram.ScramError]] = {
    "proxy": scram.ScramProxyError,
    "binding": scram.ScramBindingError,
    "syntax": scram.ScramSyntaxError,
}
_OUTCOMES = {o.value: o for o in Outcome}


class RemoteLogins:
    """`LoginPath` for a worker. Used on the worker's event loop."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Verdict]] = {}

    async def login(self, name: str, password: str, peer_ip: str, *, log: Any = log) -> LoginResult:
        conn = _conn_id(log)
        data = (
            name.encode("utf-8", "surrogateescape"),
            password.encode("utf-8", "surrogateescape"),
        )
        verdict = await self.ask(lambda n: LoginCheck(n, conn, peer_ip, *data), log)
        return _result(verdict)

    async def sign(self, selector: str, domain: str, digest: bytes) -> bytes:
        """DKIM's RSA step for a SHA-256 digest, done by the main process (codec.py: K);
        RuntimeError when it did not sign (delivery.dkim then signs here)."""
        verdict = await self.ask(lambda n: SignRequest(n, selector, domain, digest), log)
        if verdict.kind != "signed" or not verdict.data:
            raise RuntimeError(verdict.address or verdict.kind)
        return verdict.data

    def blocking_signer(self, loop: asyncio.AbstractEventLoop) -> RemoteSigner:
        """`sign` for a worker thread (the spool signs in one): blocks on the loop's answer.
        Called on the loop's thread."""
        loop_thread = threading.get_ident()

        def sign(selector: str, domain: str, digest: bytes) -> bytes:
            if threading.get_ident() == loop_thread:  # it would wait on itself
                raise RuntimeError("asked on the event loop's thread")
            future = asyncio.run_coroutine_threadsafe(self.sign(selector, domain, digest), loop)
            try:
                return future.result(SIGN_TIMEOUT_S)
            except BaseException:
                future.cancel()  # no answer in time: stop waiting for one on the loop too
                raise

        return sign

    def scram(self, peer_ip: str, *, log: Any = log) -> RemoteScram:
        return RemoteScram(self, peer_ip, log)

    def next_id(self) -> int:
        return next(self._ids)

    async def ask(self, make: Callable[[int], Packet], log: Any, number: int = 0) -> Verdict:
        """Send the packet `make(id)` and wait for the main process's verdict on it."""
        number = number or self.next_id()
        packet = make(number)
        if (size := len(encode(packet))) > PACKET_MAX:
            # Names and passwords of kilobytes are no one's: refused without being checked.
            log.info("login refused: the credentials are %d bytes long", size)
            return Verdict(number, Outcome.FAILED.value)
        waiting: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self._waiting[number] = waiting
        try:
            if not self._channel.send(packet):
                log.warning("login not checked: the main process cannot be reached")
                return Verdict(number, Outcome.BUSY.value)
            return await waiting
        finally:
            self._waiting.pop(number, None)

    def answer(self, verdict: Verdict) -> None:
        """A `V` packet arrived (the worker's packet reader calls this)."""
        waiting = self._waiting.get(verdict.id)
        if waiting is not None and not waiting.done():
            waiting.set_result(verdict)

    def main_gone(self) -> None:
        """The main process is gone: no verdict will come; sessions waiting get 'busy'."""
        for number, waiting in list(self._waiting.items()):
            if not waiting.done():
                waiting.set_result(Verdict(number, Outcome.BUSY.value))

    def abandon(self, number: int) -> None:
        self._channel.send(ScramAbandon(number))


class RemoteScram:
    """`ScramAttempt` for a worker: the exchange runs in the main process's `ScramLogin`."""

    def __init__(self, logins: RemoteLogins, peer_ip: str, log: Any) -> None:
        self._logins = logins
        self._peer_ip = peer_ip
        self._log = log
        self._id = 0  # the exchange's number while the main process holds it
        self.server_final: bytes | None = None

    async def start(self, client_first: bytes) -> bytes | LoginResult:
        number = self._logins.next_id()
        self._id = number
        conn = _conn_id(self._log)
        try:
            verdict = await self._logins.ask(
                lambda n: ScramStart(n, conn, self._peer_ip, client_first), self._log, number
            )
        except BaseException:
            self.abandon()
            raise
        if verdict.kind == "challenge":
            return verdict.data
        self._id = 0  # refused or throttled: the main process holds nothing any more
        _raise_refused(verdict)
        return _result(verdict)

    async def finish(self, client_final: bytes) -> LoginResult:
        number, self._id = self._id, 0
        if not number:
            raise RuntimeError("start() comes first")
        verdict = await self._logins.ask(lambda n: ScramProof(n, client_final), self._log, number)
        _raise_refused(verdict)
        result = _result(verdict)
        if result.outcome is Outcome.OK:
            self.server_final = verdict.data
        return result

    def abandon(self) -> None:
        if self._id:
            self._logins.abandon(self._id)
            self._id = 0


def _raise_refused(verdict: Verdict) -> None:
    error = SCRAM_ERRORS.get(verdict.kind)
    if error is not None:
        raise error(verdict.address or "refused")


def _result(verdict: Verdict) -> LoginResult:
    outcome = _OUTCOMES.get(verdict.kind, Outcome.BUSY)
    address = verdict.address if outcome is Outcome.OK and verdict.address else None
    if outcome is Outcome.OK and address is None:
        outcome = Outcome.FAILED  # an OK without an address is no login
    return LoginResult(outcome, address)


def _conn_id(logger: Any) -> str:
    extra = getattr(logger, "extra", None)
    return str(extra.get("conn", "")) if isinstance(extra, dict) else ""
