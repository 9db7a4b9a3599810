"""The submission listeners: 587 with STARTTLS (RFC 6409, RFC 3207) and 465 with implicit TLS
(RFC 8314), both with AUTH PLAIN/LOGIN (RFC 4954, `smtp.auth`) and SCRAM-SHA-256 (RFC 7677,
`_auth_scram`), feeding local delivery and the outbound queue.

`SubmissionSMTP` is the MX session (`smtp.session.MxSMTP`: same command loop, framing, BDAT,
limits and enhanced codes) with these differences:

- AUTH is offered and accepted only inside TLS; before STARTTLS, AUTH, MAIL and RCPT get
  `530 5.7.0 Must issue a STARTTLS command first`. MAIL and RCPT need AUTH (530 5.7.0).
- Passwords are checked by the one login path IMAP uses too (`ctx.logins`,
  mailstack/base/login.py: throttle, auth cache, bounded verifier pool): a delay after a few
  failures, `454 4.7.0` while throttled or while the verifier pool is full, `535 5.7.8` for
  bad credentials.
- Sender rule (RFC 6409 §6.1): MAIL FROM must be an address the user owns
  (`Accounts.owns`: the own address, its +details, aliases that reach the user), else
  `553 5.7.1`; `<>` is refused too. After DATA every address in From: must be owned as
  well, else `550 5.7.1` (no From: at all: `550 5.6.0`). Sender: is not checked.
- Recipients in hosted domains are delivered locally exactly as the MX delivers them
  (`MxHandler`'s lookups, `LocalDelivery.deliver_async`); all other recipients of one
  message (and external targets of aliases) go into one `ctx.queue.enqueue`, which signs
  with DKIM. 250 is sent only when both are durable: local copies first, and if the enqueue
  then fails they are taken back, so a retried submission is never delivered twice.
- No inbound SPF/DKIM/DMARC verification and no DNSBL: the client is authenticated.
- The Received field says `with ESMTPSA` (RFC 3848) and names the authenticated user, as
  Postfix's `smtpd_sasl_authenticated_header`. No copy goes to Sent: clients APPEND it.
- Sending limits (`[submission]`, smtp/sendlimits.py): checked at MAIL with the usage then
  (an account over its hourly budget learns it before sending DATA), per message at RCPT,
  and counted atomically when DATA is accepted; refusals are `550 5.7.1` naming the limit.
- Limits (size, recipients, connections in total, per address and per network) are
  `[smtp]`'s, counted per listener (`SubmissionService`); a session that authenticated may
  use the `reserved_for_authenticated` slots that sessions not logged in never take.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import email.utils
import logging
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from aiosmtpd.smtp import Envelope
from mailstack.delivery import autoreply
from mailstack.delivery.services import ServerContext
from mailstack.delivery.store import QuotaExceededError
from mailstack.delivery.trace import TraceInfo, count_received, received_field
from mailstack.smtp import auth, replies
from mailstack.smtp.address import Address, AddressError
from mailstack.smtp.aiosmtpd_adapter import quiet_aiosmtpd_log
from mailstack.smtp.auth import MECHANISMS, SaslError, SaslExchange, decode_response
from mailstack.smtp.handler import (
    MxEnvelope,
    MxHandler,
    MxSession,
    _leading,
    next_transaction_trace,
)
from mailstack.smtp.limits import ConnectionLimiter, smtp_limiter
from mailstack.smtp.policy import (
    AUTH_REQUIRED,
    MUST_STARTTLS,
    check_from_header,
    check_received_count,
    check_resent_from_header,
    check_sender,
    check_submission_recipient,
)
from mailstack.smtp.replies import Reply
from mailstack.smtp.sendlimits import Counted, SendLog, Usage, check_usage
from mailstack.smtp.session import MxSMTP
from mailstack.smtp.verdict import accept_all

from mailstack.base import scram
from mailstack.base.connections import network_of
from mailstack.base.login import LoginResult, Outcome

log = logging.getLogger(__name__)

AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
LOCKED_OUT = Reply(454, "4.7.0", "Too many failed authentication attempts, try again later")
BUSY = Reply(454, "4.7.0", "Too many authentication attempts in progress, try again later")
ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Already authenticated")
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH is not allowed during a mail transaction")
NO_STARTTLS_HERE = Reply(503, "5.5.1", "TLS already active")
SCRAM_MALFORMED = Reply(501, "5.5.2", "Malformed SCRAM message")
# RFC 5802 §6: the client demands channel binding ("p="); we offer no SCRAM-SHA-256-PLUS.
SCRAM_NO_BINDING = Reply(535, "5.7.8", "Channel binding is not offered: use SCRAM-SHA-256")

_HEADER_SCAN_BYTES = 1024 * 1024


class SubmissionEnvelope(MxEnvelope):
    """The MX envelope plus whose transaction it is and where each recipient goes."""

    def __init__(self, user: str | None) -> None:
        super().__init__()
        self.user = user  # the authenticated address, fixed for the envelope's life
        self.network = ""  # the client's network, the sending limits' key
        self.usage = Usage()  # what user and network had sent this hour, seen at MAIL


class SubmissionHandler(MxHandler):
    """Recipients and delivery for authenticated users (shared by a listener's sessions)."""

    def __init__(self, ctx: ServerContext, send_log: SendLog) -> None:
        super().__init__(ctx, accept_all)
        self.send_log = send_log

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: Any,
        session: MxSession,
        envelope: MxEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not isinstance(envelope, SubmissionEnvelope):
            raise TypeError("a submission session has a SubmissionEnvelope")
        try:
            rcpt = Address.parse(address)
        except AddressError:
            return str(replies.BAD_ADDRESS)
        limits = self._ctx.config.submission
        # One more recipient within recipients_per_message and the hourly budget seen at MAIL?
        refusal = check_usage(envelope.usage, limits, len(envelope.rcpt_tos) + 1)
        if refusal is not None:
            log.info("[%s] %s: %s", session.connection_id, envelope.user, refusal)
            return str(refusal)
        facts = await self._recipient(rcpt)
        reply = check_submission_recipient(
            facts,
            accepted_so_far=len(envelope.rcpt_tos),
            max_recipients=self._ctx.config.smtp.max_recipients,
            can_queue=self._ctx.queue is not None,
        )
        if reply.is_positive:
            envelope.rcpt_tos.append(address)
            envelope.mailboxes[address] = facts.mailboxes
            for target in (address,) if not facts.is_hosted_domain else facts.forwards:
                if target not in envelope.foreign:
                    envelope.foreign.append(target)
        return str(reply)

    def _authors_owned(self, user: str, header: bytes) -> tuple[list[bool], list[bool]]:
        """Blocking: for each address in From:, then in Resent-From:, whether `user` owns it."""
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(header)

        def owned(name: str) -> list[bool]:
            fields = [str(v) for v in parsed.get_all(name, [])]
            addresses = [a for _name, a in email.utils.getaddresses(fields) if a]
            return [self._ctx.accounts.owns(user, a) for a in addresses]

        return owned("From"), owned("Resent-From")

    async def deliver(
        self, session: MxSession, envelope: MxEnvelope, parts: Sequence[bytes]
    ) -> Reply:
        if not isinstance(envelope, SubmissionEnvelope) or envelope.user is None:
            raise TypeError("a submission transaction has an authenticated user")
        user = envelope.user
        head = _leading(parts, _HEADER_SCAN_BYTES)
        loop_reply = check_received_count(
            count_received(head), self._ctx.config.smtp.max_received_headers
        )
        if loop_reply is not None:
            return loop_reply
        header, limits = _header_section(head), self._ctx.config.submission

        def check_and_count() -> Reply | Counted:
            """One trip to a thread: From:/Resent-From: ownership, then the sending limits."""
            from_owned, resent_owned = self._authors_owned(user, header)
            refusal = check_from_header(from_owned) or check_resent_from_header(resent_owned)
            if refusal is not None:
                return refusal  # refused before the queue: nothing is signed or counted
            rcpts = len(envelope.rcpt_tos)
            return self.send_log.reserve(user, envelope.network, rcpts, limits)

        try:
            counted = await asyncio.to_thread(check_and_count)
        except Exception:
            log.exception("[%s] From: check or sending limits failed", session.connection_id)
            return replies.LOCAL_ERROR
        if isinstance(counted, Reply):
            log.info("[%s] %s: %s", session.connection_id, user, counted)
            return counted
        reply = await self._submit(session, envelope, user, parts, head)
        if not reply.is_positive:  # not sent after all: not counted either
            await asyncio.shield(asyncio.to_thread(self.send_log.release, counted))
        return reply

    async def _submit(
        self,
        session: MxSession,
        envelope: SubmissionEnvelope,
        user: str,
        parts: Sequence[bytes],
        head: bytes,
    ) -> Reply:
        trace = next_transaction_trace(
            session, envelope, self._ctx.config.server.hostname, authenticated=True
        )
        queue_id = trace.queue_id
        received = _authenticated_received(trace, user)
        local = [(r, envelope.mailboxes.get(r, ())) for r in envelope.rcpt_tos]
        local = [(r, boxes) for r, boxes in local if boxes]
        mail_from = envelope.mail_from or ""
        delivered = None
        try:
            if local:
                delivered = await self._delivery.deliver_async(
                    mail_from=mail_from,
                    recipients=local,
                    message=parts,
                    prefix_fields=[received],
                )
            if envelope.foreign:
                qid = await self._enqueue(
                    mail_from, envelope.foreign, [received], parts, sign=True, user=user
                )
                queue_id = qid  # the id `mailstack queue list` shows for it
        except QuotaExceededError:
            return replies.OVER_QUOTA
        except Exception:
            log.exception("[%s] submission failed", session.connection_id)
            if delivered is not None and delivered.refs:
                await asyncio.shield(asyncio.to_thread(self._delivery.take_back, delivered.refs))
            return replies.LOCAL_ERROR
        if local:  # our users' auto-replies answer mail from our users too
            autoreply.schedule(
                self._ctx.paths, self._ctx.queue, mail_from=mail_from, recipients=local, header=head
            )
        return replies.QUEUED.with_text(f"OK: queued as {queue_id}")


def _header_section(head: bytes) -> bytes:
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 2]


