"""AUTHENTICATE SCRAM-SHA-256 (RFC 7677, RFC 5802; RFC 9051 §6.2.2, SASL-IR RFC 4959). A mixin
of `Session`.

The exchange, with or without an initial response:

    C: a1 AUTHENTICATE SCRAM-SHA-256 [client-first]    (or "+ " and then client-first)
    S: + server-first
    C: client-final
    S: + server-final       IMAP has no "additional data with success" (RFC 4422 §5 item 7):
    C: (empty line)         the final message goes out as a challenge the client answers empty
    S: a1 OK [CAPABILITY ...] logged in

Messages are checked by mailstack/base/scram.py; the login itself goes through the one login
path (`ScramLogin`: canonical name, throttle, delay, log lines, as PLAIN). Offered only where
PLAIN is (`may_authenticate`). Replies as for PLAIN: a malformed message is BAD, a wrong proof
`NO [AUTHENTICATIONFAILED]`, throttled `NO [UNAVAILABLE]`; "*" cancels with BAD at any step.
"""

from __future__ import annotations

import base64
from enum import Enum

from mailstack.imap import response
from mailstack.imap.protocol import SaslResponse
from mailstack.imap.session_base import InvalidCommandError, RefusedError, SessionCore, Write

from mailstack.base import sasl, scram
from mailstack.base.login import Outcome, ScramAttempt

SCRAM = scram.MECHANISM


class _Step(Enum):
    CLIENT_FIRST = 1  # "+ " sent, waiting for client-first
    CLIENT_FINAL = 2  # server-first sent
    ACKNOWLEDGE = 3  # server-final sent, waiting for the empty response


class ScramCommands(SessionCore):
    """The SCRAM-SHA-256 exchange of AUTHENTICATE."""

    peer_ip: str
    _sasl_tag: str | None
    _scram: ScramAttempt | None = None
    _scram_step_next: _Step = _Step.CLIENT_FIRST
    _scram_address: str | None = None

    async def _logged_in(self, tag: str, address: str, write: Write) -> None:
        raise NotImplementedError  # imap/session.py

    async def _scram_begin(self, tag: str, initial: str | None, write: Write) -> None:
        self._scram = self.ctx.logins.scram(self.peer_ip, log=self.log)
        if initial is None:
            self._scram_step_next = _Step.CLIENT_FIRST
            await self._scram_challenge(tag, b"", write)
            return
        await self._scram_run(tag, initial, _Step.CLIENT_FIRST, write)

    async def _scram_step(self, tag: str, event: SaslResponse, write: Write) -> None:
        if event.is_cancel:  # RFC 9051 §6.2.2: "*" cancels, answered with BAD
            self._scram_abandon()
            await write(response.bad(tag, "AUTHENTICATE cancelled"))
            return
        await self._scram_run(tag, event.data, self._scram_step_next, write)

    async def _scram_run(self, tag: str, data: str, step: _Step, write: Write) -> None:
        try:
            await self._scram_next(tag, data, step, write)
        except (InvalidCommandError, RefusedError) as exc:
            self._scram_abandon()
            if isinstance(exc, RefusedError):
                await write(response.no(tag, exc.text, exc.code))
            else:
                await write(response.bad(tag, str(exc)))
        except BaseException:
            self._scram_abandon()
            raise

    async def _scram_next(self, tag: str, data: str, step: _Step, write: Write) -> None:
        login = self._scram
        if login is None:  # pragma: no cover - only called while an exchange runs
            raise InvalidCommandError("no SCRAM exchange in progress")
        try:
            message = sasl.decode_response(data)
        except sasl.SaslError as exc:
            raise InvalidCommandError(f"malformed SCRAM response: {exc}") from None
        if step is _Step.ACKNOWLEDGE:
            # RFC 5802 §5: the client checked our signature; anything but empty is a mistake.
            address, self._scram, self._scram_address = self._scram_address, None, None
            if message or address is None:
                raise InvalidCommandError("expected an empty response to the server-final")
            await self._logged_in(tag, address, write)
            return
        try:
            if step is _Step.CLIENT_FIRST:
                started = await login.start(message)
                if not isinstance(started, bytes):  # the throttle refused the attempt
                    raise RefusedError("too many failed logins; try again later", "UNAVAILABLE")
                self._scram_step_next = _Step.CLIENT_FINAL
                await self._scram_challenge(tag, started, write)
                return
            result = await login.finish(message)
        except scram.ScramProxyError:
            raise RefusedError(
                "acting as another user is not allowed", "AUTHORIZATIONFAILED"
            ) from None
        except scram.ScramBindingError:
            raise RefusedError(
                "channel binding is not offered: use SCRAM-SHA-256", "CANNOT"
            ) from None
        except scram.ScramSyntaxError as exc:
            raise InvalidCommandError(str(exc)) from None
        if result.outcome is not Outcome.OK or result.address is None or not login.server_final:
            raise RefusedError("invalid credentials", "AUTHENTICATIONFAILED")
        self._scram_address = result.address
        self._scram_step_next = _Step.ACKNOWLEDGE
        await self._scram_challenge(tag, login.server_final, write)

    async def _scram_challenge(self, tag: str, message: bytes, write: Write) -> None:
        self._sasl_tag = tag
        self.proto.expect_sasl_response()
        await write(response.continuation(base64.b64encode(message)))

    def _scram_abandon(self) -> None:
        if self._scram is not None:
            self._scram.abandon()
        self._scram = self._scram_address = None
