"""An SMTP worker process: MX and submission sessions for the connections the main process
hands over.

`serve` starts these (mailstack.workers.parent, which also describes the protocol between the
two) as `python -m mailstack.workers.child --dir ROOT --ipc-fd N --tag wK`; it is not a command
for admins. A worker opens the deployment itself (config, accounts, its own store and group
commit), says `R` when it can take connections, serves each one it receives with the same
`MxSMTP` or `SubmissionSMTP` sessions as an in-process listener (logins are asked of the main
process: mailstack/workers/logins.py), and reports closed connections, logged-in submission
sessions, durable deliveries (for IMAP IDLE in the main process) and queued mail back.
SIGTERM, or EOF from the main process: no new sessions, the open ones finish (up to
lifecycle.DRAIN_S), exit 0. SIGHUP reloads the certificate.

A worker imports what its sessions need and nothing more (not mailstack.app: no IMAP, web or
outbound runner): every module costs each worker memory, and `serve` runs one worker per
core beside the process that holds the IMAP sessions."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys
from pathlib import Path

from mailstack.base.errors import HostError, MailstackError
from mailstack.base.logs import set_process_tag, setup_logging
from mailstack.base.threads import use_blocking_pool
from mailstack.delivery.events import EventHub
from mailstack.delivery.queue_spool import Spool
from mailstack.delivery.services import hosted_domains
from mailstack.deployment import Deployment
from mailstack.lifecycle import DRAIN_S, build_context, drain
from mailstack.smtp.limits import ConnectionLimiter
from mailstack.smtp.server import mx_sessions
from mailstack.smtp.submission import SubmissionService
from mailstack.web.events import record_events, stop_recording
from mailstack.workers.channel import Channel
from mailstack.workers.codec import (
    Closed,
    Delivered,
    HandOff,
    LoggedIn,
    Queued,
    Ready,
    Verdict,
    decode,
)
from mailstack.workers.logins import RemoteLogins

# By its name, not __name__: run as `python -m`, this module is "__main__" (and so were its
# log lines).
log = logging.getLogger("mailstack.workers.child")

REPORT_RETRY_S = 0.05  # a full socketpair buffer: try a "connection closed" report again


class _ForwardingHub(EventHub):
    """Deliveries made here are announced in the main process, where IMAP IDLE waits."""

    def __init__(self, channel: Channel) -> None:
        super().__init__()
        self._channel = channel

    def publish(self, user: str, folder: str) -> None:
        # Best effort, like every publish: an IDLE session that misses it rescans soon.
        self._channel.send(Delivered(user, folder))


class _ForwardingQueue(Spool):
    """Mail queued here (aliases forwarding outside, auto-replies) is sent by the main
    process's runner: a worker only writes the spool, and says so."""

    def __init__(self, dep: Deployment, channel: Channel) -> None:
        super().__init__(
            dep.config, dep.paths, hosted_domains=lambda: hosted_domains(dep.config, dep.accounts)
        )
        self.channel = channel

    def wake(self) -> None:
        self.channel.send(Queued())


async def serve_worker(dep: Deployment, channel: Channel, tag: str) -> None:
    loop = asyncio.get_running_loop()
    use_blocking_pool(loop)
    ctx = build_context(dep, _ForwardingQueue(dep, channel))
    logins = RemoteLogins(channel)
    object.__setattr__(ctx, "logins", logins)  # frozen: decided in the main process instead
    if isinstance(ctx.queue, Spool):  # DKIM's RSA step, too (codec.py: K)
        ctx.queue.signer = logins.blocking_signer(loop)
    # The main process counts connections against the limits; here every one is admitted.
    admit_all = ConnectionLimiter(sys.maxsize, sys.maxsize)
    submission = {
        service: SubmissionService(ctx, implicit_tls=service == "submissions", limiter=admit_all)
        for service in ("submission", "submissions")
    }
    factories = {
        "smtp": mx_sessions(ctx, admit_all),
        **{service: s.sessions() for service, s in submission.items()},
    }
    stop = asyncio.Event()
    fd = channel.sock.fileno()
    starting: set[asyncio.Task[None]] = set()

    def report(packet: Closed | LoggedIn) -> None:
        if not channel.send(packet) and not channel.broken:
            loop.call_later(REPORT_RETRY_S, report, packet)

    def report_closed(token: int) -> None:
        report(Closed(token))

    async def serve_one(token: int, service: str, conn: socket.socket) -> None:
        factory = factories[service]

        def session() -> asyncio.Protocol:
            proto = factory()
            proto.on_closed = lambda: report_closed(token)
            proto.on_authenticated = lambda: report(LoggedIn(token))
            return proto

        tls = submission[service].tls_context() if service in submission else None
        try:
            await loop.connect_accepted_socket(session, conn, ssl=tls)
        except OSError as exc:
            log.info("connection %d lost before its session began: %s", token, exc)
            conn.close()
            report_closed(token)

    def on_packets() -> None:
        while (got := channel.receive()) is not None:
            packet, fds = got
            if not packet:  # the main process is gone: finish what we have
                loop.remove_reader(fd)
                logins.main_gone()
                stop.set()
                return
            message = decode(packet)
            if isinstance(message, Verdict) and not fds:
                logins.answer(message)
            elif isinstance(message, HandOff) and len(fds) == 1:
                conn = socket.socket(fileno=fds[0])
                task = loop.create_task(serve_one(message.token, message.service, conn))
                starting.add(task)
                task.add_done_callback(starting.discard)
            else:
                log.warning("unexpected packet from the main process: %r", packet[:40])
                for extra in fds:
                    socket.socket(fileno=extra).close()

    def reload() -> None:
        try:
            ctx.tls.reload()
        except HostError as exc:
            log.error("SMTP worker %s: SIGHUP: keeping the old certificate: %s", tag, exc)
        else:
            log.info("SMTP worker %s: SIGHUP: certificate reloaded", tag)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    loop.add_reader(fd, on_packets)
    channel.send(Ready())
    await stop.wait()
    ctx.stopping.set()  # idle sessions get 421 now, busy ones after their reply
    await drain(DRAIN_S)
    with contextlib.suppress(ValueError, OSError):
        loop.remove_reader(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mailstack.workers.child", description=__doc__)
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--tag", default="w")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--log-json", action="store_true")
    args = parser.parse_args(argv)
    # Ctrl-C on a terminal reaches the whole process group; the main process decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    setup_logging(args.log_level, json_lines=args.log_json)
    set_process_tag(args.tag)
    channel = Channel(socket.socket(fileno=args.ipc_fd))
    try:
        dep = Deployment.open(args.dir, events=_ForwardingHub(channel))
    except MailstackError as exc:
        log.error("SMTP worker %s cannot start: %s", args.tag, exc)
        return 1
    recorder = record_events(dep.paths.events_db)  # this worker's sessions, for the admin page
    try:
        asyncio.run(serve_worker(dep, channel, args.tag))
    finally:
        stop_recording(recorder)
        dep.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