def _authenticated_received(info: TraceInfo, user: str) -> str:
    """`received_field` with the authenticated user in a comment below its first line."""
    first, _, rest = received_field(info, when=datetime.now(UTC)).partition("\r\n")
    return f"{first}\r\n\t(Authenticated sender: {user})\r\n{rest}"


class SubmissionSMTP(MxSMTP):
    """One session on a submission port (STARTTLS or, with implicit_tls, TLS from the start)."""

    def __init__(self, handler: SubmissionHandler, *, implicit_tls: bool, **kwargs: Any) -> None:
        super().__init__(handler, resolver=None, **kwargs)
        self._implicit_tls = implicit_tls
        self._auth_user: str | None = None
        self._send_log: SendLog | None = handler.send_log
        if implicit_tls:
            self.tls_context = None  # the listener did the handshake; no STARTTLS inside it

    def new_envelope(self) -> Envelope:
        return SubmissionEnvelope(self._auth_user)

    def _tls_active(self) -> bool:
        return self._implicit_tls or self.is_tls_started()

    async def _serve_session(self) -> None:
        if self._implicit_tls and self.transport is not None:
            ssl_object = self.transport.get_extra_info("ssl_object")
            if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
                session = self.mx_session()
                session.tls_version = ssl_object.version()
                cipher = ssl_object.cipher()
                if cipher is not None:
                    session.tls_cipher, session.tls_bits = cipher[0], cipher[2]
        await super()._serve_session()

    def _ehlo_keywords(self) -> list[str]:
        keywords = super()._ehlo_keywords()
        if self._tls_active():
            keywords.append("AUTH " + " ".join(MECHANISMS))
        return keywords

    async def _sender_refusal(self, address: str) -> Reply | None:
        user = self._auth_user
        if user is None:
            return AUTH_REQUIRED
        envelope = self.mx_envelope()
        send_log = self._send_log
        if not isinstance(envelope, SubmissionEnvelope) or send_log is None:
            raise TypeError("a submission session has a SubmissionEnvelope and a send log")
        network = network_of(self.mx_session().peer_ip)

        def look_up() -> tuple[bool, Usage]:  # one trip to a thread for both
            owned = bool(address) and self._ctx.accounts.owns(user, address)
            return owned, send_log.usage(user, network)

        try:
            owned, usage = await asyncio.to_thread(look_up)
        except Exception:
            self._log.exception("sender or sending limits unreadable")
            return replies.LOCAL_ERROR
        refusal = check_sender(address, owned=owned)
        if refusal is not None:
            self._log.info("%s may not send as <%s>", user, address)
            return refusal
        envelope.network, envelope.usage = network, usage
        refusal = check_usage(envelope.usage, self._ctx.config.submission, 1)
        if refusal is not None:
            self._log.info("%s: %s", user, refusal)
        return refusal

    def _transaction_note(self, envelope: MxEnvelope) -> str:
        # The queue id is in the result and the user here: one line per submitted message.
        return f" user={self._auth_user}" if self._auth_user else ""

    async def _refuse_unauthenticated(self) -> bool:
        if not self._tls_active():
            await self.reply(MUST_STARTTLS)
            return True
        if self._auth_user is None:
            await self.reply(AUTH_REQUIRED)
            return True
        return False

    async def smtp_STARTTLS(self, arg: str | None) -> None:  # noqa: N802
        if self._implicit_tls:
            await self.reply(NO_STARTTLS_HERE)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if not await self._refuse_unauthenticated():
            await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if not await self._refuse_unauthenticated():
            await super().smtp_RCPT(arg)

    async def smtp_AUTH(self, arg: str | None) -> None:  # noqa: N802
        if not self._tls_active():
            await self.reply(MUST_STARTTLS)
            return
        if await self.check_helo_needed():
            return
        if self._auth_user is not None:
            await self.reply(ALREADY_AUTHENTICATED)
            return
        if self.mx_envelope().mail_from is not None:
            await self.reply(AUTH_IN_TRANSACTION)
            return
        mechanism, _, initial = (arg or "").strip().partition(" ")
        if not mechanism:
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: AUTH mechanism [response]"))
            return
        if mechanism.upper() == scram.MECHANISM:
            await self._auth_scram(initial.strip() or None)
            return
        try:
            exchange = SaslExchange(mechanism, initial.strip() or None)
            while exchange.credentials is None:
                await self._push_raw(f"334 {exchange.challenge}")
                line = await self._read_command()
                if isinstance(line, Reply):
                    await self.reply(line)
                    return
                exchange.feed(line.decode("ascii", "replace"))
        except SaslError as exc:
            await self.reply(exc.reply)
            return
        await self._check_password(exchange.credentials.username, exchange.credentials.password)

    async def _auth_scram(self, initial: str | None) -> None:
        """RFC 5802 §5 over RFC 4954: client-first (initial response or after "334 "), "334"
        server-first, client-final, then "334" server-final answered by an empty line (SMTP
        has no additional data with success), then 235. Same login path as PLAIN."""
        login = self._ctx.logins.scram(self.mx_session().peer_ip, log=self._log)
        try:
            message = decode_response(initial) if initial is not None else await self._sasl(b"")
            if message is None:
                return
            started = await login.start(message)
            if isinstance(started, LoginResult):
                await self._login_result(started)
                return
            if (final := await self._sasl(started)) is None:
                return
            result = await login.finish(final)
            if result.outcome is Outcome.OK and login.server_final is not None:
                ack = await self._sasl(login.server_final)
                if ack is None:
                    return
                if ack:  # RFC 5802 §5: nothing follows the server-final message
                    await self.reply(SCRAM_MALFORMED)
                    return
            await self._login_result(result)
        except SaslError as exc:
            await self.reply(exc.reply)
        except scram.ScramProxyError:
            await self.reply(auth.NO_PROXY)
        except scram.ScramBindingError:
            await self.reply(SCRAM_NO_BINDING)
        except scram.ScramSyntaxError:
            await self.reply(SCRAM_MALFORMED)
        finally:
            login.abandon()  # the client went away or cancelled mid-way: not a guess

    async def _sasl(self, challenge: bytes) -> bytes | None:
        """Send one 334 challenge and decode the answer; None when a reply was sent instead."""
        await self._push_raw("334 " + base64.b64encode(challenge).decode("ascii"))
        line = await self._read_command()
        if isinstance(line, Reply):
            await self.reply(line)
            return None
        return decode_response(line.decode("ascii", "replace"))

    async def _check_password(self, username: str, password: str) -> None:
        # The one login path (mailstack/base/login.py): canonical name, throttle, verify, log.
        session = self.mx_session()
        result = await self._ctx.logins.login(username, password, session.peer_ip, log=self._log)
        await self._login_result(result)

    async def _login_result(self, result: LoginResult) -> None:
        if result.outcome is Outcome.THROTTLED:
            await self.reply(LOCKED_OUT)
            return
        if result.outcome is Outcome.BUSY:
            await self.reply(BUSY)
            return
        if result.address is None:
            await self.reply(AUTH_FAILED)
            return
        self._auth_user = result.address
        if self._ticket is not None:
            self._limiter.authenticated(self._ticket)  # out of the pre-auth counts
        if self.on_authenticated is not None:
            self.on_authenticated()  # a worker's session: the main process counts it too
        self._new_envelope()  # the envelope now carries the user
        await self.reply(AUTH_OK)


