"""IMAP listeners: port 143 with STARTTLS, port 993 with implicit TLS (RFC 8314).

A thin transport: it moves bytes between the socket and `Session.proto` (the sans-IO core),
hands events to the session, and owns what needs a socket or a clock:
- TLS: implicit on `start_imaps`, STARTTLS upgrade on `start_imap` (RFC 9051 §6.2.1). Bytes
  pipelined after STARTTLS are refused with BYE (they were sent in the clear; CVE-2011-0411).
- Deadlines, not idle timers: a connection must log in within `imap.login_timeout_s` of
  connecting, however slowly its bytes trickle in; after login, autologout after
  `imap.idle_timeout_s` without a whole command (RFC 9051 §5.4: at least 30 minutes, which
  is for authenticated clients only); each complete command, IDLE included, restarts it.
- IDLE (RFC 2177): waits for the client's DONE and for `ctx.events`, which the store
  publishes to after every durable change and the service's `MaildirWatcher`
  (delivery/watch.py, inotify) after every change other processes make (Dovecot, mbsync, a
  `cp` into new/, the CLI), both subscribed once per folder for all its IDLE sessions
  (imap/idle.py). Where inotify covers the folder a rescan every `WATCHED_RESCAN_S` is only
  a safety net; elsewhere IDLE rescans every `rescan_s`.
- Limits (`mailstack.base.connections`, shared by both listeners): connections per client
  address (`::ffff:a.b.c.d` counted as a.b.c.d), per network (IPv4 /24, IPv6 /64) and in total,
  of which `imap.reserved_for_authenticated` are for logged-in sessions; refused with
  `* BYE [UNAVAILABLE]` in place of the greeting. `imap.max_connections_per_user` sessions per
  account (LOGIN fails with NO [LIMIT]); login throttling is `ctx.throttle`, applied by the
  session.
- COMPRESS=DEFLATE (RFC 4978): after the session's OK, bytes read are inflated and bytes
  written deflated (imap/compress.py), IDLE and STARTTLS'd connections alike.
- A framing violation (over-long line, oversized LITERAL+) ends the connection with
  `* BYE [TOOBIG]` or `* BYE reason`: the byte stream cannot be resynchronised after one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import SupportsIndex

from mailstack.delivery.services import ServerContext
from mailstack.delivery.watch import MaildirWatcher
from mailstack.imap import response
from mailstack.imap.cache import StructureCaches
from mailstack.imap.compress import Deflate
from mailstack.imap.framing import RemoteProtocolError
from mailstack.imap.idle import IdleWaiters, Key, Waiter
from mailstack.imap.session import ConnectionLimits, Session, Write
from mailstack.imap.shared import SharedStore

from mailstack.base.connections import ConnectionLimiter, Refusal, Ticket, plain_ip
from mailstack.base.logs import connection_logger, new_connection_id

_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only
READ_BYTES = 65536
RESCAN_S = 3.0  # IDLE rescan period for changes made by other processes (brief: 2-5 s)
# With inotify on the folder: a safety net only (a lost event), rare enough that 10,000 IDLE
# sessions cost about 80 folder scans a second.
WATCHED_RESCAN_S = 120.0
TLS_HANDSHAKE_S = 30.0
CLOSE_S = 5.0
# Threads for the sessions' short store calls (SessionCore._thread). Their work is mostly
# Python, so beyond the cores more threads only take turns at the GIL: with ten busy clients
# on a 2-core machine, 6 threads (asyncio's default) held a STORE's p99 at 46 ms, 2 at 29 ms
# (bench/imap_stress.py; serve's pool for everything else has 32, mailstack/base/threads.py).
IMAP_THREADS = max(2, os.cpu_count() or 2)


class ImapService:
    """What the imap and imaps listeners of one `serve` share: the connection limiter, the
    per-account session counts and the structure caches. `serve` builds one and starts both
    listeners from it; `start_imap`/`start_imaps` alone give a listener a service of its own."""

    def __init__(self, ctx: ServerContext, *, rescan_s: float = RESCAN_S) -> None:
        self.ctx = ctx
        # Sessions see other accounts' shared folders through the ACL-checking store.
        self.session_ctx = dataclasses.replace(
            ctx, store=SharedStore(ctx.store, ctx.paths, ctx.accounts)
        )
        # The same login path (throttle, auth cache, verifier pool) as every other listener.
        object.__setattr__(self.session_ctx, "logins", ctx.logins)
        self.rescan_s = rescan_s
        self.caches = StructureCaches()
        cfg = ctx.config.imap
        self.connections = ConnectionLimiter(
            cfg.max_connections,
            cfg.max_connections_per_ip,
            cfg.max_connections_per_network,
            cfg.reserved_for_authenticated,
        )
        # Per account (LOGIN's NO [LIMIT]); addresses are the limiter's business.
        self.limits = ConnectionLimits(cfg.max_connections_per_user)
        # inotify watches of the folders IDLE sessions wait on, shared by all of them.
        self.watcher = MaildirWatcher(ctx.events, ctx.paths.maildir)
        self.idlers = IdleWaiters(ctx.events, self.watcher, ctx.stopping)
        self.executor = ThreadPoolExecutor(IMAP_THREADS, thread_name_prefix="imap")

    async def start_imap(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        """IMAP on `host:port` with STARTTLS (cleartext login only where the session allows)."""
        return await self._start(ctx, host, port, implicit_tls=False)

    async def start_imaps(self, ctx: ServerContext, host: str, port: int) -> asyncio.Server:
        """IMAP over implicit TLS on `host:port` (RFC 8314)."""
        return await self._start(ctx, host, port, implicit_tls=True)

    async def _start(
        self, ctx: ServerContext, host: str, port: int, *, implicit_tls: bool
    ) -> asyncio.Server:
        if ctx is not self.ctx:
            raise ValueError("an ImapService serves the context it was built for")
        ssl_ctx = ctx.tls.listening_context() if implicit_tls else None

        # A partial, not a wrapping coroutine: each connection's task runs serve_client
        # itself, one coroutine frame fewer for the life of every session (~400 bytes).
        client = functools.partial(
            serve_client,
            self.session_ctx,
            limits=self.limits,
            connections=self.connections,
            caches=self.caches,
            is_tls=implicit_tls,
            rescan_s=self.rescan_s,
            watcher=self.watcher,
            idlers=self.idlers,
            executor=self.executor,
        )
        loop = asyncio.get_running_loop()

        def session_protocol() -> asyncio.StreamReaderProtocol:
            # asyncio.start_server's factory, with the reader IDLE can wait on (IdleReader)
            return asyncio.StreamReaderProtocol(IdleReader(loop=loop), client, loop=loop)

        return await loop.create_server(
            session_protocol,
            host,
            port,
            ssl=ssl_ctx,
            ssl_handshake_timeout=TLS_HANDSHAKE_S if ssl_ctx else None,
        )

    def close(self) -> None:
        """Close the structure caches' files and the inotify instance (as an exit would)."""
        self.caches.close()
        self.idlers.close()
        self.watcher.close()
        self.executor.shutdown(wait=False)


