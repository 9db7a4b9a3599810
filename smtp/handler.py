"""aiosmtpd-side hooks of the MX: look facts up, ask `smtp.policy`, hand mail to delivery.

Translation only: `handle_RCPT` gathers what `check_recipient` needs (hosted domain, the
mailboxes `Accounts.resolve` gives, their quota) and returns its reply; `deliver` runs the
loop check, the inbound `Verifier` seam (`smtp.verdict`) and `delivery.local`, and maps
their outcomes to replies. Anything unexpected while accepting mail is 451 4.3.0, never a 5xx.
Blocking work (SQLite, Maildir scans, fsync) runs in worker threads, off the event loop;
a recipient looked up before is answered on the loop from a cache that the account database's
`data_version` invalidates (plus the maildirsize read the quota needs, which is small).
Delivery borrows no thread per message: `LocalDelivery.deliver_async` hands each copy to the
store's group commit (delivery/commit.py), whose own thread converts, writes, fsyncs and renames
every delivery queued meanwhile, and we await its future; a thread hop per message cost about
half a millisecond of CPU in GIL hand-offs, and asyncio's 6 default threads capped a commit at 6.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from aiosmtpd.smtp import Envelope, Session
from mailstack.delivery import autoreply
from mailstack.delivery.local import LocalDelivery
from mailstack.delivery.services import ServerContext
from mailstack.delivery.srs import is_srs
from mailstack.delivery.store import QuotaExceededError
from mailstack.delivery.trace import TraceInfo, count_received, protocol_name, received_field
from mailstack.smtp import replies
from mailstack.smtp.address import Address, AddressError
from mailstack.smtp.forwarding import forward_sender, reverse_recipient, srs_codec, srs_refused
from mailstack.smtp.framing import DataError, LineEndings
from mailstack.smtp.policy import RecipientFacts, check_received_count, check_recipient
from mailstack.smtp.replies import Reply
from mailstack.smtp.verdict import (
    DELIVER,
    Disposition,
    EnvelopeInfo,
    SessionInfo,
    Verifier,
    accept_all,
)

log = logging.getLogger(__name__)

# count_received looks at no more than the first MB (smtp/headers.py).
_HEADER_SCAN_BYTES = 1024 * 1024


class MxSession(Session):
    """aiosmtpd's Session plus what the MX tracks per connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.connection_id = ""
        self.peer_ip = ""
        self.peer_port = 0
        self.errors = 0
        self.blocklisted_by: str | None = None
        self.tls_version: str | None = None
        self.tls_cipher: str | None = None
        self.tls_bits: int | None = None
        self.transactions = 0

    def inherit(self, old: MxSession) -> None:
        """After STARTTLS aiosmtpd makes a new Session; the connection's facts carry over."""
        self.connection_id = old.connection_id
        self.peer_ip, self.peer_port = old.peer_ip, old.peer_port
        self.errors = old.errors
        self.blocklisted_by = old.blocklisted_by
        self.transactions = old.transactions

    def info(self) -> SessionInfo:
        return SessionInfo(
            connection_id=self.connection_id,
            peer_ip=self.peer_ip,
            peer_port=self.peer_port,
            helo=self.host_name or "",
            is_esmtp=bool(self.extended_smtp),
            tls_version=self.tls_version,
            tls_cipher=self.tls_cipher,
            authenticated_as=None,
        )


class MxEnvelope(Envelope):
    """aiosmtpd's Envelope plus BDAT state and each recipient's resolved mailboxes."""

    def __init__(self) -> None:
        super().__init__()
        self.body_8bit = False
        self.mailboxes: dict[str, tuple[str, ...]] = {}  # accepted rcpt -> local mailboxes
        self.foreign: list[str] = []  # addresses for the outbound queue (alias forwards, ...)
        self.bdat_started = False
        self.bdat_chunks: list[bytes] = []
        self.bdat_size = 0
        self.bdat_error: DataError | None = None
        self.bdat_endings = LineEndings()  # bare <CR>/<LF> across the chunks

    def info(self) -> EnvelopeInfo:
        return EnvelopeInfo(
            mail_from=self.mail_from or "",
            rcpt_tos=tuple(self.rcpt_tos),
            smtp_utf8=bool(self.smtp_utf8),
            body_8bit=self.body_8bit,
        )


class _Routes(NamedTuple):
    """Where mail for one address goes, as the account database says (the cached part)."""

    hosted: bool
    mailboxes: tuple[str, ...]
    forwards: tuple[str, ...]
    quotas: dict[str, int]  # mailbox -> quota in bytes (store.quota_of), for RCPT's check

    def facts(self, over_quota: tuple[str, ...]) -> RecipientFacts:
        return RecipientFacts(
            is_hosted_domain=self.hosted,
            mailboxes=self.mailboxes,
            forwards=self.forwards,
            over_quota=over_quota,
        )


_ROUTE_CACHE_MAX = 10_000  # recipients remembered; a flood of random addresses just clears it


