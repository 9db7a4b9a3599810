"""What every listener gets from `serve`: config, paths, accounts, store, events, TLS, throttle,
the outbound queue.

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
from mailstack.base.paths import StatePaths
from mailstack.base.throttle import LoginThrottle
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
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Set when `serve` begins to stop: long-lived sessions (IMAP IDLE) say BYE and close.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # The outbound queue (delivery.queue) that `serve` runs; None where no runner exists.
    queue: OutboundQueue | None = None

    def hosted_domains(self) -> set[str]:
        """Config domains plus those added with `domain add` (read live)."""
        return set(self.config.server.domains) | set(self.accounts.domains())


# A service's entry point: start listening on (host, port), return the server to close later.
StartService = Callable[[ServerContext, str, int], Awaitable[asyncio.Server]]
