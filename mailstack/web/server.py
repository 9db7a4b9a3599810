"""The `listen.https` and `listen.http` listeners: aiohttp applications on `serve`'s loop.

Each listener is a plain `loop.create_server` over aiohttp's protocol factory, so it is an
`asyncio.Server` like every other service's and `mailstack.app` binds, lists and closes it the
same way. https takes its TLS context from the shared TlsProvider (SNI callback: a SIGHUP or an
ACME renewal applies to the next handshake), and answers ACME TLS-ALPN-01 handshakes for names
with a pending challenge from the same callback (mailstack.web.alpn). When serve begins to stop,
open keep-alive connections are closed after the requests in flight (aiohttp's shutdown with a
deadline).
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from mailstack.delivery.services import ServerContext
from mailstack.init import hosted_domains
from mailstack.web.alpn import AlpnResponder, challenge_dir
from mailstack.web.app import make_app, make_http_app
from mailstack.web.deps import WebDeps

log = logging.getLogger(__name__)

SHUTDOWN_S = 10.0  # how long requests in flight may take once serve stops


class WebService:
    """The two web listeners of one `serve`; each application is built once, on first use."""

    def __init__(self, ctx: ServerContext) -> None:
        self.deps = WebDeps.from_context(ctx)
        self._runners: dict[str, web.AppRunner] = {}
        self._closer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self.https_ports: list[int] = []  # as bound, for the http listener's redirects

    async def _handler(self, kind: str) -> web.Server:
        """aiohttp's protocol factory for `kind` ("https" or "http")."""
        if (runner := self._runners.get(kind)) is None:
            app = (
                make_app(self.deps)
                if kind == "https"
                else make_http_app(self.deps, self.https_ports)
            )
            # No access log: one INFO line per request would drown the mail log.
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_S)
            await runner.setup()
            self._runners[kind] = runner
            if self._closer is None:
                self._closer = asyncio.create_task(self._close_when_stopping(), name="web-stop")
            if self._renewer is None:
                self._renewer = asyncio.create_task(self._renew(), name="acme-renewal")
        if runner.server is None:  # only before setup(), which ran above
            raise RuntimeError(f"web {kind} runner is not set up")
        return runner.server

    async def _renew(self) -> None:
        """ACME renewal runs beside the web listeners (HTTP-01 needs the http one, TLS-ALPN-01
        the https one)."""
        # Imported here: the acme library (requests, josepy) stays out of SMTP worker processes,
        # which import mailstack.app but run no web listener.
        from mailstack.web.acme import reload_by_signal, renew_forever

        deps = self.deps
        await renew_forever(
            deps.paths,
            deps.config,
            lambda: hosted_domains(deps.config, deps.accounts),
            deps.stopping,
            reload_by_signal,
        )

    async def _close_when_stopping(self) -> None:
        await self.deps.stopping.wait()
        for runner in self._runners.values():
            await runner.cleanup()

    async def start_https(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        handler = await self._handler("https")
        # RFC 8737: pending TLS-ALPN-01 names first (`tls acme` or our renewal wrote them).
        tls = AlpnResponder(challenge_dir(self.deps.paths)).wrap(ctx.tls.listening_context())
        server = await asyncio.get_running_loop().create_server(handler, host, port, ssl=tls)
        self.https_ports += [sock.getsockname()[1] for sock in server.sockets]
        return server

    async def start_http(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        handler = await self._handler("http")
        return await asyncio.get_running_loop().create_server(handler, host, port)
