"""What `serve` and its SMTP worker processes share: the server context and the drain.

Its own module, light on imports, so that a worker (mailstack/workers/child.py) gets these
without importing mailstack.app, which pulls in every listener `serve` may run (IMAP, the
web side, submission, the outbound runner): each such module costs every worker process
memory for nothing (docs/benchmarks.md, "10,000 IDLE sessions over 1,000 accounts").
tests/workers/test_worker_imports.py keeps the worker's import set small.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from mailstack.base.tls import TlsProvider
from mailstack.delivery.services import ServerContext
from mailstack.deployment import Deployment

if TYPE_CHECKING:
    from mailstack.delivery.queue_spool import Spool

DRAIN_S = 30.0  # how long in-flight sessions may take to finish after SIGTERM


def build_context(dep: Deployment, queue: Spool | None = None) -> ServerContext:
    tls = TlsProvider(dep.paths.tls_cert, dep.paths.tls_key)
    return ServerContext(
        config=dep.config,
        paths=dep.paths,
        accounts=dep.accounts,
        store=dep.store,
        events=dep.events,
        tls=tls,
        queue=queue,
    )


async def drain(deadline_s: float) -> None:
    """Wait for connection tasks to end by themselves, then cancel what is left."""
    me = asyncio.current_task()
    pending = {t for t in asyncio.all_tasks() if t is not me}
    if not pending:
        return
    _, still = await asyncio.wait(pending, timeout=deadline_s)
    for task in still:
        task.cancel()
    if still:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait(still, timeout=2)