async def start_imap(ctx: ServerContext, host: str, port: int) -> asyncio.Server:
    """One IMAP (STARTTLS) listener with a service of its own."""
    return await ImapService(ctx).start_imap(ctx, host, port)


async def start_imaps(ctx: ServerContext, host: str, port: int) -> asyncio.Server:
    """One IMAPS listener with a service of its own."""
    return await ImapService(ctx).start_imaps(ctx, host, port)


class IdleReader(asyncio.StreamReader):
    """A StreamReader that calls `on_input` when bytes, EOF or an error arrive: an IDLE
    session waits for its client on its one `Waiter` (imap/idle.py), with no read task of its
    own (a task, its coroutine and two futures: about 1 KB per session; issue 11 budgets
    300 MB for 10,000 IDLE sessions)."""

    on_input: Callable[[], None] | None = None

    def feed_data(self, data: Iterable[SupportsIndex]) -> None:
        super().feed_data(data)
        if self.on_input is not None:
            self.on_input()

    def feed_eof(self) -> None:
        super().feed_eof()
        if self.on_input is not None:
            self.on_input()

    def set_exception(self, exc: Exception) -> None:
        super().set_exception(exc)
        if self.on_input is not None:
            self.on_input()

    def take_nowait(self) -> bytes:
        """What `read()` would return now, without awaiting (b"" when nothing is buffered).
        StreamReader has no public way; this empties its buffer as read() does."""
        buffered: bytearray | None = getattr(self, "_buffer", None)
        if not buffered:
            return b""
        data = bytes(buffered)
        buffered.clear()
        self._maybe_resume_transport()  # type: ignore[attr-defined]
        return data

    @property
    def has_input(self) -> bool:
        """Whether read() would return at once: bytes buffered (no public API shows them),
        EOF, or an error to raise."""
        buffered: bytes | bytearray = getattr(self, "_buffer", b"")
        return bool(buffered) or self.at_eof() or self.exception() is not None


