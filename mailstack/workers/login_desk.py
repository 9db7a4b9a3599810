"""The main process's side of a worker's logins (mailstack/workers/logins.py): each `L`, `S`,
`P` or `X` packet from one worker is decided on this process's login path, and the verdict
goes back as a `V` packet on that worker's channel. A `K` packet asks for DKIM's RSA step:
the digest is signed with the domain's key and the signature goes back the same way.

A login is decided in a task of this process: the worker's session going away does not
cancel it (an abandoned guess still counts: mailstack/base/login.py). A SCRAM exchange lives
here between its `S` and its `P`; `X`, or the worker exiting, abandons it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from typing import Any

from mailstack.base import scram
from mailstack.base.login import LoginPath, LoginResult, Outcome, ScramAttempt
from mailstack.base.logs import connection_logger
from mailstack.base.paths import StatePaths
from mailstack.delivery import dkim_rsa
from mailstack.workers.channel import Channel
from mailstack.workers.codec import (
    LoginCheck,
    ScramAbandon,
    ScramProof,
    ScramStart,
    SignRequest,
    Verdict,
)
from mailstack.workers.logins import SCRAM_ERRORS

log = logging.getLogger(__name__)

LOGGER = "mailstack.smtp.submission"  # the worker's session lines carry this name too
SEND_RETRY_S = 0.05  # a full socketpair buffer: try a verdict again
SEND_TRIES = 100
_SCRAM_KINDS = {error: kind for kind, error in SCRAM_ERRORS.items()}  # the worker's map, turned
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}")  # a selector or domain: never a path


class LoginDesk:
    """Logins asked by one worker, over its channel. Used on the main process's loop."""

    def __init__(
        self, logins: LoginPath, channel: Channel, slot: int, paths: StatePaths | None = None
    ) -> None:
        self._logins = logins
        self._paths = paths
        self._channel = channel
        self._slot = slot
        self._tasks: set[asyncio.Task[None]] = set()
        self._scram: dict[int, tuple[ScramAttempt, asyncio.Task[None] | None]] = {}

    def handle(
        self, packet: LoginCheck | ScramStart | ScramProof | ScramAbandon | SignRequest
    ) -> None:
        match packet:
            case SignRequest():
                self._spawn(self._sign(packet), packet.id)
            case LoginCheck():
                self._spawn(self._check(packet), packet.id)
            case ScramStart(number, conn, ip, message):
                if number in self._scram:
                    return  # a worker never reuses a number; ignore a confused one
                attempt = self._logins.scram(ip, log=connection_logger(LOGGER, conn, ip))
                task = self._spawn(self._scram_start(number, attempt, message), number)
                self._scram[number] = (attempt, task)
            case ScramProof(number, message):
                held = self._scram.pop(number, None)
                if held is None:
                    self._send(Verdict(number, "syntax", "no SCRAM exchange in progress"))
                    return
                self._spawn(self._scram_finish(number, held[0], message), number)
            case ScramAbandon(number):
                self._drop(number)

    def close(self) -> None:
        """The worker is gone: its SCRAM exchanges are abandoned (never counted)."""
        for number in list(self._scram):
            self._drop(number)

    def _drop(self, number: int) -> None:
        held = self._scram.pop(number, None)
        if held is not None:
            attempt, task = held
            if task is not None and not task.done():
                task.cancel()  # ScramLogin.start abandons itself
            attempt.abandon()

    def _spawn(self, coro: Coroutine[Any, Any, None], number: int) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._answering(coro, number))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answering(self, coro: Coroutine[Any, Any, None], number: int) -> None:
        """Run one step; if it fails (a database error), the session still gets an answer
        ('try again later') instead of waiting for one until its deadline."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("SMTP worker %d: login %d could not be decided", self._slot, number)
            self._scram.pop(number, None)
            self._send(Verdict(number, Outcome.BUSY.value))

    async def _sign(self, packet: SignRequest) -> None:
        paths = self._paths
        if paths is None or not (
            _NAME.fullmatch(packet.selector) and _NAME.fullmatch(packet.domain)
        ):
            self._send(Verdict(packet.id, "unsigned", "no such key"))
            return
        key_path = paths.dkim_key(packet.selector, packet.domain)

        def signature() -> bytes:
            return dkim_rsa.sign_digest(key_path.read_bytes(), packet.digest)

        try:
            signed = await asyncio.to_thread(signature)
        except (OSError, ValueError) as exc:  # no key file, or not an RSA key
            self._send(Verdict(packet.id, "unsigned", str(exc)))
            return
        self._send(Verdict(packet.id, "signed", data=signed))

    async def _check(self, packet: LoginCheck) -> None:
        name = packet.name.decode("utf-8", "surrogateescape")
        password = packet.password.decode("utf-8", "surrogateescape")
        logger = connection_logger(LOGGER, packet.conn, packet.ip)
        result = await self._logins.login(name, password, packet.ip, log=logger)
        self._send(_verdict(packet.id, result))

    async def _scram_start(self, number: int, attempt: ScramAttempt, message: bytes) -> None:
        try:
            started = await attempt.start(message)
        except scram.ScramError as exc:
            self._scram.pop(number, None)
            self._send(Verdict(number, _SCRAM_KINDS.get(type(exc), "syntax"), str(exc)))
            return
        if isinstance(started, LoginResult):
            self._scram.pop(number, None)
            self._send(_verdict(number, started))
            return
        if number in self._scram:
            self._scram[number] = (attempt, None)  # started: waits for its proof
        self._send(Verdict(number, "challenge", data=started))

    async def _scram_finish(self, number: int, attempt: ScramAttempt, message: bytes) -> None:
        try:
            result = await attempt.finish(message)
        except scram.ScramError as exc:
            attempt.abandon()
            self._send(Verdict(number, _SCRAM_KINDS.get(type(exc), "syntax"), str(exc)))
            return
        final = attempt.server_final or b""
        self._send(_verdict(number, result, final))

    def _send(self, verdict: Verdict, tries: int = SEND_TRIES) -> None:
        if self._channel.send(verdict) or self._channel.broken:
            return
        if tries <= 1:
            log.warning("SMTP worker %d: a login verdict could not be sent", self._slot)
            return
        asyncio.get_running_loop().call_later(SEND_RETRY_S, self._send, verdict, tries - 1)


def _verdict(number: int, result: LoginResult, data: bytes = b"") -> Verdict:
    return Verdict(number, result.outcome.value, result.address or "", data)