class MxHandler:
    """Shared by every session of one listener."""

    def __init__(self, ctx: ServerContext, verify: Verifier) -> None:
        self._ctx = ctx
        self._verify = verify
        self._delivery = LocalDelivery(ctx.accounts, ctx.store)
        # address -> (hosted domain?, mailboxes, forwards, quota per mailbox), valid while the
        # account database's data_version stays what it was when they were read. A hit answers
        # RCPT on the loop, without a hop into a worker thread (most RCPTs under load).
        self._routes: dict[str, _Routes] = {}
        self._routes_version: int | None = None
        self._srs = srs_codec(ctx.config, ctx.paths)  # None: [smtp] srs is off

    # -- RCPT ----------------------------------------------------------------------------------
    def _lookup_routes(self, address: Address) -> _Routes:
        """Blocking SQLite lookups for one recipient: hosted domain, mailboxes, quotas."""
        if address.domain not in self._ctx.hosted_domains():
            return _Routes(False, (), (), {})
        resolution = self._ctx.accounts.resolve(str(address))
        quotas = {m: self._ctx.store.quota_of(m) for m in resolution.mailboxes}
        return _Routes(True, resolution.mailboxes, resolution.forwards, quotas)

    def _over_quota(self, quotas: dict[str, int], *, blocking: bool) -> tuple[str, ...] | None:
        """Mailboxes already full; None when that needs a recount and `blocking` is False."""
        full = []
        for mailbox, quota in quotas.items():
            is_full = self._ctx.store.is_full(mailbox, blocking=blocking, limit=quota)
            if is_full is None:
                return None
            if is_full:
                full.append(mailbox)
        return tuple(full)

    def _lookup_all(self, address: Address) -> tuple[_Routes, tuple[str, ...]]:
        """Routes and full mailboxes, blocking: for a worker thread."""
        routes = self._lookup_routes(address)
        return routes, self._over_quota(routes.quotas, blocking=True) or ()

    def _cached_facts(self, address: Address) -> RecipientFacts | None:
        version = self._ctx.accounts.data_version()
        if version != self._routes_version:
            self._routes.clear()
            self._routes_version = version
            return None
        routes = self._routes.get(str(address))
        if routes is None:
            return None
        over = self._over_quota(routes.quotas, blocking=False)
        return None if over is None else routes.facts(over)

    async def _recipient(self, address: Address) -> RecipientFacts:
        """What `check_recipient` needs about `address`."""
        try:
            cached = self._cached_facts(address)
        except Exception:  # the database or a maildirsize unreadable: the thread path says why
            log.debug("route cache lookup failed", exc_info=True)
            cached = None
        if cached is not None:
            return cached
        version = self._routes_version
        routes, over = await asyncio.to_thread(self._lookup_all, address)
        # Cached only if no change was seen meanwhile: then `version` is older than the data.
        if version is not None and version == self._routes_version:
            if len(self._routes) >= _ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[str(address)] = routes
        return routes.facts(over)

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook name)
        self,
        server: Any,
        session: MxSession,
        envelope: MxEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            rcpt = Address.parse(address)
        except AddressError:
            return str(replies.BAD_ADDRESS)
        if session.blocklisted_by is not None:
            facts = RecipientFacts(is_hosted_domain=False, mailboxes=())
        elif self._srs is not None and is_srs(rcpt.local):
            srs = await self._srs_recipient(rcpt)
            if isinstance(srs, Reply):
                return str(srs)
            facts = srs
        else:
            facts = await self._recipient(rcpt)
        reply = check_recipient(
            facts,
            authenticated=False,
            accepted_so_far=len(envelope.rcpt_tos),
            max_recipients=self._ctx.config.smtp.max_recipients,
            blocklisted_by=session.blocklisted_by,
            peer_ip=session.peer_ip,
            can_forward=self._ctx.queue is not None,
        )
        if reply.is_positive:
            # Once a hook exists aiosmtpd leaves the bookkeeping to us.
            envelope.rcpt_tos.append(address)
            envelope.mailboxes[address] = facts.mailboxes
            envelope.foreign.extend(f for f in facts.forwards if f not in envelope.foreign)
        return str(reply)

    async def _srs_recipient(self, rcpt: Address) -> RecipientFacts | Reply:
        """An SRS address (smtp/forwarding.py): the facts of the address it stands for, or
        the refusal of a forged or expired one of ours."""
        if self._srs is None:
            raise RuntimeError("SRS is off")
        hosted = await asyncio.to_thread(self._ctx.hosted_domains)
        if rcpt.domain not in hosted:
            return RecipientFacts(is_hosted_domain=False, mailboxes=())  # relay: refused
        original = reverse_recipient(self._srs, str(rcpt), time.time())
        if isinstance(original, Reply):
            return original
        try:
            target = Address.parse(original)
        except AddressError:
            return srs_refused("malformed original address")
        if target.domain in hosted:
            return await self._recipient(target)
        return RecipientFacts(is_hosted_domain=True, mailboxes=(), forwards=(original,))

    async def _forward_sender(self, mail_from: str) -> str:
        """The envelope sender of what aliases forward outside (SRS when on)."""
        if self._srs is None or not mail_from:
            return mail_from
        hosted = await asyncio.to_thread(self._ctx.hosted_domains)
        return forward_sender(self._srs, mail_from, hosted, time.time())

    # -- DATA / BDAT LAST ----------------------------------------------------------------------
    async def deliver(
        self, session: MxSession, envelope: MxEnvelope, parts: Sequence[bytes]
    ) -> Reply:
        """Check, verify and store a received message (in the pieces it arrived in, never
        joined on the way to the store unless a verifier needs it whole); the reply to DATA or
        BDAT LAST."""
        loop_reply = check_received_count(
            count_received(_leading(parts, _HEADER_SCAN_BYTES)),
            self._ctx.config.smtp.max_received_headers,
        )
        if loop_reply is not None:
            return loop_reply
        content: bytes | Sequence[bytes] = parts
        try:
            if self._verify is accept_all:
                verdict = DELIVER
            else:
                # DKIM needs the message whole; the join (GIL held) at least not on the loop.
                whole = await asyncio.to_thread(b"".join, parts)
                content = whole
                verdict = await self._verify(session.info(), envelope.info(), whole)
        except Exception:
            log.exception("[%s] inbound verification failed", session.connection_id)
            return replies.LOCAL_ERROR
        if (refusal := verdict.effective_reply) is not None:
            return refusal
        if verdict.message is not None:
            content = verdict.message
        trace = next_transaction_trace(
            session, envelope, self._ctx.config.server.hostname, authenticated=False
        )
        queue_id = trace.queue_id
        fields = [*verdict.header_lines, received_field(trace, when=datetime.now(UTC))]
        folder = "Junk" if verdict.disposition is Disposition.JUNK else "INBOX"
        recipients = [(r, envelope.mailboxes.get(r, ())) for r in envelope.rcpt_tos]
        pieces = [content] if isinstance(content, bytes) else content
        delivered = None
        try:
            # Resolves once every copy is fsynced and in place: only then may we answer 250.
            delivered = await self._delivery.deliver_async(
                mail_from=envelope.mail_from or "",
                recipients=recipients,
                message=pieces,
                prefix_fields=fields,
                folder=folder,
            )
            if envelope.foreign:  # aliases forwarding outside: as received, not signed by us
                sender = await self._forward_sender(envelope.mail_from or "")
                qid = await self._enqueue(sender, envelope.foreign, fields, pieces, sign=False)
                log.info("[%s] %s forwarded as %s", session.connection_id, queue_id, qid)
                queue_id = qid  # the id `mailstack queue list` shows for it
        except QuotaExceededError:
            return replies.OVER_QUOTA
        except Exception:
            log.exception("[%s] delivery failed", session.connection_id)
            if delivered is not None and delivered.refs:  # all or nothing: the client retries
                await asyncio.shield(asyncio.to_thread(self._delivery.take_back, delivered.refs))
            return replies.LOCAL_ERROR
        if folder == "INBOX":  # junk gets no auto-reply: its sender is likely forged
            autoreply.schedule(
                self._ctx.paths,
                self._ctx.queue,
                mail_from=envelope.mail_from or "",
                recipients=recipients,
                header=_leading(pieces, _HEADER_SCAN_BYTES),
            )
        return replies.QUEUED.with_text(f"OK: queued as {queue_id}")

    async def _enqueue(
        self,
        mail_from: str,
        rcpts: list[str],
        prefix_fields: Sequence[str],
        parts: Sequence[bytes],
        *,
        sign: bool,
        user: str = "",
    ) -> str:
        """Hand a message to the outbound queue (durable when this returns); `user`: who
        submitted it (shown by `mailstack queue list`)."""
        queue = self._ctx.queue
        if queue is None:  # RCPT refused such recipients then; `serve` always has a queue
            raise RuntimeError("no outbound queue")
        prefix = "".join(f + "\r\n" for f in prefix_fields).encode("utf-8", "surrogateescape")

        def enqueue() -> str:
            message = b"".join([prefix, *parts])
            return queue.enqueue(mail_from, rcpts, message, sign=sign, user=user)

        return await asyncio.to_thread(enqueue)


def next_transaction_trace(
    session: MxSession, envelope: MxEnvelope, by_host: str, *, authenticated: bool
) -> TraceInfo:
    """Count a new transaction on the session and describe it for the Received: field."""
    session.transactions += 1
    return TraceInfo(
        helo=session.host_name or "",
        peer_ip=session.peer_ip,
        by_host=by_host,
        protocol=protocol_name(
            esmtp=bool(session.extended_smtp),
            tls=session.tls_version is not None,
            authenticated=authenticated,
            smtputf8=bool(envelope.smtp_utf8),
        ),
        queue_id=f"{session.connection_id}.{session.transactions}",
        tls_version=session.tls_version,
        tls_cipher=session.tls_cipher,
        tls_bits=session.tls_bits,
        single_recipient=envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None,
    )


def _leading(parts: Sequence[bytes], limit: int) -> bytes:
    """The first pieces of a message, joined, up to at least `limit` bytes (or all of it)."""
    taken, size = 0, 0
    while taken < len(parts) and size < limit:
        size += len(parts[taken])
        taken += 1
    return parts[0] if taken == 1 else b"".join(parts[:taken])