async def serve_client(
    ctx: ServerContext,
    reader: IdleReader,
    writer: asyncio.StreamWriter,
    *,
    limits: ConnectionLimits,
    connections: ConnectionLimiter,
    caches: StructureCaches,
    is_tls: bool,
    rescan_s: float = RESCAN_S,
    watcher: MaildirWatcher | None = None,
    idlers: IdleWaiters | None = None,
    executor: Executor | None = None,
) -> None:
    """Run one connection to its end; never raises."""
    peer = writer.get_extra_info("peername")
    ip = plain_ip(str(peer[0])) if peer else "unknown"
    conn_id = new_connection_id("i")
    clog = connection_logger(__name__, conn_id, ip)
    ticket = connections.admit(ip)
    if isinstance(ticket, Refusal):
        clog.warning("refusing %s: %s", ip, ticket.value)
        writer.write(response.bye(ticket.value, "UNAVAILABLE"))
        await _close(writer)
        return
    session = Session(
        ctx,
        peer_ip=ip,
        is_tls=is_tls,
        conn_id=conn_id,
        limits=limits,
        caches=caches,
        starttls_available=not is_tls,
        rescan_s=rescan_s,
    )
    session.watcher = watcher  # NOTIFY watches other folders through it (imap/session_notify.py)
    session.executor = executor
    clog.debug("connection from %s (tls=%s)", ip, is_tls)

    wire = _Wire(writer)
    write = wire.write

    try:
        await write(session.greeting())
        if idlers is None:  # a connection outside a service: polls, but hears of shutdown
            idlers = IdleWaiters(ctx.events, None, ctx.stopping)
        await _loop(ctx, session, reader, wire, connections, ticket, idlers)
    except RemoteProtocolError as exc:
        clog.info("closing: %s", exc.reason)
        with contextlib.suppress(ConnectionError):
            await write(response.bye(exc.reason, exc.code))
    except _ShuttingDownError:
        with contextlib.suppress(ConnectionError):
            await write(response.bye("server shutting down"))
    except TimeoutError:
        if session.user is None:
            clog.info("no login within %s s", ctx.config.imap.login_timeout_s)
        else:
            clog.info("autologout after %s s without a command", ctx.config.imap.idle_timeout_s)
        with contextlib.suppress(ConnectionError):
            await write(response.bye("autologout: idle for too long"))
    except (ConnectionError, OSError) as exc:
        clog.debug("connection lost: %s", exc)
    except asyncio.CancelledError:
        # The server is shutting down. This task is the connection's top level: ending it
        # normally (not as cancelled) keeps asyncio from logging the cancellation as an error.
        with contextlib.suppress(Exception):
            writer.write(wire.encode(response.bye("server shutting down")))
    except Exception:  # a bug: log it, and keep the server up
        clog.exception("unexpected error")
        with contextlib.suppress(Exception):
            await write(response.bye("internal server error", "SERVERBUG"))
    finally:
        session.close()
        connections.release(ticket)
        await _close(writer)


