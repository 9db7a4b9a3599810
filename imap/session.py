"""One IMAP session: executes parsed commands on the `MailStore` and writes the responses.

RFC 3501 semantics for IMAP4rev1 clients and RFC 9051's for those that ENABLE IMAP4rev2 (no
\\Recent, ESEARCH answers, UTF-8 mailbox names: `rev2`), plus IDLE (2177), UIDPLUS (4315),
MOVE (6851), NAMESPACE (2342), ID (2971), ENABLE (5161), UNSELECT (3691), LITERAL+ (7888),
SASL-IR (4959), COMPRESS=DEFLATE (4978; the transport compresses, imap/compress.py),
MULTIAPPEND (3502), APPENDLIMIT (7889), STATUS=SIZE (8438), CHILDREN (3348),
SPECIAL-USE/CREATE-SPECIAL-USE (6154), LIST-EXTENDED (5258), LIST-STATUS (5819), ESEARCH
(4731), SEARCHRES (5182), BINARY (3516), QUOTA (9208), ACL (4314), SORT/THREAD (5256,
5957), ESORT and CONTEXT=SEARCH (5267, imap/session_context.py), NOTIFY (5465,
imap/session_notify.py), UTF8=ACCEPT (6855: imap/enabled.py, imap/downgrade.py), CATENATE
(4469) and AUTHENTICATE SCRAM-SHA-256 (7677: imap/session_scram.py).

`Session` is this module's connection-level part (state, dispatch, authentication, QUOTA,
IDLE) combined with two mixins: mailbox commands in imap/session_mailbox.py and selected-state
message commands in imap/session_select.py; what they share is in imap/session_base.py.

The transport (`imap/server.py`) feeds bytes to `self.proto` and hands each event to
`handle()` with a `write` coroutine; it owns sockets, TLS, timeouts and IDLE's waiting.

Invariants:
- The store is synchronous: every call runs in a thread (`SessionCore._thread` for a
  command's short calls, `asyncio.to_thread` for long ones).
- The selected folder is held as a list of `MessageInfo` in sequence-number order. It is
  brought up to date (`_sync`) before each command in the selected state; new messages become
  `* n EXISTS`, flag changes `* n FETCH (FLAGS ...)`, vanished messages `* n EXPUNGE` — except
  during FETCH, STORE, SEARCH, COPY and MOVE by sequence number, when RFC 9051 §7.5.1 forbids
  EXPUNGE (numbers would shift under the client); those messages stay until the next command
  that may report them, and reading one gives `NO [EXPUNGEISSUED]`.
- Nothing answers APPEND/COPY with OK before the store returned (it fsyncs).
- The structure cache (imap/cache.py) is never trusted over the message files: a row is
  used only if its recorded size equals the message's RFC822.SIZE and it decodes; anything
  else is recomputed from the file and stored again.
- Syntax errors are `BAD`; refusals `NO [CODE]` (a StoreError's `.code`); anything unexpected
  `NO [SERVERBUG]` with the traceback logged. The session survives all three.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import ipaddress
from dataclasses import dataclass, field

from mailstack.delivery.services import ServerContext
from mailstack.delivery.store import StoreError, UnknownUserError
from mailstack.imap import commands as c
from mailstack.imap import condstore, enabled, response
from mailstack.imap.cache import StructureCaches
from mailstack.imap.protocol import (
    BadCommand,
    CommandReceived,
    Event,
    IdleDone,
    ImapProtocol,
    SaslResponse,
    SendContinuation,
    State,
    TooBig,
)
from mailstack.imap.session_acl import AclCommands
from mailstack.imap.session_base import (
    InvalidCommandError,
    RefusedError,
    Selected,
    SelectionLostError,
    Write,
    checked_name,
    names_from_utf8,
)
from mailstack.imap.session_context import ContextCommands
from mailstack.imap.session_mailbox import MailboxCommands
from mailstack.imap.session_metadata import MetadataCommands
from mailstack.imap.session_notify import NotifyCommands
from mailstack.imap.session_scram import SCRAM, ScramCommands
from mailstack.imap.session_select import SelectedCommands
from mailstack.imap.session_sort import SortCommands

from mailstack.base import sasl
from mailstack.base.login import Outcome
from mailstack.base.logs import connection_logger

__all__ = ["ConnectionLimits", "Session", "Write", "is_loopback"]

MAX_BAD_COMMANDS = 50  # consecutive BADs before we give up on a client (a confused script)
PREAUTH_MAX_LITERAL_BYTES = 64 * 1024
CAPABILITIES = (
    "IMAP4rev1",
    "IMAP4rev2",  # RFC 9051, once the client says ENABLE IMAP4rev2 (imap/session_base.py)
    "LITERAL+",
    "SASL-IR",
    "ID",
    "ENABLE",
    "IDLE",
    "NAMESPACE",
    "UNSELECT",
    "UIDPLUS",
    "MOVE",
    "CHILDREN",
    "SPECIAL-USE",
    "CREATE-SPECIAL-USE",
    "LIST-EXTENDED",
    "LIST-STATUS",
    "ESEARCH",
    "SEARCHRES",
    "BINARY",
    "QUOTA",
    "QUOTA=RES-STORAGE",
    "ACL",
    "RIGHTS=texk",
    "METADATA",
    "SORT",  # RFC 5256 (imap/session_sort.py)
    "SORT=DISPLAY",  # RFC 5957
    "ESORT",  # RFC 5267 §3 (SORT RETURN)
    "CONTEXT=SEARCH",  # RFC 5267 §4 (imap/session_context.py)
    "CONTEXT=SORT",  # RFC 5267 §4, positions in ADDTO/REMOVEFROM (imap/session_context.py)
    "THREAD=ORDEREDSUBJECT",
    "THREAD=REFERENCES",
    "MULTIAPPEND",
    "CATENATE",  # RFC 4469 (imap/catenate.py)
    "UTF8=ACCEPT",  # RFC 6855, once ENABLEd (imap/enabled.py, imap/downgrade.py)
    "STATUS=SIZE",
    "NOTIFY",  # RFC 5465 (imap/session_notify.py)
    *condstore.CAPABILITIES,
)
_MSN_COMMANDS = (c.Fetch, c.Store, c.Search, c.Copy, c.Move, c.Sort, c.Thread)


def _server_id() -> bytes:
    """RFC 2971 §3.3 fields: name, version, vendor (version from the installed package)."""
    try:
        version = importlib.metadata.version("mailstack")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - run from a checkout
        version = "unknown"
    fields = {"name": "mailstack", "version": version, "vendor": "mailstack"}
    return (
        b"("
        + b" ".join(response.string(k) + b" " + response.string(v) for k, v in fields.items())
        + b")"
    )


_SERVER_ID = _server_id()


@dataclass
class ConnectionLimits:
    """Sessions per account (LOGIN's NO [LIMIT]), shared by the listeners of one ImapService.
    Connections per address and network are the shared limiter's (mailstack.base.connections)."""

    per_user: int
    by_user: dict[str, int] = field(default_factory=dict)

    def acquire_user(self, user: str) -> bool:
        if self.by_user.get(user, 0) >= self.per_user:
            return False
        self.by_user[user] = self.by_user.get(user, 0) + 1
        return True

    def release_user(self, user: str) -> None:
        n = self.by_user.get(user, 0) - 1
        if n <= 0:
            self.by_user.pop(user, None)
        else:
            self.by_user[user] = n


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 and ::1, also as seen on a dual-stack socket (::ffff:127.0.0.1)."""
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


class Session(
    ContextCommands,  # first: it wraps _sync (imap/session_context.py)
    NotifyCommands,  # first: it builds on the mailbox and message mixins (imap/session_notify.py)
    MailboxCommands,
    SelectedCommands,
    AclCommands,
    MetadataCommands,
    SortCommands,
    ScramCommands,
):
    """The per-connection IMAP state; see the module docstring."""

    def __init__(
        self,
        ctx: ServerContext,
        *,
        peer_ip: str,
        is_tls: bool,
        conn_id: str,
        limits: ConnectionLimits,
        caches: StructureCaches | None = None,
        starttls_available: bool = True,
        rescan_s: float = 3.0,
    ) -> None:
        self.ctx = ctx
        # None: caches of this session's own (a session outside a server, in tests).
        self.caches = caches if caches is not None else StructureCaches()
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
        self.compress_requested = False  # the transport starts DEFLATE after our OK
        self.has_quota = False  # the account's, as at login (APPENDLIMIT's form)
        self.rev2 = False  # ENABLE IMAP4rev2 (RFC 9051) was given
        self.utf8_accept = False  # ENABLE UTF8=ACCEPT (RFC 6855) was given
        self.is_compressed = False
        self._sasl_tag: str | None = None
        self._bad_in_a_row = 0
        # (folder, UIDVALIDITY, UID) -> ENVELOPE/BODY/BODYSTRUCTURE, oldest first
        self._structures: dict[tuple[str, int, int], response.RenderedStructure] = {}
        self.log = connection_logger(__name__, conn_id, peer_ip)

    # -- state ---------------------------------------------------------------------------------
    @property
    def is_logged_out(self) -> bool:
        return self.proto.state is State.LOGOUT

    @property
    def may_authenticate(self) -> bool:
        """LOGIN/AUTHENTICATE only over TLS, unless configured or on loopback (RFC 9051
        §11.1: servers must not allow cleartext passwords by default)."""
        return self.is_tls or self.ctx.config.imap.allow_plaintext_auth or is_loopback(self.peer_ip)

    def capabilities(self) -> list[str]:
        caps = list(CAPABILITIES)
        if self.proto.state is State.NOT_AUTHENTICATED:
            if not self.is_tls and self.starttls_available:
                caps.append("STARTTLS")
            caps.append("AUTH=PLAIN" if self.may_authenticate else "LOGINDISABLED")
            if self.may_authenticate:
                caps.append(f"AUTH={SCRAM}")  # RFC 7677 (imap/session_scram.py)
        else:
            caps.append("COMPRESS=DEFLATE")  # RFC 4978: a command of the authenticated state
            # RFC 7889 §3: one limit for every mailbox, unless a quota makes it vary (then
            # STATUS/LIST-STATUS APPENDLIMIT tells it per mailbox).
            max_size = self.ctx.config.smtp.max_message_size
            caps.append("APPENDLIMIT" if self.has_quota else f"APPENDLIMIT={max_size}")
        return caps

    def greeting(self) -> bytes:
        caps = " ".join(self.capabilities())
        return response.untagged_status(
            "OK", f"{self.ctx.config.server.hostname} ready", f"CAPABILITY {caps}"
        )

    def close(self) -> None:
        """Release what the session holds (the transport calls this once, at the end)."""
        self._notify_stop()
        self._scram_abandon()
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
                await write(response.no(tag, f"literal of {size} octets is too large", "TOOBIG"))
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
        if self.utf8_names:  # RFC 9051 §5.1, RFC 6855 §3: mailbox names are UTF-8 on the wire
            command = names_from_utf8(command)
        bad = enabled.bad_reason(command, rev2=self.rev2, utf8_accept=self.utf8_accept)
        if bad is not None:  # imap/enabled.py: grammar that ENABLE changed
            await write(response.bad(tag, bad))
            return
        # Command names only: arguments may hold passwords or message text (STYLE.md logging).
        self.log.debug("C: %s %s", tag, type(command).__name__.upper())
        try:
            if self.selected is not None and not isinstance(
                command, c.Close | c.Unselect | c.Logout | c.Select
            ):
                await self._sync(
                    write,
                    allow_expunge=not (
                        isinstance(command, _MSN_COMMANDS) and not getattr(command, "uid", False)
                    ),
                )
                if self.is_logged_out:  # the folder vanished under us: BYE already sent
                    return
            if condstore.enables_condstore(command) and not isinstance(command, c.Select):
                await self._condstore_on(write)  # RFC 7162 §3.1
            await self._dispatch(command, write)
            self._notify_track_selected()  # RFC 5465: the selected mailbox may have changed
        except SelectionLostError:
            return  # BYE was sent
        except InvalidCommandError as exc:
            await write(response.bad(tag, str(exc)))
        except RefusedError as exc:
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
            case c.Id(params=params):
                # RFC 2971 §3.1: always answer with our own ID (or NIL); the client's, if
                # any, is logged to help debug a client's behaviour, never trusted.
                if params:
                    self.log.info("client ID: %s", ", ".join(f"{k}={v!r}" for k, v in params)[:500])
                await write(response.untagged(b"ID " + _SERVER_ID))
                await write(response.ok(tag, "ID completed"))
            case c.StartTls():
                if self.is_tls or not self.starttls_available:
                    raise InvalidCommandError(
                        "TLS is already active" if self.is_tls else "STARTTLS is not available here"
                    )
                await write(response.ok(tag, "begin TLS negotiation now"))
                self.starttls_requested = True
            case c.Login(username=user, password=password):
                await self._login(tag, user, password, write)
            case c.Authenticate():
                await self._authenticate(command, write)
            case c.Enable():
                await self._enable(command, write)  # imap/session_base.py
            case c.Namespace():
                # RFC 2342: personal, other users' (shared folders), shared (team mailboxes).
                await write(
                    response.untagged(b'NAMESPACE (("" ".")) (("Shared/" "/")) (("Public/" "/"))')
                )
                await write(response.ok(tag, "NAMESPACE completed"))
            case c.Idle():
                await self._idle(tag, write)
            case c.Compress(mechanism=mechanism):
                # RFC 4978 §3: BAD for an unknown algorithm, NO [COMPRESSIONACTIVE] twice.
                if mechanism != "DEFLATE":
                    raise InvalidCommandError(f"unknown compression algorithm {mechanism}")
                if self.is_compressed:
                    raise RefusedError("DEFLATE is already active", "COMPRESSIONACTIVE")
                await write(response.ok(tag, "DEFLATE active"))
                self.compress_requested = True
            case c.GetQuota() | c.GetQuotaRoot() | c.SetQuota():
                await self._quota(command, write)
            case c.GetAcl() | c.MyRights() | c.ListRights() | c.SetAcl() | c.DeleteAcl():
                await self._acl_command(command, write)
            case c.GetMetadata() | c.SetMetadata():
                await self._metadata_command(command, write)
                self._notify_after(command)  # RFC 5465 MailboxMetadataChange and friends
            case (
                c.Select()
                | c.Create()
                | c.Delete()
                | c.Rename()
                | c.Subscribe()
                | c.Unsubscribe()
                | c.List()
                | c.Lsub()
                | c.Status()
                | c.Append()
            ):
                await self._mailbox_command(command, write)
                self._notify_after(command)  # RFC 5465 MailboxName/SubscriptionChange
            case (
                c.Close()
                | c.Unselect()
                | c.Expunge()
                | c.Search()
                | c.Fetch()
                | c.Store()
                | c.Copy()
                | c.Move()
            ):
                await self._message_command(command, write)
            case c.Sort() | c.Thread():
                await self._sort_or_thread(command, write)
            case c.Notify():
                await self._notify_command(command, write)
            case c.CancelUpdate():
                await self._cancel_update(command, write)
            case _:  # pragma: no cover - every Command subclass is matched above
                raise InvalidCommandError(f"{type(command).__name__} is not implemented")

    # -- authentication ------------------------------------------------------------------------
    async def _login(self, tag: str, user: str, password: str, write: Write) -> None:
        if not self.may_authenticate:
            raise RefusedError("use STARTTLS or the implicit-TLS port first", "PRIVACYREQUIRED")
        # The one login path (mailstack/base/login.py): canonical name, throttle, verify, log.
        result = await self.ctx.logins.login(user, password, self.peer_ip, log=self.log)
        if result.outcome is Outcome.THROTTLED:
            raise RefusedError("too many failed logins; try again later", "UNAVAILABLE")
        if result.outcome is Outcome.BUSY:
            raise RefusedError("server busy; try again later", "UNAVAILABLE")
        address = result.address
        if address is None:
            raise RefusedError("invalid credentials", "AUTHENTICATIONFAILED")
        await self._logged_in(tag, address, write)

    def _enter(self, address: str) -> bool:
        """Make sure the account's Maildir exists; whether it has a quota. One thread trip."""
        try:
            # Does its Maildir exist? Asked of the subscriptions file, not by a folder list,
            # which also looks at every folder other accounts share (all of them, on disk).
            self.ctx.store.subscriptions(address)
        except UnknownUserError:  # an account made before its Maildir: make it now
            self.ctx.store.create_account(address)
        return self.ctx.accounts.quota_bytes(address) > 0

    async def _logged_in(self, tag: str, address: str, write: Write) -> None:
        """The credentials were right (any mechanism): enter the authenticated state."""
        if not self.limits.acquire_user(address):
            raise RefusedError("too many sessions for this account", "LIMIT")
        self.has_quota = await self._thread(self._enter, address)
        self.user = address
        self.proto.state = State.AUTHENTICATED
        self.proto.framer.set_max_literal_bytes(self.ctx.config.smtp.max_message_size)
        caps = " ".join(self.capabilities())
        await write(response.ok(tag, "logged in", f"CAPABILITY {caps}"))

    async def _authenticate(self, command: c.Authenticate, write: Write) -> None:
        if command.mechanism not in ("PLAIN", SCRAM):
            raise RefusedError(f"mechanism {command.mechanism} is not supported", "CANNOT")
        if not self.may_authenticate:
            raise RefusedError("use STARTTLS or the implicit-TLS port first", "PRIVACYREQUIRED")
        if command.mechanism == SCRAM:  # imap/session_scram.py
            await self._scram_begin(command.tag, command.initial_response, write)
            return
        if command.initial_response is None:
            self._sasl_tag = command.tag
            self.proto.expect_sasl_response()
            await write(response.continuation())
            return
        await self._sasl_plain(command.tag, command.initial_response, write)

    async def _sasl_step(self, event: SaslResponse, write: Write) -> None:
        tag, self._sasl_tag = self._sasl_tag or "*", None
        if self._scram is not None:
            await self._scram_step(tag, event, write)
            return
        if event.is_cancel:  # RFC 9051 §6.2.2: "*" cancels, answered with BAD
            await write(response.bad(tag, "AUTHENTICATE cancelled"))
            return
        try:
            await self._sasl_plain(tag, event.data, write)
        except InvalidCommandError as exc:
            await write(response.bad(tag, str(exc)))
        except RefusedError as exc:
            await write(response.no(tag, exc.text, exc.code))

    async def _sasl_plain(self, tag: str, data: str, write: Write) -> None:
        # RFC 4616 as mailstack.base.sasl parses it for SMTP AUTH too.
        try:
            plain = sasl.parse_plain(sasl.decode_response(data))
        except sasl.SaslProxyError:
            raise RefusedError(
                "acting as another user is not allowed", "AUTHORIZATIONFAILED"
            ) from None
        except sasl.SaslError as exc:
            raise InvalidCommandError(f"malformed SASL PLAIN response: {exc}") from None
        await self._login(tag, plain.authcid, plain.password, write)

    # -- QUOTA (RFC 9208) ----------------------------------------------------------------------
    async def _quota(self, command: c.GetQuota | c.GetQuotaRoot | c.SetQuota, write: Write) -> None:
        """One quota root, "", holds every mailbox of the account; only STORAGE is limited
        (in units of 1024 octets, RFC 9208 §5.1). An unlimited account has no quota root."""
        user = self._require_user()
        tag = command.tag
        if isinstance(command, c.SetQuota):
            raise RefusedError(
                "quotas are set by the administrator (mailstack user quota)", "NOPERM"
            )
        limit = await self._thread(self.ctx.accounts.quota_bytes, user)
        if isinstance(command, c.GetQuotaRoot):
            name = checked_name(command.mailbox)
            await self._snapshot(name, claim_recent=False)  # NO [NONEXISTENT] if missing
            roots = b' ""' if limit else b""
            await write(response.untagged(b"QUOTAROOT " + self._mailbox_out(name) + roots))
        elif command.root != "" or not limit:  # GETQUOTA
            raise RefusedError(f"no quota root {command.root!r}", "NONEXISTENT")
        if limit:
            used = await self._thread(self.ctx.store.usage_bytes, user)
            await write(
                response.untagged(
                    b'QUOTA "" (STORAGE %d %d)' % ((used + 1023) // 1024, limit // 1024)
                )
            )
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
