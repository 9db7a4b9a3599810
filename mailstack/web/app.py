"""The aiohttp applications of the web side.

`make_app` (https): client autoconfiguration, MTA-STS policy, then the status and self-service
pages if `mailstack.web.pages` is installed (it registers its own routes with
`setup(app, deps)`). `make_http_app` (plain http): ACME HTTP-01 challenges, and a redirect to
https for everything else.
"""

from __future__ import annotations

import importlib
import importlib.util

from aiohttp import web

from mailstack.web.deps import DEPS, WebDeps

PAGES_MODULE = "mailstack.web.pages"


def make_app(deps: WebDeps) -> web.Application:
    app = web.Application()
    app[DEPS] = deps
    if importlib.util.find_spec(PAGES_MODULE) is not None:
        importlib.import_module(PAGES_MODULE).setup(app, deps)
    return app


def make_http_app(deps: WebDeps) -> web.Application:
    app = web.Application()
    app[DEPS] = deps
    return app
