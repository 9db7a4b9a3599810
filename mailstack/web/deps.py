"""What every web handler gets: `WebDeps`, built once by `serve` from its ServerContext.

Handlers read it with `request.app[DEPS]` (an aiohttp AppKey: a string key would raise
NotAppKeyWarning, an error under the test suite's filterwarnings).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import web

from mailstack.base.config import Config
from mailstack.base.login import LoginPath
from mailstack.base.paths import StatePaths
from mailstack.base.tls import TlsProvider
from mailstack.base.users import Accounts
from mailstack.delivery.queue_spool import Spool
from mailstack.delivery.services import ServerContext, hosted_domains
from mailstack.delivery.store import MailStore


@dataclass(frozen=True)
class WebDeps:
    config: Config
    paths: StatePaths  # the state directory's layout (run/, tls/, acme/, ...)
    accounts: Accounts  # users, aliases, domains (users.sqlite3, read live)
    logins: LoginPath  # the login path and throttle IMAP and submission share
    tls: TlsProvider  # the certificate the listeners present (reloadable)
    store: MailStore
    queue: Spool | None  # the outbound queue serve runs (None outside serve)
    stopping: asyncio.Event  # set when serve begins to stop

    @classmethod
    def from_context(cls, ctx: ServerContext) -> WebDeps:
        return cls(
            config=ctx.config,
            paths=ctx.paths,
            accounts=ctx.accounts,
            logins=ctx.logins,
            tls=ctx.tls,
            store=ctx.store,
            queue=ctx.queue,
            stopping=ctx.stopping,
        )

    def hosted_domains(self) -> set[str]:
        """Config domains plus those added with `domain add` (read live)."""
        return hosted_domains(self.config, self.accounts)


DEPS = web.AppKey("mailstack.deps", WebDeps)
