"""The MX listener (port 25): aiosmtpd's `SMTP` protocol, extended, via `loop.create_server`.

aiosmtpd gives us STARTTLS plumbing, address parsing and the simple commands (RSET, NOOP,
VRFY, HELP, QUIT). `MxSMTP` replaces its command loop and DATA handling:

- Input is read in chunks into one buffer and cut at CRLF, so pipelined commands (RFC 2920)
  are answered in order, and DATA is framed by `smtp.framing.DataFramer` (bytes.find on
  chunks, not a coroutine step per line: a 25 MB message must not stall IMAP clients).
- CHUNKING / BDAT (RFC 3030), ENHANCEDSTATUSCODES on every reply (RFC 2034, via
  `replies.enhance` for replies aiosmtpd builds), PIPELINING, SIZE (RFC 1870), 8BITMIME
  (RFC 6152), SMTPUTF8 (RFC 6531). No AUTH on this port (submission offers it).
- Limits: 512-octet command lines (RFC 5321 §4.5.3.1.4; MAIL a little more for its
  parameters), 1000-octet text lines, command/DATA timeouts, `max_errors` then 421,
  connections in total and per client address (421 4.7.0 before the greeting), an optional
  DNSBL lookup at connect, refused at RCPT time with 554 5.7.1 as Postfix's reject_rbl_client.
- Bare <LF>/<CR> in DATA: 554 and disconnect (Postfix's smtpd_forbid_bare_newline), so
  `<LF>.<LF>` smuggling cannot split one message into two.
- STARTTLS uses `ctx.tls.current` at connect, so a SIGHUP reload applies to new sessions.

Decisions are `smtp.policy`'s and `smtp.handler`'s; this module moves bytes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import ssl
import weakref
from collections.abc import Callable, Sequence
from email._header_value_parser import get_addr_spec, get_angle_addr
from typing import Any

import dns.asyncresolver
from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException, syntax
from mailstack.delivery.services import ServerContext
from mailstack.smtp import replies
from mailstack.smtp.dnsbl import dnsbl_listing
from mailstack.smtp.framing import DataError, DataFramer
from mailstack.smtp.handler import MxEnvelope, MxHandler, MxSession
from mailstack.smtp.limits import ConnectionLimiter
from mailstack.smtp.policy import check_declared_size, check_helo
from mailstack.smtp.replies import Reply
from mailstack.smtp.verdict import Verifier, accept_all

from mailstack.base.dns import make_async_resolver
from mailstack.base.logs import connection_logger, new_connection_id

log = logging.getLogger(__name__)

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF. MAIL may carry
# SIZE= (RFC 1870 §3: +26), BODY=8BITMIME (+15) and SMTPUTF8 (RFC 6531 §3.4: +10).
MAX_COMMAND_BYTES = 512
MAX_MAIL_COMMAND_BYTES = 512 + 26 + 15 + 10
# How much of an overlong line we read before giving up on it (we keep nothing of it).
_READ_CHUNK = 256 * 1024
_BDAT = re.compile(r"^(\d{1,15})(?:[ \t]+(LAST))?[ \t]*$", re.IGNORECASE)
_COMMAND = re.compile(rb"^[A-Za-z]{1,16}$")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>[ \t]*(.*)\Z",
    re.DOTALL,
)
# Each listener's connection bookkeeping, for `open_connections` (shutdown, tests).
_LIMITERS: weakref.WeakKeyDictionary[asyncio.Server, ConnectionLimiter] = (
    weakref.WeakKeyDictionary()
)


class MxSMTP(SMTP):
    """One SMTP session on the MX port."""

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
        self._resolver = resolver
        self._inbuf = bytearray()
        self._admitted_ip: str | None = None
        self._close_after_reply = False
        self._waiting_for_command = False
        self._connection_id = new_connection_id("s")
        # Called once when the connection is gone (an SMTP worker reports it to the main
        # process, which counts the connection limits).
        self.on_closed: Callable[[], None] | None = None
        self._log: logging.LoggerAdapter[logging.Logger] = connection_logger(
            __name__, self._connection_id, "?"
        )

    # -- aiosmtpd factory hooks ----------------------------------------------------------------
    def _create_session(self) -> Session:
        old = self.session
        session = MxSession(self.loop)
        if isinstance(old, MxSession):  # STARTTLS: same connection, state from before TLS
            session.inherit(old)
        else:
            session.connection_id = self._connection_id
        return session

    def _create_envelope(self) -> Envelope:
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
        self.envelope = self._create_envelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parse, minus the `typing.Protocol` class its version defines on
        every call: class creation on each MAIL and RCPT was ~15% of the loop's busy time."""
        if not arg:
            return "", ""
        if (m := _PLAIN_PATH.match(arg)) is not None and not m[2].startswith("("):
            # Nearly every path is a plain dot-atom <local@domain>: the same answer as the
            # parser below (tests/smtp/test_getaddr.py), without its tokenizer.
            return m[1], m[2]
        parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
        try:
            address, rest = parse(arg)
            addr: str = address.addr_spec
        except Exception:
            # On some garbage ("<", "a@[ ", '"') the stdlib parser fails with IndexError,
            # AttributeError or UnboundLocalError: a syntax error all the same, not a crash.
            return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

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
        self._writer.write(text.encode("utf-8") + b"\r\n")
        await self._writer.drain()

    async def reply(self, reply: Reply) -> None:
        await self.push(str(reply))

    def _timeout_cb(self) -> None:
        # aiosmtpd closes silently; RFC 5321 §4.5.3.2 lets us say why first.
        if self.transport is not None and not self.transport.is_closing():
            self._log.info("timeout")
            self._writer.write(str(replies.TIMEOUT).encode("ascii") + b"\r\n")
            self.transport.close()

    # -- input ---------------------------------------------------------------------------------
    async def _fill(self, timeout_s: float) -> bytes:
        """Read what the client sent next (at least one byte); EOF ends the session."""
        self._reset_timeout(timeout_s)
        data: bytes = await self._reader.read(_READ_CHUNK)
        if not data:
            raise ConnectionResetError("client closed the connection")
        return data

    async def _read_command(self) -> bytes | Reply:
        """The next command line without CRLF, or the Reply for a line we refuse."""
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
                self._inbuf += await self._fill(self._cfg.command_timeout_s)
            finally:
                self._waiting_for_command = False
        if len(line) > MAX_MAIL_COMMAND_BYTES:
            return replies.LINE_TOO_LONG
        if not line.endswith(b"\r\n"):
            return replies.BARE_LF_IN_COMMAND
        line = line[:-2]
        if b"\0" in line:
            return replies.NUL_IN_COMMAND
        if b"\r" in line:
            return replies.BARE_LF_IN_COMMAND.with_text("Bare <CR> in command")
        return line

    async def _read_exact(self, size: int, *, keep: bool) -> list[bytes]:
        """Exactly `size` bytes (a BDAT chunk) in the pieces they came in (never joined: see
        `_finish_message`); with keep=False they are discarded as read."""
        parts: list[bytes] = []
        take = min(size, len(self._inbuf))
        if keep:
            parts.append(bytes(self._inbuf[:take]))
        del self._inbuf[:take]
        remaining = size - take
        while remaining:
            self._reset_timeout(self._cfg.data_timeout_s)
            data = await self._reader.read(min(remaining, _READ_CHUNK))
            if not data:
                raise ConnectionResetError("client closed the connection during BDAT")
            remaining -= len(data)
            if keep:
                parts.append(data)
        return parts

    # -- the session -----------------------------------------------------------------------------
    async def _handle_client(self) -> None:
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
        self._log = connection_logger(__name__, self._connection_id, session.peer_ip)
        refusal = self._limiter.admit(session.peer_ip)
        if refusal is not None:
            self._log.info("refused at connect: %s", refusal)
            await self.push(str(refusal))
            self._close()
            return
        self._admitted_ip = session.peer_ip
        self._log.debug("connected from %s port %d", session.peer_ip, session.peer_port)
        watcher = self.loop.create_task(self._watch_stopping())
        try:
            if self._resolver is not None and self._cfg.dnsbl:
                session.blocklisted_by = await dnsbl_listing(
                    self._resolver, session.peer_ip, self._cfg.dnsbl
                )
                if session.blocklisted_by:
                    self._log.info("client listed in %s", session.blocklisted_by)
            await self._push_raw(f"220 {self.hostname} {self.__ident__}")
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
                self.envelope = self._create_envelope()

    async def _dispatch(self, line: bytes) -> None:
        verb, _, arg_bytes = line.partition(b" ")
        if not _COMMAND.match(verb):
            await self.push(str(replies.COMMAND_UNRECOGNIZED))
            return
        command = verb.decode("ascii").upper()
        method = self._smtp_methods.get(command)
        if method is None:
            await self.push(
                str(replies.COMMAND_UNRECOGNIZED.with_text(f'Command "{command}" not recognized'))
            )
            return
        arg: str | None = None
        if arg_bytes.strip():
            arg = arg_bytes.strip().decode("utf-8", "surrogateescape")
        if len(line) + 2 > MAX_COMMAND_BYTES and command != "MAIL":
            await self.push(str(replies.LINE_TOO_LONG))
            return
        self._log.debug(">> %s", command)
        self._reset_timeout(self._cfg.command_timeout_s)
        await method(arg)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _watch_stopping(self) -> None:
        """`serve` is stopping: idle sessions get 421 now, busy ones after their reply."""
        await self._ctx.stopping.wait()
        if self._waiting_for_command and self.transport is not None:
            self._writer.write(str(replies.SERVICE_UNAVAILABLE).encode("ascii") + b"\r\n")
            self.transport.close()
        else:
            self._close_after_reply = True

    def connection_lost(self, error: Exception | None) -> None:
        if self._admitted_ip is not None:
            self._limiter.release(self._admitted_ip)
            self._admitted_ip = None
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
        if self.tls_context is not None and self._tls_protocol is None:
            keywords.append("STARTTLS")
        return keywords

    async def _sender_refusal(self, address: str) -> Reply | None:
        """A refusal of MAIL FROM's address; the MX takes any (submission checks ownership)."""
        return None

    async def smtp_AUTH(self, arg: str | None) -> None:  # noqa: N802
        await self.reply(replies.AUTH_NOT_HERE)

    async def smtp_STARTTLS(self, arg: str | None) -> None:  # noqa: N802
        if arg:
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: STARTTLS"))
            return
        if self._tls_protocol is not None:
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

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        syntax = replies.SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address> [parameters]")
        rest = self._strip_command_keyword("FROM:", arg) if arg else None
        if rest is None:
            await self.reply(syntax)
            return
        if envelope.mail_from is not None:
            await self.reply(replies.NESTED_MAIL)
            return
        address: str | None
        params_text: str | None
        address, params_text = self._getaddr(rest)
        if address is None:
            await self.reply(replies.BAD_ADDRESS)
            return
        if not address:
            await self.reply(syntax)
            return
        if address == "<>":
            address = ""  # the null reverse-path of bounces (RFC 5321 §4.5.5)
        options = (params_text or "").split()
        params = self._getparams([o.upper() for o in options])
        if params is None:
            await self.reply(syntax)
            return
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            await self.reply(
                replies.PARAM_NOT_IMPLEMENTED.with_text("BODY must be 7BIT or 8BITMIME")
            )
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is not True and smtputf8 is not False:
            await self.reply(replies.SYNTAX_ERROR.with_text("SMTPUTF8 takes no value"))
            return
        size = params.pop("SIZE", None)
        declared: int | None = None
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                await self.reply(syntax)
                return
            declared = int(size)
        if params:
            await self.reply(replies.PARAM_NOT_IMPLEMENTED)
            return
        if not address.isascii() and not smtputf8:
            await self.reply(replies.SMTPUTF8_REQUIRED)
            return
        refusal = check_declared_size(declared, self.data_size_limit or 0)
        if refusal is None:
            refusal = await self._sender_refusal(address)
        if refusal is not None:
            await self.reply(refusal)
            return
        envelope.mail_from = address
        envelope.mail_options = options
        envelope.smtp_utf8 = bool(smtputf8)
        envelope.body_8bit = body == "8BITMIME"
        await self.reply(replies.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        if envelope.mail_from is None:
            await self.reply(replies.NEED_MAIL)
            return
        if envelope.bdat_started:
            await self.reply(replies.BAD_SEQUENCE.with_text("RCPT not allowed during BDAT"))
            return
        syntax = replies.SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>")
        rest = self._strip_command_keyword("TO:", arg) if arg else None
        if rest is None:
            await self.reply(syntax)
            return
        address, params_text = self._getaddr(rest)
        if address is None or address == "<>":
            await self.reply(replies.BAD_ADDRESS)
            return
        if not address:
            await self.reply(syntax)
            return
        if params_text and params_text.strip():
            await self.reply(replies.PARAM_NOT_IMPLEMENTED)
            return
        if not address.isascii() and not envelope.smtp_utf8:
            await self.reply(replies.SMTPUTF8_REQUIRED)
            return
        status = await self.event_handler.handle_RCPT(self, self.session, envelope, address, [])
        if not status.startswith("2"):
            # Refused recipients never reach DATA: log them here (relay probes, dictionary
            # attacks), as Postfix's "NOQUEUE: reject: RCPT" lines.
            self._log.info("from=<%s> rcpt=<%s> refused: %s", envelope.mail_from, address, status)
        await self.push(status)

    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        if arg:
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: DATA"))
            return
        if envelope.bdat_started:
            await self.reply(replies.BAD_SEQUENCE.with_text("DATA not allowed after BDAT"))
            return
        if envelope.mail_from is None:
            await self.reply(replies.NEED_MAIL)
            return
        if not envelope.rcpt_tos:
            await self.reply(replies.NEED_RCPT)
            return
        await self._push_raw("354 End data with <CR><LF>.<CR><LF>")
        framer = DataFramer(max_bytes=self.data_size_limit or 2**62, join=False)
        framer.receive_data(bytes(self._inbuf))
        self._inbuf.clear()
        while (event := framer.next_event()) is None:
            framer.receive_data(await self._fill(self._cfg.data_timeout_s))
        self._inbuf += event.leftover
        if event.error is DataError.BARE_NEWLINE:
            self._log_transaction(envelope, event.size, replies.BARE_NEWLINE)
            await self.reply(replies.BARE_NEWLINE)
            self._close()
            return
        await self._finish_message(envelope, event.parts, event.size, event.error)

    @syntax("BDAT size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:  # noqa: N802
        m = _BDAT.match(arg or "")
        if m is None:
            # RFC 3030 §2: without a valid size we cannot find the next command; give up.
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: BDAT size [LAST]"))
            self._close()
            return
        size, last = int(m[1]), m[2] is not None
        envelope = self.mx_envelope()
        session = self.mx_session()
        refusal: Reply | None = None
        if not session.host_name:
            refusal = replies.NEED_HELO
        elif envelope.mail_from is None:
            refusal = replies.NEED_MAIL
        elif not envelope.rcpt_tos:
            refusal = replies.NEED_RCPT
        if refusal is not None:
            await self._read_exact(size, keep=False)  # the chunk must be consumed regardless
            await self.reply(refusal)
            return
        envelope.bdat_started = True
        limit = self.data_size_limit or 2**62
        keep = envelope.bdat_error is None and envelope.bdat_size + size <= limit
        chunk = await self._read_exact(size, keep=keep)
        envelope.bdat_size += size
        if keep:
            envelope.bdat_chunks.extend(chunk)
        elif envelope.bdat_error is None:
            envelope.bdat_error = DataError.TOO_BIG
            envelope.bdat_chunks.clear()
        if not last:
            if envelope.bdat_error is not None:
                # RFC 3030 §2: an error on a chunk ends the transaction; later chunks get 503.
                await self.reply(replies.MESSAGE_TOO_BIG)
                self._log_transaction(envelope, envelope.bdat_size, replies.MESSAGE_TOO_BIG)
                self._new_envelope()
                return
            await self.reply(replies.chunk_received(size))
            return
        content = tuple(envelope.bdat_chunks)
        envelope.bdat_chunks.clear()
        await self._finish_message(envelope, content, envelope.bdat_size, envelope.bdat_error)

    async def _finish_message(
        self, envelope: MxEnvelope, content: Sequence[bytes], size: int, error: DataError | None
    ) -> None:
        # `content` stays in the pieces it arrived in: joining 25 MB is one C call that holds
        # the GIL for ~20 ms, and four of them finishing together stalled every session.
        if error is DataError.TOO_BIG:
            reply = replies.MESSAGE_TOO_BIG
        elif error is DataError.LINE_TOO_LONG:
            reply = replies.DATA_LINE_TOO_LONG
        else:
            reply = await self.event_handler.deliver(self.session, envelope, content)
        self._log_transaction(envelope, size, reply)
        self._new_envelope()
        await self.reply(reply)

    def _log_transaction(self, envelope: MxEnvelope, size: int, reply: Reply) -> None:
        self._log.info(
            "from=<%s> rcpts=%s size=%d result=%s",
            envelope.mail_from,
            ",".join(f"<{r}>" for r in envelope.rcpt_tos),
            size,
            str(reply).split("\r\n", 1)[0],
        )


def plain_ip(ip: str) -> str:
    """'::ffff:192.0.2.1' -> '192.0.2.1' (a v4 client on a dual-stack socket)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


async def start_smtp(
    ctx: ServerContext, host: str, port: int, *, verify: Verifier | None = None
) -> asyncio.Server:
    """Listen for inbound mail on (host, port), every session in this process.

    `verify` is the inbound-check hook (smtp.verdict); by default SPF/DKIM/DMARC from
    `smtp.inbound_auth.verifier_for(config)`, which honours `smtp.verify_inbound`.
    (`serve` with `smtp.workers` uses mailstack.workers.parent instead, which runs `mx_sessions` in
    worker processes.)
    """
    limiter = ConnectionLimiter(
        ctx.config.smtp.max_connections, ctx.config.smtp.max_connections_per_ip
    )
    factory = mx_sessions(ctx, limiter, verify=verify)
    server = await asyncio.get_running_loop().create_server(factory, host, port)
    register_limiter(server, limiter)
    return server


def mx_sessions(
    ctx: ServerContext, limiter: ConnectionLimiter, *, verify: Verifier | None = None
) -> Callable[[], MxSMTP]:
    """A protocol factory for MX sessions sharing one handler, limiter and resolver."""
    loop = asyncio.get_running_loop()
    if logging.getLogger("mail.log").level == logging.NOTSET:
        # aiosmtpd logs every command at INFO; we log one line per transaction ourselves.
        logging.getLogger("mail.log").setLevel(logging.WARNING)
    handler = MxHandler(ctx, verify or default_verifier(ctx))
    resolver = make_async_resolver(ctx.config.dns) if ctx.config.smtp.dnsbl else None

    def factory() -> MxSMTP:
        return MxSMTP(handler, ctx=ctx, limiter=limiter, resolver=resolver, loop=loop)

    return factory


def register_limiter(server: asyncio.Server, limiter: ConnectionLimiter) -> None:
    """Make `open_connections(server)` count `limiter`'s connections."""
    _LIMITERS[server] = limiter


def default_verifier(ctx: ServerContext) -> Verifier:
    if not ctx.config.smtp.verify_inbound:
        return accept_all
    from mailstack.smtp.inbound_auth import verifier_for  # dkimpy and friends load only when used

    return verifier_for(ctx.config)


def open_connections(server: asyncio.Server) -> int:
    """Sessions of this listener still connected (after `ctx.stopping` they end themselves)."""
    limiter = _LIMITERS.get(server)
    return limiter.total if limiter is not None else 0
