"""One IMAP session: executes parsed commands on the `MailStore` and writes the responses.

RFC 9051/3501 semantics for IMAP4rev1 clients, plus IDLE (2177), UIDPLUS (4315), MOVE (6851),
NAMESPACE (2342), ID (2971), ENABLE (5161), UNSELECT (3691), LITERAL+ (7888), SASL-IR (4959),
CHILDREN (3348), SPECIAL-USE/CREATE-SPECIAL-USE (6154), LIST-EXTENDED (5258), LIST-STATUS
(5819), ESEARCH (4731), SEARCHRES (5182), BINARY (3516) and QUOTA (9208).

The transport (`imap/server.py`) feeds bytes to `self.proto` and hands each event to
`handle()` with a `write` coroutine; it owns sockets, TLS, timeouts and IDLE's waiting.

Invariants:
- The store is synchronous: every call goes through `asyncio.to_thread`.
- The selected folder is held as a list of `MessageInfo` in sequence-number order. It is
  brought up to date (`_sync`) before each command in the selected state; new messages become
  `* n EXISTS`, flag changes `* n FETCH (FLAGS ...)`, vanished messages `* n EXPUNGE` — except
  during FETCH, STORE, SEARCH, COPY and MOVE by sequence number, when RFC 9051 §7.5.1 forbids
  EXPUNGE (numbers would shift under the client); those messages stay until the next command
  that may report them, and reading one gives `NO [EXPUNGEISSUED]`.
- Nothing answers APPEND/COPY with OK before the store returned (it fsyncs).
- Syntax errors are `BAD`; refusals `NO [CODE]` (a StoreError's `.code`); anything unexpected
  `NO [SERVERBUG]` with the traceback logged. The session survives all three.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import ipaddress
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from delivery.cache import StructureCache, StructureCaches
from delivery.store import (
    HIERARCHY_DELIMITER,
    INBOX,
    Flag,
    FlagMode,
    FolderInfo,
    FolderNotFoundError,
    FolderSnapshot,
    MessageGoneError,
    MessageInfo,
    SpecialUse,
    StoreError,
    UnknownUserError,
)
from imap import commands as c
from imap import fetch, response, search, utf7
from imap.protocol import (
    BadCommand,
    CommandReceived,
    Event,
    IdleDone,
    ImapProtocol,
    SaslResponse,
    SendContinuation,
    State,
    TooBig,
    list_pattern,
)
from imap.sequence import SeqRange, SequenceSet, compress, compress_ordered
from mailstack.context import ServerContext
from mailstack.logs import connection_logger

Write = Callable[[bytes], Awaitable[None]]

SYSTEM_FLAGS = tuple(f.value for f in Flag)
RECENT = "\\Recent"
MAX_BAD_COMMANDS = 50  # consecutive BADs before we give up on a client (a confused script)
PREAUTH_MAX_LITERAL_BYTES = 64 * 1024
STRUCTURE_CACHE_SIZE = 5000  # per session; a Structure is a few hundred bytes
FETCH_BATCH = 50  # messages rendered per worker-thread trip, so big FETCHes stream
CAPABILITIES = (
    "IMAP4rev1", "LITERAL+", "SASL-IR", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT",
    "UIDPLUS", "MOVE", "CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED",
    "LIST-STATUS", "ESEARCH", "SEARCHRES", "BINARY", "QUOTA", "QUOTA=RES-STORAGE",
)
_MSN_COMMANDS = (c.Fetch, c.Store, c.Search, c.Copy, c.Move)


class _NoError(Exception):
    """Answer the command with `NO [code] text`."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class _BadError(Exception):
    """Answer the command with `BAD text`."""


@dataclass
class ConnectionLimits:
    """Open connections per client address and sessions per account (shared by listeners)."""

    per_ip: int
    per_user: int
    by_ip: dict[str, int] = field(default_factory=dict)
    by_user: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def _acquire(table: dict[str, int], key: str, limit: int) -> bool:
        if table.get(key, 0) >= limit:
            return False
        table[key] = table.get(key, 0) + 1
        return True

    @staticmethod
    def _release(table: dict[str, int], key: str) -> None:
        n = table.get(key, 0) - 1
        if n <= 0:
            table.pop(key, None)
        else:
            table[key] = n

    def acquire_ip(self, ip: str) -> bool:
        return self._acquire(self.by_ip, ip, self.per_ip)

    def release_ip(self, ip: str) -> None:
        self._release(self.by_ip, ip)

    def acquire_user(self, user: str) -> bool:
        return self._acquire(self.by_user, user, self.per_user)

    def release_user(self, user: str) -> None:
        self._release(self.by_user, user)


@dataclass
class Selected:
    """The selected folder as this session has reported it to the client."""

    name: str
    readonly: bool
    uid_validity: int
    uid_next: int
    keywords: tuple[str, ...]
    messages: list[MessageInfo]  # index = sequence number - 1
    recent: set[int]
    saved: tuple[int, ...] = ()  # SEARCHRES "$": UIDs (RFC 5182)

    @property
    def largest_uid(self) -> int:
        return self.messages[-1].uid if self.messages else 0


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 and ::1, also as seen on a dual-stack socket (::ffff:127.0.0.1)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


# The structure caches of one serving context (an open SQLite file per account), closed when
# the context goes; keyed by id as imap/server.py's connection limits, for the same reason.
_CACHES: dict[int, StructureCaches] = {}


def caches_for(ctx: ServerContext) -> StructureCaches:
    caches = _CACHES.get(id(ctx))
    if caches is None:
        caches = _CACHES[id(ctx)] = StructureCaches()
        weakref.finalize(ctx, _drop_caches, id(ctx))
    return caches


def _drop_caches(ctx_id: int) -> None:
    caches = _CACHES.pop(ctx_id, None)
    if caches is not None:
        caches.close()


def _flags_of(info: MessageInfo, recent: set[int]) -> bytes:
    return response.flag_list(sorted(info.flags | {RECENT} if info.uid in recent else info.flags))


