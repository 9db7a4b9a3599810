"""The thread pool behind `asyncio.to_thread` in serve's processes.

Every blocking step of a session runs there: a submission's enqueue (DKIM signing, the write
and the group commit's fsync), an IMAP command's store call, a delivery. asyncio's default
pool has min(32, cores + 4) threads: 6 on a 2-core machine, so 16 submission clients queued
behind 6 enqueues, each mostly waiting on the disk, and a group commit never gathered more
than 6 messages into one fsync. Threads are started only when all are busy, so an idle
server holds no more of them than before.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

BLOCKING_THREADS = 32


def use_blocking_pool(loop: asyncio.AbstractEventLoop) -> None:
    """Give `loop` the pool its `to_thread` calls run in (call once, from the loop)."""
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=BLOCKING_THREADS, thread_name_prefix="blocking")
    )
