"""`mailstack serve`: one asyncio loop in the main process, every listener the config names.

`listeners(ctx)` maps each service to its start function, an async
`start(ctx, host, port) -> asyncio.Server`. With `smtp.workers`, the `smtp`, `submission`
and `submissions` listeners are the hand-off of mailstack.workers.parent instead: their
sessions run in SMTP worker processes started first (logins are still decided here).
Start-up binds every listener or none: a port in use, a missing or mismatched certificate stops
it with one clear line. SIGTERM/SIGINT stop accepting, let connections in flight finish (up to
`DRAIN_S`; workers drain theirs), and exit 0; SIGHUP reloads the certificate, in the workers
too (accounts need no reload: lookups follow users.sqlite3).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from mailstack.base import parallel
from mailstack.base.config import format_hostport
from mailstack.base.errors import HostError
from mailstack.base.threads import use_blocking_pool
from mailstack.delivery import mtasts_refresh, tlsrpt
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.queue_runner import local_delivery
from mailstack.delivery.services import ServerContext, StartService, hosted_domains
from mailstack.deployment import Deployment
from mailstack.imap.server import ImapService
from mailstack.lifecycle import DRAIN_S, build_context, drain
from mailstack.smtp.server import start_smtp
from mailstack.smtp.submission import start_submission, start_submissions
from mailstack.status import ServeStatus
from mailstack.web.events import record_events, stop_recording
from mailstack.workers.parent import SmtpWorkers, worker_count

if TYPE_CHECKING:
    from mailstack.web.server import WebService

log = logging.getLogger(__name__)

SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "https", "http")
WORKER_SERVICES = ("smtp", "submission", "submissions")  # served in SMTP workers, when any


def listeners(ctx: ServerContext) -> dict[str, StartService]:
    """Each configured service's start function; the IMAP listeners share one ImapService
    (connection limits, per-account session counts, structure caches)."""
    imap = ImapService(ctx)
    web = _LazyWeb(ctx)
    return {
        "smtp": start_smtp,
        "submission": start_submission,
        "submissions": start_submissions,
        "imap": imap.start_imap,
        "imaps": imap.start_imaps,
        "https": web.start_https,
        "http": web.start_http,
    }


class _LazyWeb:
    """The web listeners' service, imported and built when the first one starts: aiohttp and
    jinja2 (about 11 MB per process) stay out of a `serve` that runs no web listener."""

    def __init__(self, ctx: ServerContext) -> None:
        self._ctx = ctx
        self._service: WebService | None = None

    def _web(self) -> WebService:
        if self._service is None:
            from mailstack.web.server import WebService

            self._service = WebService(self._ctx)
        return self._service

    async def start_https(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        return await self._web().start_https(ctx, host, port)

    async def start_http(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        return await self._web().start_http(ctx, host, port)


Q = TypeVar("Q", bound=OutboundQueue)


def outbound_queue(dep: Deployment, cls: type[Q]) -> Q:
    """The outbound queue `serve` runs (a worker's forwards to the main process's runner)."""
    return cls(
        dep.config,
        dep.paths,
        hosted_domains=lambda: hosted_domains(dep.config, dep.accounts),
        local=local_delivery(dep.accounts, dep.store, dep.config.server.hostname),
    )


async def start_listeners(
    ctx: ServerContext, overrides: dict[str, StartService] | None = None
) -> list[tuple[str, asyncio.Server]]:
    """Bind every configured listener; on any failure close those already open and raise.
    `overrides`: another start function for a service (the SMTP workers' hand-off)."""
    servers: list[tuple[str, asyncio.Server]] = []
    try:
        starts = listeners(ctx) | (overrides or {})
        for service in SERVICES:
            addresses = ctx.config.listeners(service)
            if not addresses:
                continue
            start = starts[service]
            for host, port in addresses:
                try:
                    server = await start(ctx, host, port)
                except OSError as exc:
                    raise _bind_error(service, host, port, exc) from None
                servers.append((service, server))
                for sock in server.sockets:
                    bound = sock.getsockname()
                    log.info("%s listening on %s", service, format_hostport(bound[0], bound[1]))
    except BaseException:
        for _, server in servers:
            server.close()
        raise
    return servers


def _bind_error(service: str, host: str, port: int, exc: OSError) -> HostError:
    where = f"listen.{service} {format_hostport(host, port)}"
    if exc.errno == errno.EADDRINUSE:
        return HostError(
            f"cannot listen on {where}: address already in use",
            hint=f"another program holds the port (see `ss -ltnp 'sport = :{port}'`);"
            " stop it or change the port in mailstack.toml",
        )
    if exc.errno == errno.EACCES:
        return HostError(
            f"cannot listen on {where}: permission denied",
            hint="ports below 1024 need root or CAP_NET_BIND_SERVICE",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return HostError(f"cannot listen on {where}: no such address on this host")
    return HostError(f"cannot listen on {where}: {exc.strerror or exc}")


async def run(dep: Deployment, *, on_ready: Callable[[ServerContext], None] | None = None) -> None:
    loop = asyncio.get_running_loop()
    dep.events.bind(loop)
    use_blocking_pool(loop)
    queue = outbound_queue(dep, OutboundQueue)
    ctx = build_context(dep, queue)
    workers: SmtpWorkers | None = None
    count = worker_count(ctx.config.smtp.workers)
    if count and any(ctx.config.listeners(service) for service in WORKER_SERVICES):
        workers = SmtpWorkers(ctx, count)
        await workers.start()
    try:
        handed_off = {s: workers.listener(s) for s in WORKER_SERVICES} if workers else None
        servers = await start_listeners(ctx, handed_off)
    except BaseException:
        if workers is not None:
            ctx.stopping.set()
            await workers.stop()
        raise
    # The outbound queue runner stops with ctx.stopping; drain waits for its attempts in flight.
    queue_runner = asyncio.create_task(queue.run(ctx.stopping), name="outbound-queue")
    # TLS-RPT (RFC 8460): yesterday's outbound TLS counts mailed to domains that ask for them
    tls_reports = asyncio.create_task(
        tlsrpt.run(queue.security.reports, queue, ctx.config, ctx.stopping), name="tls-reports"
    )
    # MTA-STS (RFC 8461 §5.1): cached policies refreshed before they expire, mail or not
    sts_refresh = asyncio.create_task(
        mtasts_refresh.run(queue.security.sts, ctx.config, ctx.stopping), name="mta-sts-refresh"
    )
    trimmer = asyncio.create_task(trim_memory(ctx.stopping), name="malloc-trim")
    status = ServeStatus.starting(ctx.paths, ctx.config.server.hostname, servers)
    if workers is not None:
        workers.on_ready = lambda: status.write(workers.pids() if workers else [])
    status.write(workers.pids() if workers else [])
    stop = asyncio.Event()

    def reload() -> None:
        try:
            ctx.tls.reload()
        except HostError as exc:
            log.error("SIGHUP: keeping the old certificate: %s", exc)
        else:
            log.info("SIGHUP: certificate reloaded from %s", ctx.tls.cert)
        if workers is not None:
            workers.reload()

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    log.info(
        "mailstack ready: %s for %s",
        ctx.config.server.hostname,
        ", ".join(ctx.config.server.domains),
    )
    if on_ready is not None:
        on_ready(ctx)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    log.info("stopping: no new connections; waiting up to %.0fs for sessions in flight", DRAIN_S)
    status.remove()
    ctx.stopping.set()
    for _, server in servers:
        server.close()
    if workers is not None:
        await workers.stop()
    await drain(DRAIN_S)
    with contextlib.suppress(asyncio.CancelledError):
        await trimmer  # it ends with ctx.stopping
    if queue_runner.done() and not queue_runner.cancelled() and queue_runner.exception():
        log.error("outbound queue runner failed", exc_info=queue_runner.exception())
    if tls_reports.done() and not tls_reports.cancelled() and tls_reports.exception():
        log.error("TLS report task failed", exc_info=tls_reports.exception())
    if sts_refresh.done() and not sts_refresh.cancelled() and sts_refresh.exception():
        log.error("MTA-STS refresh task failed", exc_info=sts_refresh.exception())
    log.info("stopped")


def raise_open_files_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit: every IMAP session holds a socket, and
    the usual soft limit of 1,024 would cap `serve` near a thousand IDLE clients. (The systemd
    unit sets both with LimitNOFILE=; README "Many IMAP clients" says how to go higher.)"""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return soft


MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt() parameter number (malloc.h)


def limit_malloc_arenas() -> bool:
    """At most MALLOC_ARENAS glibc malloc arenas in `serve` and its SMTP workers, unless the
    environment's MALLOC_ARENA_MAX says otherwise. glibc gives each thread that allocates an
    arena of its own (up to 8 per core), and what is freed in one is reused only there:
    `serve`'s threads (password hashing, store calls, SQLite) kept tens of MB of freed memory
    resident with 10,000 IDLE sessions (docs/benchmarks.md). Python's small objects live in
    its own allocator, and the GIL keeps the shared arenas' locks quiet. Returns whether the
    limit was set here (False: set by the environment, or not glibc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    os.environ["MALLOC_ARENA_MAX"] = str(MALLOC_ARENAS)  # the workers' glibc reads it at start
    try:
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, MALLOC_ARENAS))
    except (OSError, AttributeError):  # not glibc: no mallopt
        return False


TRIM_S = 30.0  # how often `serve` gives freed heap memory back (trim_malloc)


def trim_malloc() -> bool:
    """Return the free memory at the top and inside glibc's heaps to the system
    (malloc_trim(0)). Freed memory otherwise stays resident: after the first logins of a
    thousand accounts `serve` held about 15 MB it no longer used (docs/benchmarks.md).
    Returns whether anything was released (False too when this is not glibc)."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


async def trim_memory(stopping: asyncio.Event, every_s: float = TRIM_S) -> None:
    """`trim_malloc` every `every_s` until `stopping`, in a worker thread (it walks the
    heap: milliseconds, not for the event loop)."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), every_s)
        if not stopping.is_set():
            await asyncio.to_thread(trim_malloc)


def serve(dep: Deployment) -> None:
    limit_malloc_arenas()  # before any thread exists
    log.info("open files limit: %d", raise_open_files_limit())
    recorder = record_events(dep.paths.events_db)  # the admin page's recent deliveries
    try:
        asyncio.run(run(dep))
    finally:
        stop_recording(recorder)
        parallel.POOL.close()  # idle worker processes (mailstack/base/parallel.py)
        dep.close()