class Session:
    """The per-connection IMAP state; see the module docstring."""

    def __init__(self, ctx: ServerContext, *, peer_ip: str, is_tls: bool, conn_id: str,
                 limits: ConnectionLimits, starttls_available: bool = True,
                 rescan_s: float = 3.0) -> None:
        self.ctx = ctx
        self.peer_ip = peer_ip
        self.is_tls = is_tls
        self.conn_id = conn_id
        self.limits = limits
        self.starttls_available = starttls_available
        self.rescan_s = rescan_s
        # Before login nothing needs a big literal (a password does not): an anonymous client
        # must not make us buffer a 50 MB LITERAL+ (RFC 7888 §4 lets servers refuse those).
        self.proto = ImapProtocol(max_literal_bytes=PREAUTH_MAX_LITERAL_BYTES)
        self.user: str | None = None
        self.selected: Selected | None = None
        self.idle_tag: str | None = None
        self.starttls_requested = False
        self._sasl_tag: str | None = None
        self._bad_in_a_row = 0
        # (folder, UIDVALIDITY, UID) -> ENVELOPE/BODY/BODYSTRUCTURE, oldest first
        self._structures: dict[tuple[str, int, int], fetch.Structure] = {}
        self.log = connection_logger(__name__, conn_id, peer_ip)

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_logged_out(self) -> bool:
        return self.proto.state is State.LOGOUT

    @property
    def may_authenticate(self) -> bool:
        """LOGIN/AUTHENTICATE only over TLS, unless configured or on loopback (RFC 9051
        §11.1: servers must not allow cleartext passwords by default)."""
        return (self.is_tls or self.ctx.config.imap.allow_plaintext_auth
                or is_loopback(self.peer_ip))

    def capabilities(self) -> list[str]:
        caps = list(CAPABILITIES)
        if self.proto.state is State.NOT_AUTHENTICATED:
            if not self.is_tls and self.starttls_available:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.may_authenticate else "LOGINDISABLED")
        return caps

    def greeting(self) -> bytes:
        caps = " ".join(self.capabilities())
        return response.untagged_status("OK", f"{self.ctx.config.server.hostname} ready",
                                        f"CAPABILITY {caps}")

    def close(self) -> None:
        """Release what the session holds (the transport calls this once, at the end)."""
        if self.user is not None:
            self.limits.release_user(self.user)
            self.user = None

    # -- events --------------------------------------------------------------------------------
    async def handle(self, event: Event, write: Write) -> None:
        """Act on one protocol event; raises nothing but the transport's write errors."""
        match event:
            case SendContinuation(data):
                await write(data)
            case TooBig(tag, size):
                await write(response.no(tag, f"literal of {size} octets is too large",
                                        "TOOBIG"))
            case BadCommand(tag, reason):
                await self._bad(write, tag, reason)
            case SaslResponse():
                await self._sasl_step(event, write)
            case IdleDone(is_valid):
                tag, self.idle_tag = self.idle_tag or "*", None
                if is_valid:
                    await write(response.ok(tag, "IDLE terminated"))
                else:
                    await write(response.bad(tag, "expected DONE to end IDLE"))
            case CommandReceived(command):
                await self._run(command, write)

    async def _bad(self, write: Write, tag: str, reason: str) -> None:
        self._bad_in_a_row += 1
        await write(response.bad(tag, reason))
        if self._bad_in_a_row >= MAX_BAD_COMMANDS:
            await write(response.bye("too many invalid commands"))
            self.proto.state = State.LOGOUT

    async def _run(self, command: c.Command, write: Write) -> None:
        self._bad_in_a_row = 0
        tag = command.tag
        # Command names only: arguments may hold passwords or message text (STYLE.md logging).
        self.log.debug("C: %s %s", tag, type(command).__name__.upper())
        try:
            if self.selected is not None and not isinstance(
                    command, c.Close | c.Unselect | c.Logout | c.Select):
                await self._sync(write, allow_expunge=not (
                    isinstance(command, _MSN_COMMANDS) and not getattr(command, "uid", False)))
                if self.is_logged_out:  # the folder vanished under us: BYE already sent
                    return
            await self._dispatch(command, write)
        except _BadError as exc:
            await write(response.bad(tag, str(exc)))
        except _NoError as exc:
            await write(response.no(tag, exc.text, exc.code))
        except StoreError as exc:
            await write(response.no(tag, str(exc) or type(exc).__name__, exc.code))
        except (ConnectionError, asyncio.CancelledError):
            raise
        except Exception:
            self.log.exception("%s failed", type(command).__name__)
            await write(response.no(tag, "internal server error, logged", "SERVERBUG"))

    async def _dispatch(self, command: c.Command, write: Write) -> None:
        tag = command.tag
        match command:
            case c.Capability():
                await write(response.capability(self.capabilities()))
                await write(response.ok(tag, "CAPABILITY completed"))
            case c.Noop() | c.Check():
                await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))
            case c.Logout():
                await write(response.bye("logging out"))
                await write(response.ok(tag, "LOGOUT completed"))
                self.proto.state = State.LOGOUT
            case c.Id():
                await write(response.untagged(b'ID ("name" "mailstack" "vendor" "mailstack")'))
                await write(response.ok(tag, "ID completed"))
            case c.StartTls():
                if self.is_tls or not self.starttls_available:
                    raise _BadError("TLS is already active" if self.is_tls
                                    else "STARTTLS is not available here")
                await write(response.ok(tag, "begin TLS negotiation now"))
                self.starttls_requested = True
            case c.Login(username=user, password=password):
                await self._login(tag, user, password, write)
            case c.Authenticate():
                await self._authenticate(command, write)
            case c.Enable():
                # We implement no ENABLE-able extension (RFC 5161 §3.1: list what was enabled).
                await write(response.untagged(b"ENABLED"))
                await write(response.ok(tag, "ENABLE completed"))
            case c.Namespace():
                await write(response.untagged(b'NAMESPACE (("" ".")) NIL NIL'))
                await write(response.ok(tag, "NAMESPACE completed"))
            case c.Idle():
                await self._idle(tag, write)
            case c.GetQuota() | c.GetQuotaRoot() | c.SetQuota():
                await self._quota(command, write)
            case c.Select() | c.Create() | c.Delete() | c.Rename() | c.Subscribe() \
                    | c.Unsubscribe() | c.List() | c.Lsub() | c.Status() | c.Append():
                await self._mailbox_command(command, write)
            case c.Close() | c.Unselect() | c.Expunge() | c.Search() | c.Fetch() | c.Store() \
                    | c.Copy() | c.Move():
                await self._message_command(command, write)
            case _:  # pragma: no cover - every Command subclass is matched above
                raise _BadError(f"{type(command).__name__} is not implemented")

    # -- authentication ------------------------------------------------------------------------
    async def _login(self, tag: str, user: str, password: str, write: Write) -> None:
        if not self.may_authenticate:
            raise _NoError("use STARTTLS or the implicit-TLS port first", "PRIVACYREQUIRED")
        throttle = self.ctx.throttle
        if throttle.is_locked_out(self.peer_ip, user):
            self.log.warning("login refused for %s: too many failures", user)
            raise _NoError("too many failed logins; try again later", "UNAVAILABLE")
        delay = throttle.delay_s(self.peer_ip)
        if delay:
            await asyncio.sleep(delay)
        address = await asyncio.to_thread(self.ctx.accounts.authenticate, user, password)
        if address is None:
            throttle.record_failure(self.peer_ip, user)
            self.log.info("login failed for %r from %s", user, self.peer_ip)
            raise _NoError("invalid credentials", "AUTHENTICATIONFAILED")
        throttle.record_success(self.peer_ip, user)
        if not self.limits.acquire_user(address):
            raise _NoError("too many sessions for this account", "LIMIT")
        try:
            await asyncio.to_thread(self.ctx.store.list_folders, address)
        except UnknownUserError:  # an account made before its Maildir: make it now
            await asyncio.to_thread(self.ctx.store.create_account, address)
        self.user = address
        self.proto.state = State.AUTHENTICATED
        self.proto.framer.set_max_literal_bytes(self.ctx.config.smtp.max_message_size)
        self.log.info("login %s from %s", address, self.peer_ip)
        caps = " ".join(self.capabilities())
        await write(response.ok(tag, "logged in", f"CAPABILITY {caps}"))

    async def _authenticate(self, command: c.Authenticate, write: Write) -> None:
        if command.mechanism != "PLAIN":
            raise _NoError(f"mechanism {command.mechanism} is not supported", "CANNOT")
        if not self.may_authenticate:
            raise _NoError("use STARTTLS or the implicit-TLS port first", "PRIVACYREQUIRED")
        if command.initial_response is None:
            self._sasl_tag = command.tag
            self.proto.expect_sasl_response()
            await write(response.continuation())
            return
        await self._sasl_plain(command.tag, command.initial_response, write)

    async def _sasl_step(self, event: SaslResponse, write: Write) -> None:
        tag, self._sasl_tag = self._sasl_tag or "*", None
        if event.is_cancel:  # RFC 9051 §6.2.2: "*" cancels, answered with BAD
            await write(response.bad(tag, "AUTHENTICATE cancelled"))
            return
        try:
            await self._sasl_plain(tag, event.data, write)
        except _BadError as exc:
            await write(response.bad(tag, str(exc)))
        except _NoError as exc:
            await write(response.no(tag, exc.text, exc.code))

    async def _sasl_plain(self, tag: str, data: str, write: Write) -> None:
        # RFC 4616: message = [authzid] UTF8NUL authcid UTF8NUL passwd
        try:
            raw = b"" if data == "=" else base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise _BadError("invalid base64 in SASL response") from None
        parts = raw.split(b"\x00")
        if len(parts) != 3:
            raise _BadError("malformed SASL PLAIN message")
        try:
            authz, authc, password = (p.decode("utf-8") for p in parts)
        except UnicodeDecodeError:
            raise _NoError("invalid credentials", "AUTHENTICATIONFAILED") from None
        if authz and authz.lower() != authc.lower():
            raise _NoError("acting as another user is not allowed", "AUTHORIZATIONFAILED")
        await self._login(tag, authc, password, write)

    # -- QUOTA (RFC 9208) ----------------------------------------------------------------------
    async def _quota(self, command: c.GetQuota | c.GetQuotaRoot | c.SetQuota,
                     write: Write) -> None:
        """One quota root, "", holds every mailbox of the account; only STORAGE is limited
        (in units of 1024 octets, RFC 9208 §5.1). An unlimited account has no quota root."""
        user = self._require_user()
        tag = command.tag
        if isinstance(command, c.SetQuota):
            raise _NoError("quotas are set by the administrator (mailstack user quota)",
                           "NOPERM")
        limit = await asyncio.to_thread(self.ctx.accounts.quota_bytes, user)
        if isinstance(command, c.GetQuotaRoot):
            name = _checked_name(command.mailbox)
            await self._snapshot(name, claim_recent=False)  # NO [NONEXISTENT] if missing
            roots = b' ""' if limit else b""
            await write(response.untagged(b"QUOTAROOT " + response.mailbox(name) + roots))
        elif command.root != "" or not limit:  # GETQUOTA
            raise _NoError(f"no quota root {command.root!r}", "NONEXISTENT")
        if limit:
            used = await asyncio.to_thread(self.ctx.store.usage_bytes, user)
            await write(response.untagged(
                b'QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, limit // 1024)))
        await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))

    # -- IDLE ----------------------------------------------------------------------------------
    async def _idle(self, tag: str, write: Write) -> None:
        self.idle_tag = tag
        self.proto.expect_done()
        await write(response.continuation("idling"))

    @property
    def is_idling(self) -> bool:
        return self.idle_tag is not None

    async def idle_poll(self, write: Write) -> None:
        """Report changes while idling (the transport calls this on a store event or timer)."""
        if self.selected is not None:
            try:
                await self._sync(write, allow_expunge=True)
            except StoreError as exc:
                self.log.warning("rescan during IDLE failed: %s", exc)

    # -- the selected folder -------------------------------------------------------------------
    def _require_user(self) -> str:
        if self.user is None:  # pragma: no cover - the protocol checks the state first
            raise _BadError("not logged in")
        return self.user

    def _sel(self) -> Selected:
        if self.selected is None:  # pragma: no cover - the protocol checks the state first
            raise _BadError("no mailbox selected")
        return self.selected

    async def _snapshot(self, folder: str, *, claim_recent: bool) -> FolderSnapshot:
        snap: FolderSnapshot = await asyncio.to_thread(
            self.ctx.store.snapshot, self._require_user(), folder, claim_recent=claim_recent)
        return snap

    async def _sync(self, write: Write, *, allow_expunge: bool) -> None:
        """Bring the selected folder up to date and report the differences to the client."""
        sel = self.selected
        if sel is None:
            return
        try:
            snap = await self._snapshot(sel.name, claim_recent=not sel.readonly)
        except FolderNotFoundError:
            # Deleted or renamed under us: nothing can be reported sensibly (Dovecot does this).
            await write(response.bye("the selected mailbox was deleted or renamed"))
            self.proto.state = State.LOGOUT
            self.selected = None
            return
        if snap.uid_validity != sel.uid_validity:
            await write(response.bye("UIDVALIDITY of the selected mailbox changed"))
            self.proto.state = State.LOGOUT
            self.selected = None
            return
        out: list[bytes] = []
        current = {m.uid: m for m in snap.messages}
        if allow_expunge:
            for seq in range(len(sel.messages), 0, -1):  # highest first: lower numbers hold
                if sel.messages[seq - 1].uid not in current:
                    del sel.messages[seq - 1]
                    out.append(response.expunge(seq))
        for seq, old in enumerate(sel.messages, start=1):
            new = current.get(old.uid)
            if new is not None and new.flags != old.flags:
                sel.messages[seq - 1] = new
                out.append(response.fetch(seq, [b"UID %d" % new.uid,
                                                b"FLAGS " + _flags_of(new, sel.recent)]))
        old_count, old_recent = len(sel.messages), len(sel.recent)
        largest = sel.largest_uid
        sel.messages.extend(m for m in snap.messages if m.uid > largest)
        if not sel.readonly:
            sel.recent |= snap.recent_uids
        sel.recent &= set(current)
        sel.uid_next = snap.uid_next
        if len(sel.messages) != old_count:
            out.append(response.exists(len(sel.messages)))
        if len(sel.recent) != old_recent:
            out.append(response.recent(len(sel.recent)))
        if set(snap.keywords) - set(sel.keywords):
            sel.keywords = snap.keywords
            out.append(self._flags_response(sel.keywords))
        if out:
            await write(b"".join(out))

    @staticmethod
    def _flags_response(keywords: tuple[str, ...]) -> bytes:
        return response.untagged(b"FLAGS " + response.flag_list((*SYSTEM_FLAGS, *keywords)))

    def _targets(self, seqset: SequenceSet, *, uid: bool) -> list[tuple[int, MessageInfo]]:
        """(sequence number, message) pairs named by a sequence set, in order."""
        sel = self._sel()
        if seqset.is_saved:
            saved = set(sel.saved)
            return [(i, m) for i, m in enumerate(sel.messages, 1) if m.uid in saved]
        if uid:
            uids = set(seqset.select([m.uid for m in sel.messages], sel.largest_uid))
            return [(i, m) for i, m in enumerate(sel.messages, 1) if m.uid in uids]
        count = len(sel.messages)
        for r in seqset.ranges:
            # RFC 9051 §6.4.5: a number beyond the mailbox is an error. A range with "*" is
            # not: "5:*" in a 3-message mailbox means 3:5, and "1:*" in an empty one nothing
            # (clients send it blindly after SELECT).
            if r.start is not None and r.end is not None and max(r.start, r.end) > count:
                raise _BadError(f"no message {max(r.start, r.end)} (the mailbox has {count})")
        return [(n, sel.messages[n - 1]) for n in seqset.expand(count)]

    # -- mailbox commands (authenticated state) ------------------------------------------------
    async def _mailbox_command(self, command: c.Command, write: Write) -> None:
        user = self._require_user()
        store = self.ctx.store
        tag = command.tag
        match command:
            case c.Select(mailbox=name, readonly=readonly):
                await self._select(tag, _checked_name(name), readonly, write)
            case c.Create(mailbox=name, special_use=uses):
                name = _checked_name(name).rstrip(HIERARCHY_DELIMITER)
                if name.upper() == INBOX:
                    raise _NoError("INBOX always exists", "ALREADYEXISTS")
                use = _special_use(uses)
                await asyncio.to_thread(store.create_folder, user, name, use)
                await write(response.ok(tag, "CREATE completed"))
            case c.Delete(mailbox=name):
                name = _checked_name(name)
                if name == INBOX:
                    raise _NoError("INBOX cannot be deleted", "CANNOT")
                if self.selected is not None and self.selected.name == name:
                    raise _NoError("the mailbox is selected; close it first", "INUSE")
                await asyncio.to_thread(store.delete_folder, user, name)
                await write(response.ok(tag, "DELETE completed"))
            case c.Rename(old=old, new=new):
                old, new = _checked_name(old), _checked_name(new)
                if new == INBOX:
                    raise _NoError("INBOX already exists", "ALREADYEXISTS")
                await asyncio.to_thread(store.rename_folder, user, old, new)
                await write(response.ok(tag, "RENAME completed"))
            case c.Subscribe(mailbox=name) | c.Unsubscribe(mailbox=name):
                await asyncio.to_thread(store.set_subscribed, user, _checked_name(name),
                                        isinstance(command, c.Subscribe))
                await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))
            case c.List():
                await self._list(command, write)
            case c.Lsub(reference=reference, pattern=pattern):
                await self._list(c.List(tag, reference, (pattern,), ("SUBSCRIBED",)), write,
                                 lsub=True)
            case c.Status(mailbox=name, items=items):
                line = await self._status_line(_checked_name(name), items)
                await write(line)
                await write(response.ok(tag, "STATUS completed"))
            case c.Append():
                await self._append(command, write)

    async def _select(self, tag: str, name: str, readonly: bool, write: Write) -> None:
        had_selection = self.selected is not None
        self.selected = None
        self.proto.state = State.AUTHENTICATED
        if had_selection:
            await write(response.untagged_status("OK", "previous mailbox closed", "CLOSED"))
        try:
            snap = await self._snapshot(name, claim_recent=not readonly)
        except FolderNotFoundError:
            raise _NoError(f"no mailbox {name}", "NONEXISTENT") from None
        sel = Selected(name, readonly, snap.uid_validity, snap.uid_next, snap.keywords,
                       list(snap.messages), set(snap.recent_uids))
        permanent = response.flag_list((*SYSTEM_FLAGS, *snap.keywords, "\\*")).decode()
        out = [
            self._flags_response(snap.keywords),
            response.exists(len(sel.messages)),
            response.recent(len(sel.recent)),
            response.untagged_status("OK", "flags that can be stored",
                                     "PERMANENTFLAGS ()" if readonly else
                                     f"PERMANENTFLAGS {permanent}"),
            response.untagged_status("OK", "UIDs valid", f"UIDVALIDITY {snap.uid_validity}"),
            response.untagged_status("OK", "predicted next UID", f"UIDNEXT {snap.uid_next}"),
        ]
        unseen = next((i for i, m in enumerate(sel.messages, 1) if Flag.SEEN not in m.flags),
                      None)
        if unseen is not None:  # RFC 3501 §6.3.1 (IMAP4rev1 clients still use it)
            out.append(response.untagged_status("OK", "first unseen", f"UNSEEN {unseen}"))
        await write(b"".join(out))
        self.selected = sel
        self.proto.state = State.SELECTED
        await self._prune_cache_once()
        await write(response.ok(tag, "EXAMINE completed" if readonly else "SELECT completed",
                                "READ-ONLY" if readonly else "READ-WRITE"))

    async def _prune_cache_once(self) -> None:
        """Drop cached structures of messages expunged anywhere in the account, once per
        account and process (the first SELECT): rows are keyed by message, not folder, so
        only a look at every folder tells which are dead."""
        user = self._require_user()
        cache = self._disk_cache(user)
        if cache.is_pruned:
            return
        cache.is_pruned = True
        store = self.ctx.store

        def live_keys() -> set[str] | None:
            keys: set[str] = set()
            try:
                for folder in store.list_folders(user):
                    if folder.is_selectable:
                        keys.update(m.key for m in store.snapshot(user, folder.name).messages)
            except (StoreError, OSError) as exc:
                # A folder we cannot read may hold live messages: prune nothing this time.
                self.log.debug("structure cache not pruned: %s", exc)
                return None
            return keys

        keys = await asyncio.to_thread(live_keys)
        if keys is None:
            return
        dropped = await asyncio.to_thread(cache.prune, keys)
        if dropped:
            self.log.debug("structure cache: dropped %d expunged messages", dropped)

    async def _list(self, command: c.List, write: Write, *, lsub: bool = False) -> None:
        user = self._require_user()
        tag = command.tag
        if not lsub and command.patterns == ("",):
            # RFC 9051 §6.3.9: an empty pattern asks for the delimiter and the root.
            await write(response.untagged(b'LIST (\\Noselect) "." ""'))
            await write(response.ok(tag, "LIST completed"))
            return
        folders = await asyncio.to_thread(self.ctx.store.list_folders, user)
        patterns = [list_pattern(command.reference, p, HIERARCHY_DELIMITER)
                    for p in command.patterns]
        selection, returns = set(command.selection), set(command.returns)
        subscribed_only = "SUBSCRIBED" in selection
        by_name = {f.name: f for f in folders}
        ghosts: set[str] = set()
        if subscribed_only:
            # RFC 5258 §3.1: subscribed names whose mailbox does not exist are listed too.
            names = await asyncio.to_thread(self.ctx.store.subscriptions, user)
            ghosts = set(names) - set(by_name)
            folders = [*folders, *(FolderInfo(n, None, subscribed=True, has_children=False,
                                              is_selectable=False) for n in ghosts)]
        out: list[bytes] = []
        for folder in sorted(folders, key=lambda f: (f.name != INBOX, f.name)):
            if not any(p.fullmatch(folder.name) for p in patterns):
                continue
            child_info = b""
            if subscribed_only and not folder.subscribed:
                # RFC 5258 §3.5 RECURSIVEMATCH: a parent listed for its subscribed children.
                if "RECURSIVEMATCH" in selection and any(
                        n.startswith(folder.name + HIERARCHY_DELIMITER) and f.subscribed
                        for n, f in by_name.items()):
                    child_info = b' ("CHILDINFO" ("SUBSCRIBED"))'
                else:
                    continue
            if "SPECIAL-USE" in selection and folder.special_use is None:
                continue
            attrs = []
            if lsub:
                # LSUB (RFC 3501 §6.3.9) predates CHILDREN, SPECIAL-USE and \NonExistent: a
                # name that cannot be selected is \Noselect there.
                if not folder.is_selectable:
                    attrs.append("\\Noselect")
            elif folder.name in ghosts:
                attrs.append("\\NonExistent")  # RFC 5258 §3: implies \Noselect
            else:
                if not folder.is_selectable:  # a parent implied by its children (§7.3.1)
                    attrs.append("\\Noselect")
                attrs.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
                if folder.special_use is not None:
                    attrs.append(str(folder.special_use))
            if (subscribed_only or "SUBSCRIBED" in returns) and folder.subscribed and not lsub:
                attrs.append("\\Subscribed")
            kind = b"LSUB" if lsub else b"LIST"
            out.append(response.untagged(kind + b" " + response.flag_list(attrs) + b' "." '
                                         + response.mailbox(folder.name) + child_info))
            if "STATUS" in returns and command.status_items and folder.is_selectable:
                # RFC 5819 §2: a mailbox that cannot be opened just gets no STATUS.
                with contextlib.suppress(StoreError, _NoError):
                    out.append(await self._status_line(folder.name, command.status_items))
        await write(b"".join(out))
        await write(response.ok(tag, "LSUB completed" if lsub else "LIST completed"))

    async def _status_line(self, name: str, items: tuple[str, ...]) -> bytes:
        try:
            snap = await self._snapshot(name, claim_recent=False)
        except FolderNotFoundError:
            raise _NoError(f"no mailbox {name}", "NONEXISTENT") from None
        recent = snap.recent_uids
        if self.selected is not None and self.selected.name == name:
            recent = recent | frozenset(self.selected.recent)
        values = {
            "MESSAGES": len(snap.messages),
            "RECENT": len(recent),
            "UIDNEXT": snap.uid_next,
            "UIDVALIDITY": snap.uid_validity,
            "UNSEEN": sum(1 for m in snap.messages if Flag.SEEN not in m.flags),
            "DELETED": sum(1 for m in snap.messages if Flag.DELETED in m.flags),
            "SIZE": sum(m.size for m in snap.messages),
        }
        body = " ".join(f"{item} {values[item]}" for item in items)
        return response.untagged(b"STATUS " + response.mailbox(name) + b" ("
                                 + body.encode("ascii") + b")")

    async def _append(self, command: c.Append, write: Write) -> None:
        user = self._require_user()
        name = _checked_name(command.mailbox)
        flags = _storable(command.flags)
        when = command.internal_date.timestamp() if command.internal_date else None
        quota = await asyncio.to_thread(self.ctx.accounts.quota_bytes, user)
        try:
            ref = await asyncio.to_thread(self.ctx.store.append, user, name, command.message,
                                          flags=flags, internal_date=when, quota_bytes=quota)
        except FolderNotFoundError:
            raise _NoError(f"no mailbox {name}", "TRYCREATE") from None
        if self.selected is not None and self.selected.name == name:
            await self._sync(write, allow_expunge=True)
        await write(response.ok(command.tag, "APPEND completed",
                                f"APPENDUID {ref.uid_validity} {ref.uid}"))

    # -- message commands (selected state) -----------------------------------------------------
    async def _message_command(self, command: c.Command, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        store = self.ctx.store
        tag = command.tag
        match command:
            case c.Close() | c.Unselect():
                if isinstance(command, c.Close) and not sel.readonly:
                    # RFC 9051 §6.4.1: CLOSE expunges silently.
                    await asyncio.to_thread(store.expunge, user, sel.name)
                self.selected = None
                self.proto.state = State.AUTHENTICATED
                await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))
            case c.Expunge(uids=uids):
                if sel.readonly:
                    raise _NoError("the mailbox is read-only", "READ-ONLY")
                wanted = None if uids is None else [m.uid for _, m in
                                                    self._targets(uids, uid=True)]
                if wanted == []:
                    await write(response.ok(tag, "EXPUNGE completed (nothing to do)"))
                    return
                await asyncio.to_thread(store.expunge, user, sel.name, wanted)
                await self._sync(write, allow_expunge=True)
                await write(response.ok(tag, "EXPUNGE completed"))
            case c.Search():
                await self._search(command, write)
            case c.Fetch():
                await self._fetch(command, write)
            case c.Store():
                await self._store_flags(command, write)
            case c.Copy() | c.Move():
                await self._copy_move(command, write)

    async def _search(self, command: c.Search, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        if command.charset not in (None, "UTF-8", "US-ASCII"):
            raise _NoError(f"charset {command.charset} is not supported",
                           "BADCHARSET (UTF-8 US-ASCII)")
        key = _resolve_saved(command.key, sel.saved)
        scope = search.Scope(len(sel.messages), sel.largest_uid)
        name = sel.name

        def read(uid: int) -> bytes:
            try:
                return self.ctx.store.read_message(user, name, uid)
            except MessageGoneError:
                return b""  # expunged meanwhile: matches no text key

        def read_header(uid: int) -> bytes:
            try:
                return self.ctx.store.read_header(user, name, uid)
            except MessageGoneError:
                return b""

        found = await asyncio.to_thread(search.search, key, list(sel.messages), scope, read,
                                        recent_uids=frozenset(sel.recent),
                                        read_header=read_header)
        numbers = [f.info.uid if command.uid else f.seq for f in found]
        if "SAVE" in command.returns:
            saved = [f.info.uid for f in found]
            extremes = {"MIN", "MAX"} & set(command.returns)
            if saved and extremes and not {"ALL", "COUNT"} & set(command.returns):
                # RFC 5182 §2.4: SAVE with only MIN/MAX saves just those messages.
                saved = sorted({saved[0] if "MIN" in extremes else saved[-1],
                                saved[-1] if "MAX" in extremes else saved[0]})
            sel.saved = tuple(saved)
        if not command.is_esearch:
            await write(response.untagged(" ".join(["SEARCH", *map(str, numbers)])))
        else:
            returns = [r for r in command.returns if r != "SAVE"] or (
                [] if command.returns else ["ALL"])
            if returns or "SAVE" not in command.returns:
                parts = ["ESEARCH (TAG " + response.string(command.tag).decode("ascii") + ")"]
                if command.uid:
                    parts.append("UID")
                if numbers and "MIN" in returns:
                    parts.append(f"MIN {min(numbers)}")
                if numbers and "MAX" in returns:
                    parts.append(f"MAX {max(numbers)}")
                if numbers and "ALL" in returns:
                    parts.append(f"ALL {compress(numbers)}")
                if "COUNT" in returns:
                    parts.append(f"COUNT {len(numbers)}")
                await write(response.untagged(" ".join(parts)))
        await write(response.ok(command.tag, "SEARCH completed"))

    async def _fetch(self, command: c.Fetch, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        targets = self._targets(command.seqset, uid=command.uid)
        attrs = command.attrs
        if command.uid and not any(a.name == "UID" for a in attrs):
            attrs = (c.FetchAttr("UID"), *attrs)
        sets_seen = not sel.readonly and any(a.sets_seen for a in attrs)
        if sets_seen:
            unseen = [m.uid for _, m in targets if Flag.SEEN not in m.flags]
            if unseen:
                changed = await asyncio.to_thread(self.ctx.store.store_flags, user, sel.name,
                                                  unseen, [Flag.SEEN.value], FlagMode.ADD)
                self._update_flags(changed)
                targets = [(seq, sel.messages[seq - 1]) for seq, _ in targets]
                if not any(a.name == "FLAGS" for a in attrs):
                    # RFC 9051 §6.4.5: the \Seen we just set must be reported.
                    attrs = (*attrs, c.FetchAttr("FLAGS"))
        needs_bytes = fetch.needs_message(attrs)
        needs_structure = any(a.name in fetch.STRUCTURE_ITEMS - {"RFC822.SIZE"}
                              or (a.name == "BODY" and a.section is None) for a in attrs)
        gone = False
        for start in range(0, len(targets), FETCH_BATCH):
            batch = targets[start:start + FETCH_BATCH]
            rendered, batch_gone = await asyncio.to_thread(
                self._render_batch, user, sel, batch, attrs, needs_bytes, needs_structure)
            gone = gone or batch_gone
            await write(b"".join(rendered))
        if gone:
            raise _NoError("some messages were expunged meanwhile", "EXPUNGEISSUED")
        await write(response.ok(command.tag, "FETCH completed"))

    def _structures_for(self, user: str, sel: Selected, batch: list[tuple[int, MessageInfo]]
                        ) -> dict[int, fetch.Structure]:
        """Cached Structures of the batch's messages, by UID: the session's memory first, then
        the account's on-disk cache (delivery/cache.py). Misses are absent; the caller parses
        those and hands them to `_remember`. An undecodable cached value counts as a miss."""
        found: dict[int, fetch.Structure] = {}
        missing: list[MessageInfo] = []
        for _, info in batch:
            structure = self._structures.get((sel.name, sel.uid_validity, info.uid))
            if structure is not None:
                found[info.uid] = structure
            else:
                missing.append(info)
        if not missing:
            return found
        cache = self._disk_cache(user)
        cached = cache.get_many([(m.key, m.size) for m in missing])
        unusable = []
        for info in missing:
            text = cached.get(info.key)
            if text is None:
                continue
            try:
                structure = fetch.Structure.from_json(text)
            except ValueError:
                unusable.append(info.key)
                continue
            found[info.uid] = structure
            self._remember(sel, info, structure)
        if unusable:
            self.log.info("dropping %d unreadable structure cache entries", len(unusable))
            cache.forget(unusable)
        return found

    def _remember(self, sel: Selected, info: MessageInfo, structure: fetch.Structure) -> None:
        self._structures[(sel.name, sel.uid_validity, info.uid)] = structure
        while len(self._structures) > STRUCTURE_CACHE_SIZE:
            del self._structures[next(iter(self._structures))]

    def _disk_cache(self, user: str) -> StructureCache:
        return caches_for(self.ctx).for_root(self.ctx.paths.maildir(user))

    def _render_batch(self, user: str, sel: Selected, batch: list[tuple[int, MessageInfo]],
                      attrs: tuple[c.FetchAttr, ...], needs_bytes: bool, needs_structure: bool
                      ) -> tuple[list[bytes], bool]:
        """FETCH responses for a batch of messages (runs in a worker thread).

        ENVELOPE/BODY/BODYSTRUCTURE come from `fetch.Structure`s cached in memory and on disk
        (a message's bytes never change), so clients that re-fetch them on every open do not
        make us read and parse each message again; RFC822.SIZE, FLAGS, INTERNALDATE and UID
        come from the folder scan. Only BODY[...]/BINARY/RFC822* read the message file."""
        out: list[bytes] = []
        gone = False
        structures = self._structures_for(user, sel, batch) if needs_structure else {}
        new_rows: list[tuple[str, int, str]] = []
        for seq, info in batch:
            parsed = None
            structure = structures.get(info.uid)
            if needs_bytes or (needs_structure and structure is None):
                try:
                    parsed = fetch.ParsedMessage.parse(
                        self.ctx.store.read_message(user, sel.name, info.uid))
                except MessageGoneError:
                    gone = True
                    continue
                if needs_structure and structure is None:
                    structure = fetch.Structure.of(parsed)
                    self._remember(sel, info, structure)
                    new_rows.append((info.key, info.size, structure.to_json()))
            items: list[bytes] = []
            for attr in attrs:
                match attr.name:
                    case "UID":
                        value = b"%d" % info.uid
                    case "FLAGS":
                        value = _flags_of(info, sel.recent)
                    case "INTERNALDATE":
                        value = response.date_time(info.internal_date)
                    case "RFC822.SIZE":
                        value = b"%d" % info.size
                    case "ENVELOPE" | "BODYSTRUCTURE" | "BODY" if (
                            structure is not None and attr.section is None):
                        value = response.value(fetch.structure_item(attr, structure))
                    case _ if parsed is not None:
                        try:
                            value = response.value(fetch.fetch_item(attr, parsed))
                        except fetch.UnknownCteError:
                            raise _NoError("unknown content-transfer-encoding",
                                           "UNKNOWN-CTE") from None
                    case _:  # pragma: no cover - needs_bytes covers every other item
                        raise AssertionError(f"{attr.name} needs the message")
                items.append(attr.response_name().encode("ascii") + b" " + value)
            out.append(response.fetch(seq, items))
        if new_rows:
            self._disk_cache(user).put_many(new_rows)
        return out, gone

    def _update_flags(self, changed: dict[int, frozenset[str]]) -> None:
        sel = self._sel()
        for i, m in enumerate(sel.messages):
            if m.uid in changed:
                sel.messages[i] = dataclasses.replace(m, flags=changed[m.uid])

    async def _store_flags(self, command: c.Store, write: Write) -> None:
        sel = self._sel()
        if sel.readonly:
            raise _NoError("the mailbox is read-only", "READ-ONLY")
        targets = self._targets(command.seqset, uid=command.uid)
        flags = _storable(command.flags)
        changed: dict[int, frozenset[str]] = {}
        if targets:
            changed = await asyncio.to_thread(
                self.ctx.store.store_flags, self._require_user(), sel.name,
                [m.uid for _, m in targets], flags, command.mode)
        self._update_flags(changed)
        new_keywords = [f for f in flags if not f.startswith("\\") and f not in sel.keywords]
        if new_keywords and changed:  # RFC 9051 §7.3.5: FLAGS grows with new keywords
            sel.keywords = (*sel.keywords, *dict.fromkeys(new_keywords))
            await write(self._flags_response(sel.keywords))
        if not command.silent:
            out = []
            for seq, m in targets:
                if m.uid in changed:
                    info = sel.messages[seq - 1]
                    items = [b"FLAGS " + _flags_of(info, sel.recent)]
                    if command.uid:
                        items.insert(0, b"UID %d" % info.uid)
                    out.append(response.fetch(seq, items))
            await write(b"".join(out))
        if len(changed) < len(targets):
            raise _NoError("some messages were expunged meanwhile", "EXPUNGEISSUED")
        await write(response.ok(command.tag, "STORE completed"))

    async def _copy_move(self, command: c.Copy | c.Move, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        is_move = isinstance(command, c.Move)
        if is_move and sel.readonly:
            raise _NoError("the mailbox is read-only", "READ-ONLY")
        dest = _checked_name(command.mailbox)
        targets = self._targets(command.seqset, uid=command.uid)
        verb = "MOVE" if is_move else "COPY"
        if not targets:
            await write(response.ok(command.tag, f"{verb} completed (no messages)"))
            return
        uids = [m.uid for _, m in targets]
        try:
            if is_move:
                pairs = await asyncio.to_thread(self.ctx.store.move, user, sel.name, uids, dest)
            else:
                quota = await asyncio.to_thread(self.ctx.accounts.quota_bytes, user)
                pairs = await asyncio.to_thread(self.ctx.store.copy, user, sel.name, uids, dest,
                                                quota_bytes=quota)
        except FolderNotFoundError:
            raise _NoError(f"no mailbox {dest}", "TRYCREATE") from None
        dest_snap = await self._snapshot(dest, claim_recent=False) if pairs else None
        if pairs and dest_snap is not None:
            # The copies have new file names but the same bytes: their structure is known.
            source_key = {m.uid: m.key for _, m in targets}
            copy_key = {m.uid: m.key for m in dest_snap.messages}
            copied = [(source_key[old], copy_key[new]) for old, new in pairs
                      if old in source_key and new in copy_key]
            await asyncio.to_thread(self._disk_cache(user).copy_rows, copied)
        code = None
        if pairs and dest_snap is not None:
            code = (f"COPYUID {dest_snap.uid_validity} "
                    f"{compress_ordered([p[0] for p in pairs])} "
                    f"{compress_ordered([p[1] for p in pairs])}")
        if is_move:
            # RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            if code:
                await write(response.untagged_status("OK", "moved", code))
            await self._sync(write, allow_expunge=True)
            await write(response.ok(command.tag, "MOVE completed"))
        else:
            if dest == sel.name:
                await self._sync(write, allow_expunge=False)
            await write(response.ok(command.tag, "COPY completed", code))
        if len(pairs) < len(uids):
            self.log.info("%s: %d of %d messages were gone", verb,
                          len(uids) - len(pairs), len(uids))


def _checked_name(name: str) -> str:
    """A mailbox name as the store takes it: valid modified UTF-7, no empty levels."""
    if not name or not utf7.is_valid(name):
        raise _BadError(f"{name!r} is not a valid mailbox name (modified UTF-7, RFC 3501 §5.1.3)")
    return name


def _special_use(uses: tuple[str, ...]) -> SpecialUse | None:
    if not uses:
        return None
    if len(uses) > 1:
        raise _NoError("only one special use per mailbox", "USEATTR")
    try:
        return SpecialUse(uses[0])
    except ValueError:
        raise _NoError(f"{uses[0]} is not a supported special use", "USEATTR") from None


def _storable(flags: tuple[str, ...]) -> list[str]:
    """Flags a client may set: system flags but \\Recent, and keywords (RFC 9051 §2.3.2)."""
    out = []
    for flag in flags:
        if flag == RECENT:
            continue  # RFC 3501 §2.3.2: \Recent cannot be altered by the client; ignore it
        if flag.startswith("\\") and flag not in SYSTEM_FLAGS:
            raise _BadError(f"{flag} is not a flag that can be stored")
        out.append(flag)
    return out


def _resolve_saved(key: c.SearchKey, saved: tuple[int, ...]) -> c.SearchKey:
    """Replace "$" (RFC 5182) with the saved UIDs."""
    match key:
        case c.SearchSeq(seqset=seqset) if seqset.is_saved:
            ranges = tuple(SeqRange(u, u) for u in saved)
            return c.SearchSeq(SequenceSet(ranges), uid=True) if ranges else c.SearchNot(
                c.SearchAll())
        case c.SearchNot(key=inner):
            return c.SearchNot(_resolve_saved(inner, saved))
        case c.SearchOr(left=left, right=right):
            return c.SearchOr(_resolve_saved(left, saved), _resolve_saved(right, saved))
        case c.SearchAnd(keys=keys):
            return c.SearchAnd(tuple(_resolve_saved(k, saved) for k in keys))
    return key
