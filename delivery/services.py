"""What every listener gets from `serve`: config, paths, accounts, store, events, TLS, the login
path (`logins`, with its throttle), the outbound queue.

Built once by `mailstack.app` (and by each SMTP worker), frozen, and passed to each service's
`start(ctx, host, port)`; what a protocol keeps for itself (connection limits, caches) lives in
its service object, not here. It lives on the delivery floor, below the protocols that receive
it and above the base it bundles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mailstack.delivery.events import EventHub
from mailstack.delivery.store import MailStore

from mailstack.base.config import Config
from mailstack.base.login import LoginPath, Logins, make_logins
from mailstack.base.paths import StatePaths
from mailstack.base.throttle import LoginThrottle
from mailstack.base.throttle_db import ThrottleDb
from mailstack.base.tls import TlsProvider
from mailstack.base.users import Accounts

if TYPE_CHECKING:
    from mailstack.delivery.queue_spool import Spool


def hosted_domains(config: Config, accounts: Accounts) -> set[str]:
    """Config domains plus those added with `domain add` (read live)."""
    return set(config.server.domains) | set(accounts.domains())


@dataclass(frozen=True)
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
    # The outbound queue (delivery.queue) that `serve` runs, or in an SMTP worker the spool
    # it writes for the main process's runner; None where no runner exists.
    queue: Spool | None = None
    # The one login path of IMAP and submission (mailstack/base/login.py); in an SMTP worker
    # process, a proxy to the main process's (mailstack/workers/logins.py).
    logins: LoginPath = field(init=False)

    def __post_init__(self) -> None:
        # Frozen: the two fields derived at construction are set the one way a frozen
        # dataclass allows.
        if self.throttle is None:
            db = ThrottleDb(self.paths.throttle_db)
            logins = make_logins(self.accounts, self.config.auth, db)
            object.__setattr__(self, "throttle", logins.throttle)
        else:
            logins = Logins(self.accounts, self.config.auth, self.throttle)
        object.__setattr__(self, "logins", logins)

    def hosted_domains(self) -> set[str]:
        """Config domains plus those added with `domain add` (read live)."""
        return hosted_domains(self.config, self.accounts)


# A service's entry point: start listening on (host, port), return the server to close later.
StartService = Callable[[ServerContext, str, int], Awaitable[asyncio.Server]]