class _Wire:
    """The connection's outgoing side and its DEFLATE layer, once COMPRESS is active."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.deflate: Deflate | None = None

    def encode(self, data: bytes) -> bytes:
        return data if self.deflate is None else self.deflate.compress(data)

    async def write(self, data: bytes) -> None:
        self.writer.write(self.encode(data))
        await self.writer.drain()


async def _loop(
    ctx: ServerContext,
    session: Session,
    reader: IdleReader,
    wire: _Wire,
    connections: ConnectionLimiter,
    ticket: Ticket,
    idlers: IdleWaiters,
) -> None:
    writer, write = wire.writer, wire.write
    loop = asyncio.get_running_loop()
    # Deadlines: the login within login_timeout_s of connecting; after it, each whole command
    # within idle_timeout_s of the previous one. Bytes that trickle in extend neither.
    deadline = loop.time() + ctx.config.imap.login_timeout_s
    while True:
        while (event := session.proto.next_event()) is not None:
            await session.handle(event, write)
            if session.is_logged_out:
                return
            if session.user is not None:
                if not ticket.is_authenticated:
                    connections.authenticated(ticket)
                deadline = loop.time() + ctx.config.imap.idle_timeout_s
            if session.starttls_requested:
                session.starttls_requested = False
                # Cleartext bytes already received after STARTTLS, whether framed or still in
                # the StreamReader's buffer (no public API shows it), would be taken as if
                # they had come over TLS: refuse them (CVE-2011-0411's command injection).
                unread: bytes = getattr(reader, "_buffer", b"")
                if not session.proto.is_idle or unread:
                    raise RemoteProtocolError("data pipelined after STARTTLS")
                await writer.start_tls(ctx.tls.current, ssl_handshake_timeout=TLS_HANDSHAKE_S)
                session.is_tls = True
            if session.compress_requested:
                # RFC 4978 §3: both directions are DEFLATE from the byte after the OK; what
                # the client pipelined after COMPRESS is compressed already.
                session.compress_requested, session.is_compressed = False, True
                wire.deflate = Deflate()
                if pipelined := session.proto.framer.take_buffered():
                    session.proto.receive_data(wire.deflate.decompress(pipelined))
        if ctx.stopping.is_set():
            raise _ShuttingDownError
        timeout_s = deadline - loop.time()
        if timeout_s <= 0:
            raise TimeoutError
        if wire.deflate is not None and wire.deflate.has_more:
            # Inflating stopped at its bound: go on before reading more (imap/compress.py).
            session.proto.receive_data(wire.deflate.more())
            continue
        # RFC 5465 §5: notifications between commands, never inside one (a literal's wait).
        is_between = session.proto.is_idle
        if session.notify_pending and is_between:
            await session.notify_flush(write)
            if session.is_logged_out:  # the selected mailbox went away: BYE sent
                return
            continue
        data: bytes | None
        if session.is_idling:
            data = await _idle_read(ctx, session, reader, write, timeout_s, idlers)
        else:
            if not is_between:
                _quick_ack(writer)  # the rest of a command is awaited: see _quick_ack
            early = None if wire.deflate is not None else functools.partial(_early, session, wire)
            data = await _read(
                ctx, reader, timeout_s, idlers, session.notify_wake if is_between else None, early
            )
            if data is None:
                continue  # NOTIFY has something to say, or `early` framed what came
        if not data:
            return
        if wire.deflate is not None:
            data = wire.deflate.decompress(data)
        session.proto.receive_data(data)


def _early(session: Session, wire: _Wire, data: bytes) -> None:
    """Bytes that came while the session waited, taken in from the read callback: a
    synchronizing literal's "+" goes out at once (ImapProtocol.continuation_now)."""
    session.proto.receive_data(data)
    plus = session.proto.continuation_now()
    if plus is not None:
        wire.writer.write(plus)


def _quick_ack(writer: asyncio.StreamWriter) -> None:
    """ACK what we got now, not after Linux's delayed-ACK timer (40 ms), while a command is
    incomplete. imaplib (and other clients) write a literal and the CRLF after it separately,
    and Nagle's algorithm holds that CRLF until our ACK: each APPEND would wait 40 ms."""
    sock = writer.get_extra_info("socket")
    if sock is not None and _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


