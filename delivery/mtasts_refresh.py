"""serve's MTA-STS refresher (RFC 8461 §5.1): cached policies are refreshed before they expire
even when no mail goes to their domains, instead of only on the next delivery attempt.

    await run(store, config, stop)

Once at start and then every `CHECK_EVERY_S`, the cached policies that are due (daily, or at
half their max_age: `CachedPolicy.refresh_due`) are fetched again in a worker thread
(`PolicyStore.refresh_due`: DNS and HTTPS are blocking). A failed refresh keeps the cached
policy in force until it expires and is retried after `REFRESH_RETRY_S`, as on delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mailstack.delivery.mtasts_fetch import PolicyStore

from mailstack.base.config import Config
from mailstack.base.dns import DnsClient, make_resolver

log = logging.getLogger(__name__)

# Refreshes fall due at least a day or half a max_age before expiry (RFC 8461 §3.2 lets
# max_age go down to seconds, but real policies say a week or more): an hourly look is
# early enough and costs one directory listing when nothing is due.
CHECK_EVERY_S = 3600.0


async def run(
    store: PolicyStore,
    config: Config,
    stop: asyncio.Event,
    *,
    every_s: float = CHECK_EVERY_S,
    clock: Callable[[], float] = time.time,
) -> None:
    """Until `stop` is set: refresh what is due, then wait `every_s` (a failure is logged)."""
    dns = DnsClient(make_resolver(config.dns))
    while not stop.is_set():
        try:
            tried = await asyncio.to_thread(
                store.refresh_due,
                dns,
                port=config.outbound.mta_sts_port,
                ca_file=config.outbound.ca_file,
                now=clock(),
            )
            if tried:
                log.info("mta-sts: refreshed cached policies of %s", ", ".join(tried))
        except Exception:
            log.exception("mta-sts: refreshing cached policies failed")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