class SubmissionService:
    """One submission listener: its sessions share this handler and connection limiter."""

    def __init__(
        self, ctx: ServerContext, *, implicit_tls: bool, limiter: ConnectionLimiter | None = None
    ) -> None:
        self.ctx = ctx
        self.implicit_tls = implicit_tls
        # Logged-in sessions leave the pre-auth counts and may use the reserved slots. (In an
        # SMTP worker the main process counts, and `limiter` admits every connection.)
        self.limiter = limiter or smtp_limiter(ctx.config.smtp, authenticated_reserve=True)
        # Both listeners' logs are the one file: each process and listener counts together.
        self.send_log = SendLog(ctx.paths.send_limits_db)
        self._handler = SubmissionHandler(ctx, self.send_log)

    def sessions(self) -> Callable[[], SubmissionSMTP]:
        """A protocol factory for this listener's sessions (call on the serving loop)."""
        loop = asyncio.get_running_loop()
        quiet_aiosmtpd_log()

        def factory() -> SubmissionSMTP:
            return SubmissionSMTP(
                self._handler,
                implicit_tls=self.implicit_tls,
                ctx=self.ctx,
                limiter=self.limiter,
                loop=loop,
            )

        return factory

    def tls_context(self) -> ssl.SSLContext | None:
        """What accepted connections are wrapped in before the session (port 465)."""
        return self.ctx.tls.listening_context() if self.implicit_tls else None

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.sessions(), host, port, ssl=self.tls_context())

    def open_connections(self) -> int:
        """Sessions of this listener still connected."""
        return self.limiter.total


async def start_submission(ctx: ServerContext, host: str, port: int) -> asyncio.Server:
    """Listen on (host, port) for submission with STARTTLS (port 587)."""
    return await SubmissionService(ctx, implicit_tls=False).listen(host, port)


async def start_submissions(ctx: ServerContext, host: str, port: int) -> asyncio.Server:
    """Listen on (host, port) for submission over implicit TLS (port 465, RFC 8314 §3.3)."""
    return await SubmissionService(ctx, implicit_tls=True).listen(host, port)
