"""The MX listener (port 25): `MxSMTP` sessions (smtp.session) via `loop.create_server`.

`SmtpService` is one listener's service object: it owns the handler (recipient lookups and
delivery, shared by its sessions), the DNSBL resolver and the connection limiter, and answers
how many sessions are still open (shutdown waits for them). `start_smtp` is the `serve` entry
point. With `smtp.workers`, `mailstack.workers` runs `mx_sessions` in worker processes and the
main process's hand-off counts the connections instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mailstack.delivery.services import ServerContext
from mailstack.smtp.aiosmtpd_adapter import quiet_aiosmtpd_log
from mailstack.smtp.handler import MxHandler
from mailstack.smtp.limits import ConnectionLimiter, smtp_limiter
from mailstack.smtp.session import MxSMTP
from mailstack.smtp.verdict import Verifier, accept_all

from mailstack.base.dns import make_async_resolver


class SmtpService:
    """One MX listener: its sessions share this handler, resolver and limiter."""

    def __init__(self, ctx: ServerContext, *, verify: Verifier | None = None) -> None:
        self.ctx = ctx
        self.limiter = smtp_limiter(ctx.config.smtp)
        self._factory = mx_sessions(ctx, self.limiter, verify=verify)

    async def listen(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self._factory, host, port)

    def open_connections(self) -> int:
        """Sessions still connected (after `ctx.stopping` they end themselves)."""
        return self.limiter.total


async def start_smtp(
    ctx: ServerContext, host: str, port: int, *, verify: Verifier | None = None
) -> asyncio.Server:
    """Listen for inbound mail on (host, port), every session in this process.

    `verify` is the inbound-check hook (smtp.verdict); by default SPF/DKIM/DMARC from
    `smtp.inbound_auth.verifier_for(config)`, which honours `smtp.verify_inbound`.
    """
    return await SmtpService(ctx, verify=verify).listen(host, port)


def mx_sessions(
    ctx: ServerContext, limiter: ConnectionLimiter, *, verify: Verifier | None = None
) -> Callable[[], MxSMTP]:
    """A protocol factory for MX sessions sharing one handler, limiter and resolver."""
    loop = asyncio.get_running_loop()
    quiet_aiosmtpd_log()
    handler = MxHandler(ctx, verify or default_verifier(ctx))
    resolver = make_async_resolver(ctx.config.dns) if ctx.config.smtp.dnsbl else None

    def factory() -> MxSMTP:
        return MxSMTP(handler, ctx=ctx, limiter=limiter, resolver=resolver, loop=loop)

    return factory


def default_verifier(ctx: ServerContext) -> Verifier:
    if not ctx.config.smtp.verify_inbound:
        return accept_all
    from mailstack.smtp.inbound_auth import verifier_for  # dkimpy and friends load only when used

    return verifier_for(ctx.config)