class _ShuttingDownError(Exception):
    """`serve` is stopping: say BYE between commands (RFC 9051 §7.1.5) and close."""


async def _read(
    ctx: ServerContext,
    reader: IdleReader,
    timeout_s: float,
    idlers: IdleWaiters,
    wake: asyncio.Event | None = None,
    early: Callable[[bytes], None] | None = None,
) -> bytes | None:
    """The next bytes from the client; TimeoutError after `timeout_s`; _ShuttingDownError
    as soon as the server begins to stop (a command in progress is never cut short); None
    when `wake` (NOTIFY's) is set first, or when `early` took the bytes: it is called with
    them from the read callback itself (`_early`). Waits on one `Waiter` that the reader and
    shutdown wake, as IDLE does: no tasks per read (three tasks and asyncio.wait per command
    were a tenth of the server's CPU with ten busy clients)."""
    if not reader.has_input:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        waiter = Waiter()
        took = False

        def arrived() -> None:
            nonlocal took
            waiter.wake()
            if early is not None and (data := reader.take_nowait()):
                took = True
                early(data)

        reader.on_input = arrived
        idlers.add(waiter, None)
        notified = None
        if wake is not None:  # RFC 5465: NOTIFY sessions only
            notified = asyncio.ensure_future(wake.wait())
            notified.add_done_callback(waiter.wake)
        try:
            while not reader.has_input:
                if took:
                    return None
                if ctx.stopping.is_set():
                    raise _ShuttingDownError
                if wake is not None and wake.is_set():
                    return None
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError
                await waiter.wait(remaining)
        finally:
            reader.on_input = None
            idlers.discard(waiter, None)
            if notified is not None:
                notified.remove_done_callback(waiter.wake)
                notified.cancel()
    return await reader.read(READ_BYTES)


def _idle_key(ctx: ServerContext, session: Session) -> Key | None:
    """The folder whose changes wake the session: (owner, folder) as the store publishes."""
    if session.user is None or session.selected is None:
        return None
    user, folder = session.user, session.selected.name
    if isinstance(ctx.store, SharedStore):  # a shared folder changes under its owner's name
        user, folder = ctx.store.locate(user, folder)
    return user, folder


async def _idle_read(
    ctx: ServerContext,
    session: Session,
    reader: IdleReader,
    write: Write,
    timeout_s: float,
    idlers: IdleWaiters,
) -> bytes:
    """Wait for client bytes while reporting mailbox changes (RFC 2177). What waits per
    session is one `Waiter` (imap/idle.py), woken by the reader too: no task per event
    source, and no read task."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    waiter = Waiter()
    reader.on_input = waiter.wake
    key = _idle_key(ctx, session)
    is_watched = idlers.add(waiter, key)
    try:
        rescan_s = max(session.rescan_s, WATCHED_RESCAN_S) if is_watched else session.rescan_s
        await session.idle_poll(write)  # changes made before we started watching
        if session.is_logged_out:
            return b""
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError
            if reader.has_input:
                return await reader.read(READ_BYTES)  # at once: the bytes are there
            if ctx.stopping.is_set():
                raise _ShuttingDownError
            notified = None
            if session.notify_wake is not None:  # RFC 5465 during IDLE: a wait of its own
                notified = asyncio.ensure_future(session.notify_wake.wait())
                notified.add_done_callback(waiter.wake)
            try:
                await waiter.wait(min(rescan_s, remaining))
            finally:
                if notified is not None:
                    notified.remove_done_callback(waiter.wake)
                    notified.cancel()
            if reader.has_input or ctx.stopping.is_set():
                continue
            if session.notify_pending:
                await session.notify_flush(write)
                if session.is_logged_out:
                    return b""
            await session.idle_poll(write)  # a change, or the rescan timer
            if session.is_logged_out:  # e.g. the selected mailbox was deleted: BYE sent
                return b""
    finally:
        idlers.discard(waiter, key)
        reader.on_input = None


async def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), CLOSE_S)
