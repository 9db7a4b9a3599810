"""One SMTP connection: reading commands, deadlines, limits, greeting, EHLO and STARTTLS.

`SmtpConnection` is the part of an SMTP session that is not a mail transaction (that is
`smtp.session.MxSMTP`, its subclass). It replaces aiosmtpd's command loop:

- Input is read in chunks into one buffer and cut at CRLF, so pipelined commands (RFC 2920)
  are answered in order; DATA and BDAT read from the same buffer.
- Deadlines, not idle timers: a whole command line must arrive within `command_timeout_s` of
  our last reply (RFC 5321 §4.5.3.2.7's 5 minutes by default), however the bytes trickle in;
  on expiry `421 4.4.2` and close (RFC 5321 §4.5.3.2 lets the server say why).
- Limits: 512-octet command lines (RFC 5321 §4.5.3.1.4; MAIL a little more for its
  parameters), `max_errors` then 421, connections per address, per network and in total
  (`smtp.limits`, 421 4.7.0 in place of the greeting), an optional DNSBL lookup at connect.
- ENHANCEDSTATUSCODES on every reply (RFC 2034, via `replies.enhance` for replies aiosmtpd
  builds); the greeting and EHLO lines go out without (RFC 2034 §3).
- STARTTLS uses `ctx.tls.current` at connect, so a SIGHUP reload applies to new sessions.
aiosmtpd's private names are reached only through `smtp.aiosmtpd_adapter`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any

import dns.asyncresolver
from aiosmtpd.smtp import Envelope, Session, TLSSetupException
from mailstack.delivery.services import ServerContext
from mailstack.smtp import replies
from mailstack.smtp.aiosmtpd_adapter import SmtpAdapter
from mailstack.smtp.dnsbl import dnsbl_listing
from mailstack.smtp.framing import MAX_MAIL_COMMAND_BYTES, check_command_line, parse_command
from mailstack.smtp.handler import MxEnvelope, MxHandler, MxSession
from mailstack.smtp.limits import ConnectionLimiter, Ticket
from mailstack.smtp.policy import check_helo
from mailstack.smtp.replies import Reply

from mailstack.base.connections import plain_ip
from mailstack.base.logs import connection_logger, new_connection_id

# How much we read at once (of an overlong line we keep nothing).
READ_CHUNK = 256 * 1024
# Session log lines keep the logger name they always had (admins' filters select on it).
LOGGER = "mailstack.smtp.server"


class SmtpConnection(SmtpAdapter):
    """The connection-level part of an MX or submission session."""

    def __init__(
        self,
        handler: MxHandler,
        *,
        ctx: ServerContext,
        limiter: ConnectionLimiter,
        resolver: dns.asyncresolver.Resolver | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        cfg = ctx.config.smtp
        super().__init__(
            handler,
            data_size_limit=cfg.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=ctx.config.server.hostname,
            ident="ESMTP mailstack",
            tls_context=ctx.tls.current,
            timeout=cfg.command_timeout_s,
            auth_require_tls=True,
            loop=loop,
        )
        self._ctx = ctx
        self._cfg = cfg
        self._limiter = limiter
        self._ticket: Ticket | None = None
        self._resolver = resolver
        self._inbuf = bytearray()
        self._close_after_reply = False
        self._waiting_for_command = False
        self._connection_id = new_connection_id("s")
        # Called once when the connection is gone (an SMTP worker reports it to the main
        # process, which counts the connection limits).
        self.on_closed: Callable[[], None] | None = None
        # Set by an SMTP worker: told when the session logged in (submission), for the main
        # process's limiter that counted the connection.
        self.on_authenticated: Callable[[], None] | None = None
        self._log: logging.LoggerAdapter[logging.Logger] = connection_logger(
            LOGGER, self._connection_id, "?"
        )

    # -- aiosmtpd factory hooks ----------------------------------------------------------------
    def new_session(self) -> Session:
        old = self.session
        session = MxSession(self.loop)
        if isinstance(old, MxSession):  # STARTTLS: same connection, state from before TLS
            session.inherit(old)
        else:
            session.connection_id = self._connection_id
        return session

    def new_envelope(self) -> Envelope:
        return MxEnvelope()

    # Methods, not properties: aiosmtpd's __init__ evaluates every attribute (inspect.getmembers).
    def mx_session(self) -> MxSession:
        if not isinstance(self.session, MxSession):
            raise RuntimeError("no session")  # cannot happen: connection_made made one
        return self.session

    def mx_envelope(self) -> MxEnvelope:
        if not isinstance(self.envelope, MxEnvelope):
            raise RuntimeError("no envelope")
        return self.envelope

    def _new_envelope(self) -> None:
        self.envelope = self.new_envelope()

    # -- output --------------------------------------------------------------------------------
    async def push(self, status: Any) -> None:
        """Every 2xx/4xx/5xx reply gets an enhanced status code (RFC 2034)."""
        text = status if isinstance(status, str) else bytes(status).decode("utf-8", "replace")
        lines = [replies.enhance(x) for x in text.split("\r\n")]
        if lines and lines[0][:1] in ("4", "5") and isinstance(self.session, MxSession):
            self.session.errors += 1
        await super().push("\r\n".join(lines))

    async def _push_raw(self, text: str) -> None:
        """The greeting and EHLO lines, which RFC 2034 §3 leaves without enhanced codes."""
        self.write_now(text.encode("utf-8") + b"\r\n")
        await self.drain()

    async def reply(self, reply: Reply) -> None:
        await self.push(str(reply))

    def on_timeout(self) -> None:
        # aiosmtpd closes silently; RFC 5321 §4.5.3.2 lets us say why first.
        if self.transport is not None and not self.transport.is_closing():
            self._log.info("timeout")
            self.write_now(str(replies.TIMEOUT).encode("ascii") + b"\r\n")
            self.transport.close()

    # -- input ---------------------------------------------------------------------------------
    async def _fill(self, deadline: float, *, limit: int = READ_CHUNK) -> bytes:
        """What the client sent next (1 to `limit` bytes), before the loop time `deadline`
        (then `on_timeout` closes the connection); EOF ends the session."""
        self.arm_deadline(deadline - self.loop.time())
        data = await self.read_some(limit)
        if not data:
            raise ConnectionResetError("client closed the connection")
        return data

    async def _read_command(self) -> bytes | Reply:
        """The next command line without CRLF, or the Reply for a line we refuse."""
        # One deadline for the whole line: a byte every few seconds does not extend it.
        deadline = self.loop.time() + self._cfg.command_timeout_s
        too_long = False
        while True:
            nl = self._inbuf.find(b"\n")
            if nl >= 0:
                if too_long:
                    del self._inbuf[: nl + 1]
                    return replies.LINE_TOO_LONG
                line = bytes(self._inbuf[: nl + 1])
                del self._inbuf[: nl + 1]
                break
            if len(self._inbuf) > MAX_MAIL_COMMAND_BYTES:
                too_long = True  # keep reading to the end of the line, keeping nothing
                self._inbuf.clear()
            self._waiting_for_command = True
            try:
                self._inbuf += await self._fill(deadline)
            finally:
                self._waiting_for_command = False
        return check_command_line(line)

    # -- the session -----------------------------------------------------------------------------
    async def serve(self) -> None:
        try:
            await self._serve_session()
        except asyncio.CancelledError:
            # aiosmtpd cancels us on EOF or a lost connection; the transport is ours to close.
            self._close()
            raise
        except Exception:  # a bug: say so in the log, never leave a silent dead task
            self._log.exception("session failed")
            self._close()

    async def _serve_session(self) -> None:
        session = self.mx_session()
        peer = session.peer if isinstance(session.peer, tuple) else ("?", 0)
        session.peer_ip, session.peer_port = plain_ip(str(peer[0])), int(peer[1])
        self._log = connection_logger(LOGGER, self._connection_id, session.peer_ip)
        admitted = self._limiter.admit_connection(session.peer_ip)
        if isinstance(admitted, Reply):
            self._log.info("refused at connect: %s", admitted)
            await self.push(str(admitted))
            self._close()
            return
        self._ticket = admitted
        self._log.debug("connected from %s port %d", session.peer_ip, session.peer_port)
        watcher = self.loop.create_task(self._watch_stopping())
        try:
            if self._resolver is not None and self._cfg.dnsbl:
                session.blocklisted_by = await dnsbl_listing(
                    self._resolver, session.peer_ip, self._cfg.dnsbl
                )
                if session.blocklisted_by:
                    self._log.info("client listed in %s", session.blocklisted_by)
            await self._push_raw(f"220 {self.hostname} {self.ident()}")
            await self._command_loop(session)
        finally:
            watcher.cancel()

    async def _command_loop(self, session: MxSession) -> None:
        while self.transport is not None and not self.transport.is_closing():
            if session.errors >= self._cfg.max_errors:
                self._log.info("too many errors (%d), disconnecting", session.errors)
                await self.push(str(replies.TOO_MANY_ERRORS))
                self._close()
                return
            if self._close_after_reply:
                await self.push(str(replies.SERVICE_UNAVAILABLE))
                self._close()
                return
            try:
                line = await self._read_command()
                if isinstance(line, Reply):
                    await self.push(str(line))
                    continue
                await self._dispatch(line)
            except ConnectionError:
                self._log.debug("connection lost")
                self._close()
                return
            except TLSSetupException as exc:
                self._log.info("TLS handshake failed: %s", exc.__cause__ or exc)
                self._close()
                # The TLS layer never connected us, so it will not report the loss either
                # (aiosmtpd does the same): release the connection's slot ourselves.
                self.connection_lost(exc)
                return
            except Exception:
                self._log.exception("internal error")
                await self.push(str(replies.LOCAL_ERROR))
                self._new_envelope()

    async def _dispatch(self, line: bytes) -> None:
        parsed = parse_command(line)
        if isinstance(parsed, Reply):
            await self.reply(parsed)
            return
        command, arg = parsed.verb, parsed.arg
        method = self.command(command)
        if method is None:
            await self.push(
                str(replies.COMMAND_UNRECOGNIZED.with_text(f'Command "{command}" not recognized'))
            )
            return
        self._log.debug(">> %s", command)
        # Time to carry the command out (deliveries, DNS); reading input sets its own deadline.
        self.arm_deadline(self._cfg.command_timeout_s)
        await method(arg)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _watch_stopping(self) -> None:
        """`serve` is stopping: idle sessions get 421 now, busy ones after their reply."""
        await self._ctx.stopping.wait()
        if self._waiting_for_command and self.transport is not None:
            self.write_now(str(replies.SERVICE_UNAVAILABLE).encode("ascii") + b"\r\n")
            self.transport.close()
        else:
            self._close_after_reply = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._ticket is not None:
            self._limiter.release_connection(self._ticket)
            self._ticket = None
        if self.on_closed is not None:
            on_closed, self.on_closed = self.on_closed, None
            on_closed()
        super().connection_lost(error)

    # -- commands --------------------------------------------------------------------------------
    async def smtp_EHLO(self, hostname: str | None) -> None:  # noqa: N802
        await self._helo(hostname or "", extended=True)

    async def smtp_HELO(self, hostname: str | None) -> None:  # noqa: N802
        await self._helo(hostname or "", extended=False)

    async def _helo(self, name: str, *, extended: bool) -> None:
        refusal = check_helo(name, reject_invalid=self._cfg.reject_invalid_helo)
        if refusal is not None:
            await self.reply(refusal)
            return
        session = self.mx_session()
        self._new_envelope()
        session.extended_smtp = extended
        session.host_name = name
        if not extended:
            await self.push(f"250 {self.hostname}")
            return
        lines = [self.hostname, *self._ehlo_keywords()]
        await self._push_raw(
            "\r\n".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}" for i, x in enumerate(lines))
        )

    def _ehlo_keywords(self) -> list[str]:
        """The EHLO extensions; the submission listener (smtp.submission) adds AUTH."""
        keywords = [
            f"SIZE {self.data_size_limit}",
            "8BITMIME",
            "SMTPUTF8",
            "PIPELINING",
            "CHUNKING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_context is not None and not self.is_tls_started():
            keywords.append("STARTTLS")
        return keywords

    async def smtp_AUTH(self, arg: str | None) -> None:  # noqa: N802
        await self.reply(replies.AUTH_NOT_HERE)

    async def smtp_STARTTLS(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: STARTTLS"))
            return
        if self.is_tls_started():
            await self.reply(replies.BAD_SEQUENCE.with_text("TLS already active"))
            return
        if self.tls_context is None:
            await self.reply(replies.TLS_NOT_AVAILABLE)
            return
        # RFC 3207 §4.2 / CVE-2011-0411: nothing the client pipelined after STARTTLS may be
        # taken as a command inside TLS.
        self._inbuf.clear()
        await super().smtp_STARTTLS(arg)  # "220 2.0.0" then the handshake
        self._new_envelope()
        session = self.mx_session()
        session.host_name = None  # RFC 3207 §4.2: the client must EHLO again
        ssl_object = self.transport.get_extra_info("ssl_object") if self.transport else None
        if isinstance(ssl_object, ssl.SSLObject):
            session.tls_version = ssl_object.version()
            cipher = ssl_object.cipher()
            if cipher is not None:
                session.tls_cipher, session.tls_bits = cipher[0], cipher[2]
        self._log.debug("TLS established: %s %s", session.tls_version, session.tls_cipher)
