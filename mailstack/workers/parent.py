"""SMTP worker processes: the MX's sessions spread over every core.

A Python process runs one thread of Python at a time, and an MX under load is CPU-bound in
Python (docs/benchmarks.md: one process kept 1.2 of 2 cores busy while Postfix used both). So
`serve` runs the MX sessions in `smtp.workers` child processes (`python -m
mailstack.workers.child`), each with its own event loop, store and group commit; the Maildir
layer is safe for several writer processes (Dovecot's dotlocks, O_APPEND uidlist and maildirsize
lines).

The main process keeps the listening sockets: it accepts, applies the connection limits (in
total and per client address: only one process can count those) and passes the accepted socket
to the ready worker with the fewest connections, over a Unix SOCK_SEQPACKET socketpair
(SCM_RIGHTS). The packets both ways are mailstack.workers.codec's.

Submission (587, and 465 with implicit TLS) is handed over the same way: a submission session
is as CPU-bound as an MX one (TLS, DKIM signing, the queue's writes), and in one process it
kept one core busy while Postfix used both (docs/benchmarks.md). Its logins are still decided
here, where IMAP's are (mailstack/workers/logins.py, login_desk.py), and a session that
logged in says so (`U`), so that it may use the slots reserved for logged-in sessions.

A worker that dies is restarted after a second and its connections' slots are released. When the
main process dies, even by SIGKILL, workers read EOF, take no more connections and finish the
sessions they have. SIGTERM and SIGHUP reach them from the main process."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mailstack.base.connections import plain_ip
from mailstack.base.errors import HostError
from mailstack.base.logs import current_settings
from mailstack.delivery.services import ServerContext, StartService
from mailstack.smtp import replies
from mailstack.smtp.limits import ConnectionLimiter, Ticket, smtp_limiter
from mailstack.workers.channel import Channel
from mailstack.workers.codec import (
    Closed,
    Delivered,
    HandOff,
    LoggedIn,
    LoginCheck,
    Queued,
    Ready,
    ScramAbandon,
    ScramProof,
    ScramStart,
    SignRequest,
    decode,
)
from mailstack.workers.login_desk import LoginDesk

log = logging.getLogger(__name__)

START_TIMEOUT_S = 30.0  # a worker that is not ready by then fails `serve` at start-up
RESTART_DELAY_S = 1.0
STOP_TIMEOUT_S = 35.0  # the workers' own drain (app.DRAIN_S) plus a margin, then SIGKILL


def worker_count(configured: int) -> int:
    """`smtp.workers` resolved: -1 is one per core, none where there is only one."""
    if configured >= 0:
        return configured
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cores if cores and cores > 1 else 0


@dataclass(eq=False)
class _Worker:
    slot: int
    channel: Channel | None = None
    desk: LoginDesk | None = None  # its logins, decided here
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    # token -> the limiter that counted the connection, and its ticket there
    connections: dict[int, tuple[ConnectionLimiter, Ticket]] = field(default_factory=dict)


class SmtpWorkers:
    """The main process's side: spawn, supervise, hand connections over, relay reports."""

    def __init__(self, ctx: ServerContext, count: int) -> None:
        self._ctx = ctx
        self._workers = [_Worker(slot) for slot in range(1, count + 1)]
        # One limiter per listener, as in-process listeners have; on submission, logged-in
        # sessions may use the reserved slots.
        self._limiters = {
            "smtp": smtp_limiter(ctx.config.smtp),
            "submission": smtp_limiter(ctx.config.smtp, authenticated_reserve=True),
            "submissions": smtp_limiter(ctx.config.smtp, authenticated_reserve=True),
        }
        self._tokens = itertools.count(1)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        # Called when a worker (re)starts and is ready: `serve` records the pids for `status`.
        self.on_ready: Callable[[], None] | None = None

    def pids(self) -> list[int]:
        """The worker processes that are ready now."""
        return [w.proc.pid for w in self._workers if w.ready.is_set() and w.proc is not None]

    async def start(self) -> None:
        """Start every worker and wait until each is ready; HostError if one is not."""
        for worker in self._workers:
            self._tasks.append(
                asyncio.create_task(self._supervise(worker), name=f"smtp-worker-{worker.slot}")
            )

        async def all_ready() -> None:
            for w in self._workers:
                await w.ready.wait()

        ready = asyncio.create_task(all_ready())
        done, _ = await asyncio.wait(
            [ready, *self._tasks], timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if ready in done:
            self._started = True
            return
        ready.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        raise HostError(
            "SMTP worker processes did not start (their errors are above)",
            hint="set `workers = 0` under [smtp] in mailstack.toml to serve SMTP in the main "
            "process, and report the error",
        )

    def listener(self, service: str) -> StartService:
        """The start function of a listener whose accepted connections go to the workers."""

        async def listen(ctx: ServerContext, host: str, port: int) -> asyncio.Server:
            loop = asyncio.get_running_loop()
            return await loop.create_server(lambda: _HandOff(self, service), host, port)

        return listen

    def reload(self) -> None:
        """Pass SIGHUP on (each worker reloads its certificate)."""
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        """SIGTERM every worker (they finish their sessions), wait, SIGKILL what is left."""
        for worker in self._workers:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.send_signal(signal.SIGTERM)
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
            for worker in self._workers:
                if worker.proc is not None and worker.proc.returncode is None:
                    log.warning("SMTP worker %d did not stop in time: killed", worker.slot)
                    worker.proc.kill()
            if late:
                await asyncio.wait(late, timeout=5)

    # -- handing connections over ----------------------------------------------------------------
    def hand_off(self, transport: asyncio.Transport, service: str = "smtp") -> None:
        peer = transport.get_extra_info("peername")
        ip = plain_ip(str(peer[0])) if isinstance(peer, tuple) else "?"
        limiter = self._limiters[service]
        ticket = limiter.admit_connection(ip)
        if not isinstance(ticket, Ticket):
            log.info("refused %s at connect: %s", ip, ticket)
            _refuse(transport, str(ticket))
            return
        sock = transport.get_extra_info("socket")
        token = next(self._tokens)
        packet = HandOff(token, service)
        # Least busy first; one whose socketpair is full (stuck, or behind) is passed over.
        ready = [w for w in self._workers if w.ready.is_set() and w.channel is not None]
        for worker in sorted(ready, key=lambda w: len(w.connections)):
            channel = worker.channel
            if sock is not None and channel is not None and channel.send(packet, [sock.fileno()]):
                worker.connections[token] = (limiter, ticket)
                # The worker holds its own descriptor now; closing ours leaves it open.
                transport.abort()
                return
        limiter.release_connection(ticket)
        log.warning("no SMTP worker could take a connection from %s", ip)
        _refuse(transport, str(replies.SERVICE_UNAVAILABLE))

    def _closed(self, worker: _Worker, token: int) -> None:
        counted = worker.connections.pop(token, None)
        if counted is not None:
            limiter, ticket = counted
            limiter.release_connection(ticket)

    # -- supervision -----------------------------------------------------------------------------
    async def _supervise(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    await self._run_once(worker, loop)
                except OSError as exc:  # could not even start it (EMFILE, ENOMEM, ...)
                    if not self._started:
                        raise
                    log.error("SMTP worker %d cannot be started: %s", worker.slot, exc)
                else:
                    if self._ctx.stopping.is_set() or not self._started:
                        return  # stopping; or it died before start-up finished: `start` says so
                    log.error(
                        "SMTP worker %d exited with status %s; restarting it",
                        worker.slot,
                        worker.proc.returncode if worker.proc else "?",
                    )
                await asyncio.sleep(RESTART_DELAY_S)
                if self._ctx.stopping.is_set():
                    return
        finally:
            if worker.proc is not None and worker.proc.returncode is None:
                worker.proc.kill()
                with contextlib.suppress(Exception):
                    await worker.proc.wait()

    async def _run_once(self, worker: _Worker, loop: asyncio.AbstractEventLoop) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        channel = Channel(ours)
        worker.ready.clear()
        level, json_lines = current_settings()
        argv = [
            sys.executable,
            "-P",  # not the working directory first: a `mailstack/` folder there must not shadow us
            "-m",
            "mailstack.workers.child",
            "--dir",
            str(self._ctx.paths.root),
            "--ipc-fd",
            str(theirs.fileno()),
            "--tag",
            f"w{worker.slot}",
            "--log-level",
            level,
            *(["--log-json"] if json_lines else []),
        ]
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=[theirs.fileno()], stdin=asyncio.subprocess.DEVNULL, env=_env()
            )
        except BaseException:
            channel.close()
            raise
        finally:
            theirs.close()
        worker.channel = channel
        worker.desk = LoginDesk(self._ctx.logins, channel, worker.slot, self._ctx.paths)
        loop.add_reader(ours.fileno(), self._on_packets, worker, channel)
        try:
            await worker.proc.wait()
        finally:
            loop.remove_reader(ours.fileno())
            worker.ready.clear()
            worker.channel = None
            if worker.desk is not None:
                worker.desk.close()
                worker.desk = None
            channel.close()
            for token in list(worker.connections):
                self._closed(worker, token)

    def _on_packets(self, worker: _Worker, channel: Channel) -> None:
        while (got := channel.receive()) is not None:
            packet, fds = got
            for fd in fds:  # workers send none; never leak one
                os.close(fd)
            if not packet:  # EOF: the worker is exiting; _run_once notices its exit
                asyncio.get_running_loop().remove_reader(channel.sock.fileno())
                return
            match decode(packet):
                case Closed(token):
                    self._closed(worker, token)
                case LoggedIn(token):
                    if (counted := worker.connections.get(token)) is not None:
                        limiter, ticket = counted
                        limiter.authenticated(ticket)
                case (
                    LoginCheck() | ScramStart() | ScramProof() | ScramAbandon() | SignRequest()
                ) as asked:
                    if worker.desk is not None:
                        worker.desk.handle(asked)
                case Delivered(user, folder):
                    log.debug("SMTP worker %d delivered to %s %s", worker.slot, user, folder)
                    self._ctx.events.publish(user, folder)
                case Queued():
                    if self._ctx.queue is not None:
                        self._ctx.queue.wake()
                case Ready():
                    worker.ready.set()
                    pid = worker.proc.pid if worker.proc else "?"
                    log.info("SMTP worker %d ready (pid %s)", worker.slot, pid)
                    if self.on_ready is not None:
                        self.on_ready()
                case _:
                    log.warning(
                        "unexpected packet from SMTP worker %d: %r", worker.slot, packet[:40]
                    )


class _HandOff(asyncio.Protocol):
    """What the main process's `smtp` listener does with a connection: give it away."""

    def __init__(self, pool: SmtpWorkers, service: str) -> None:
        self._pool = pool
        self._service = service

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):  # always, for a TCP listener
            self._pool.hand_off(transport, self._service)


def _refuse(transport: asyncio.Transport, reply: str) -> None:
    transport.write(reply.encode("ascii") + b"\r\n")
    transport.close()


def _env() -> dict[str, str]:
    """The child must import our packages even when they are not installed (a checkout)."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[1])
    path = env.get("PYTHONPATH", "")
    if here not in path.split(os.pathsep):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, path) if p)
    return env
