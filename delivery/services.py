"""What every listener gets from `serve`: config, paths, accounts, store, events, TLS, the login
path (`logins`, with its throttle), the outbound queue.

Built once by `mailstack.app` and passed to each service's `start(ctx, host, port)`. It lives on
the delivery floor, below the protocols that receive it and above the base it bundles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailstack.delivery.events import EventHub
from mailstack.delivery.store import MailStore

from mailstack.base.config import Config
from mailstack.base.login import Logins, make_logins
from mailstack.base.paths import StatePaths
from mailstack.base.throttle import LoginThrottle
from mailstack.base.throttle_db import ThrottleDb
from mailstack.base.tls import TlsProvider
from mailstack.base.users import Accounts

if TYPE_CHECKING:
    from mailstack.delivery.queue import OutboundQueue


@dataclass
class ServerContext:
    config: Config
    paths: StatePaths
    accounts: Accounts
    store: MailStore
    events: EventHub
    tls: TlsProvider
    # None: built from [auth] and persisted in throttle.sqlite3 (what `serve` does); tests may
    # pass one of their own, kept in memory only.
    throttle: LoginThrottle | None = None
    # Set when `serve` begins to stop: long-lived sessions (IMAP IDLE) say BYE and close.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The outbound queue (delivery.queue) that `serve` runs; None where no runner exists.
    queue: OutboundQueue | None = None
    # The one login path of IMAP and submission (mailstack/base/login.py).
    logins: Logins = field(init=False)

    def __post_init__(self) -> None:
        if self.throttle is None:
            db = ThrottleDb(self.paths.throttle_db)
            self.logins = make_logins(self.accounts, self.config.auth, db)
            self.throttle = self.logins.throttle
        else:
            self.logins = Logins(self.accounts, self.config.auth, self.throttle)

    def hosted_domains(self) -> set[str]:
        """Config domains plus those added with `domain add` (read live)."""
        return set(self.config.server.domains) | set(self.accounts.domains())


# A service's entry point: start listening on (host, port), return the server to close later.
StartService = Callable[[ServerContext, str, int], Awaitable[asyncio.Server]]
