"""The aiohttp applications of the web side.

`make_app` (https): client autoconfiguration, the MTA-STS policy, then the status and
self-service pages if `mailstack.web.pages` is installed (it registers its own routes with
`setup(app, deps)`). `make_http_app` (plain http): ACME HTTP-01 challenges (RFC 8555 §8.3),
answered from files under acme/challenges/ so that `mailstack tls acme` run beside a live
`serve` needs no port of its own; everything else is redirected to https.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

from aiohttp import web

from mailstack.web.deps import DEPS, WebDeps

PAGES_MODULE = "mailstack.web.pages"

# RFC 8555 §8.3: the token is base64url (RFC 4648 §5) without padding; nothing else names a file.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,256}")
# The ports the https listeners are bound to (port 0 in the config: known only once bound).
HTTPS_PORTS = web.AppKey("mailstack.https_ports", list[int])
# Where the HTTP-01 key authorizations are (acme/challenges/; mailstack.web.acme writes them).
CHALLENGES = web.AppKey("mailstack.acme_challenges", Path)


def make_app(deps: WebDeps) -> web.Application:
    from mailstack.web import autoconfig, mtasts  # their routes, before the pages' own

    app = web.Application()
    app[DEPS] = deps
    autoconfig.add_routes(app)
    mtasts.add_routes(app)
    if importlib.util.find_spec(PAGES_MODULE) is not None:
        importlib.import_module(PAGES_MODULE).setup(app, deps)
    return app


def make_http_app(deps: WebDeps, https_ports: list[int] | None = None) -> web.Application:
    """`https_ports`: filled in as the https listeners bind; the redirect uses the first."""
    app = web.Application()
    app[DEPS] = deps
    app[HTTPS_PORTS] = https_ports if https_ports is not None else []
    app[CHALLENGES] = deps.paths.acme_challenges
    app.router.add_get("/.well-known/acme-challenge/{token}", acme_challenge)
    app.router.add_route("*", "/{tail:.*}", redirect_to_https)
    return app


async def acme_challenge(request: web.Request) -> web.Response:
    """RFC 8555 §8.3: the key authorization as application/octet-stream (plain ASCII)."""
    token = request.match_info["token"]
    if not _TOKEN.fullmatch(token):
        raise web.HTTPNotFound()
    path = request.app[CHALLENGES] / token
    try:
        body = path.read_bytes()
    except OSError:
        raise web.HTTPNotFound() from None
    return web.Response(body=body, content_type="application/octet-stream")


async def redirect_to_https(request: web.Request) -> web.Response:
    """308 (RFC 9110 §15.4.9, keeps the method) to the same host and path on https."""
    deps = request.app[DEPS]
    host = request.url.raw_host or deps.config.server.hostname
    if ":" in host:
        host = f"[{host}]"
    bound, configured = request.app[HTTPS_PORTS], deps.config.listeners("https")
    port = bound[0] if bound else configured[0][1] if configured else 443
    netloc = host if port == 443 else f"{host}:{port}"
    raise web.HTTPPermanentRedirect(f"https://{netloc}{request.rel_url}")
