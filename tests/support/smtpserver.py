"""A real MX (`smtp.server.start_smtp`) on 127.0.0.1 port 0 over a real deployment in tmp_path.

The context is built as `serve` builds it: config through `config_from_dict`, `Accounts` in
SQLite, `MaildirStore`, `EventHub`, a trustme CA and leaf for mail.example.com behind
`TlsProvider`. Accounts:

    alice@example.com, bob@example.com, carol@example.org   users
    dave@example.com                                          user with a tiny quota
    team@example.com -> alice, bob                            alias
    @example.org -> carol                                     catch-all on the second domain

Read delivered mail back with stdlib `mailbox.Maildir` (`harness.messages(user)`).
"""

from __future__ import annotations

import asyncio
import atexit
import mailbox
import shutil
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.services import ServerContext, hosted_domains
from mailstack.smtp.server import SmtpService
from mailstack.smtp.verdict import Verifier, accept_all

from mailstack.base.config import config_from_dict
from mailstack.base.paths import StatePaths
from mailstack.base.tls import TlsProvider
from mailstack.base.users import Accounts

HOSTNAME = "mail.example.com"
USERS = ("alice@example.com", "bob@example.com", "carol@example.org")
SMALL_QUOTA_USER = "dave@example.com"
SMALL_QUOTA = 4000


_TEMPLATE: tuple[Path, trustme.CA] | None = None


def _template() -> tuple[Path, trustme.CA]:
    """Accounts, Maildirs and TLS files made once per test process (argon2 hashing and key
    generation are slow by design), copied into each test's own directory."""
    global _TEMPLATE
    if _TEMPLATE is None:
        root = Path(tempfile.mkdtemp(prefix="mailstack-smtp-template-"))
        atexit.register(shutil.rmtree, root, True)
        paths = StatePaths(root)
        accounts = Accounts(paths.users_db)
        for domain in ("example.com", "example.org"):
            accounts.add_domain(domain, exist_ok=True)
        store = MaildirStore(paths, None, hostname=HOSTNAME, quota_of=accounts.quota_bytes)
        for user in USERS:
            accounts.add_user(user, "pw-" + user)
            store.create_account(user)
        accounts.add_user(SMALL_QUOTA_USER, "pw", quota_bytes=SMALL_QUOTA)
        store.create_account(SMALL_QUOTA_USER)
        accounts.add_alias("team@example.com", ["alice@example.com", "bob@example.com"])
        accounts.add_alias("@example.org", ["carol@example.org"])
        accounts.close()
        ca = trustme.CA()
        leaf = ca.issue_cert(HOSTNAME, "127.0.0.1")
        paths.tls_dir.mkdir()
        leaf.private_key_and_cert_chain_pem.write_to_path(str(paths.tls_cert))
        leaf.private_key_pem.write_to_path(str(paths.tls_key))
        ca.cert_pem.write_to_path(str(paths.ca_cert))
        _TEMPLATE = (root, ca)
    return _TEMPLATE


def build_context(
    root: Path,
    *,
    smtp: dict[str, Any] | None = None,
    dns: dict[str, Any] | None = None,
    outbound: dict[str, Any] | None = None,
    queue: bool = False,
) -> tuple[ServerContext, trustme.CA]:
    """A context as serve builds one; `queue`: with an outbound queue (nobody runs it: a test
    calls its run_once)."""
    paths = StatePaths(root)
    template, ca = _template()
    # Without SQLite's side files: the template's store may close an index (and remove its
    # -shm) while a copy runs; the folder indexes are caches that catch up by themselves.
    side_files = shutil.ignore_patterns("*-shm", "*-wal", "*-journal")
    shutil.copytree(template, root, dirs_exist_ok=True, ignore=side_files)
    config = config_from_dict(
        {
            "server": {"hostname": HOSTNAME, "domains": ["example.com", "example.org"]},
            "listen": {
                "smtp": ["127.0.0.1:0"],
                "submission": [],
                "submissions": [],
                "imap": [],
                "imaps": [],
            },
            "smtp": smtp or {},
            "dns": dns or {},
            "outbound": outbound or {},
        }
    )
    accounts = Accounts(paths.users_db)
    events = EventHub()
    store = MaildirStore(paths, events, hostname=HOSTNAME, quota_of=accounts.quota_bytes)
    tls = TlsProvider(paths.tls_cert, paths.tls_key)
    outbound_queue = (
        OutboundQueue(config, paths, hosted_domains=lambda: hosted_domains(config, accounts))
        if queue
        else None
    )
    ctx = ServerContext(
        config=config,
        paths=paths,
        accounts=accounts,
        store=store,
        events=events,
        tls=tls,
        queue=outbound_queue,
    )
    return ctx, ca


@dataclass
class SmtpHarness:
    ctx: ServerContext
    server: asyncio.Server
    ca: trustme.CA
    service: SmtpService
    clients: list[RawClient] = field(default_factory=list)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        port: int = self.server.sockets[0].getsockname()[1]
        return port

    def client_tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ctx.paths.ca_cert))
        return context

    def messages(self, user: str, folder: str = "INBOX") -> list[bytes]:
        """Every message in the folder, as stored (stdlib Maildir reader)."""
        root = self.ctx.paths.maildir(user)
        path = root if folder == "INBOX" else root / f".{folder}"
        md = mailbox.Maildir(str(path), factory=None, create=False)
        return [md.get_bytes(key) for key in sorted(md.keys())]

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=30)

    def raw(self, ehlo: str | None = "client.example.net") -> RawClient:
        """A raw client (closed at teardown), greeted and, unless ehlo=None, after EHLO."""
        client = self.track(RawClient(self.connect()))
        if ehlo is not None:
            assert client.reply().startswith("220 ")
            client.send(f"EHLO {ehlo}\r\n".encode())
            assert client.reply().startswith("250-")
        return client

    def track(self, client: RawClient) -> RawClient:
        self.clients.append(client)
        return client


@asynccontextmanager
async def running_smtp(
    root: Path,
    *,
    smtp: dict[str, Any] | None = None,
    dns: dict[str, Any] | None = None,
    verify: Verifier | None = None,
    queue: bool = False,
) -> AsyncIterator[SmtpHarness]:
    ctx, ca = build_context(root, smtp=smtp, dns=dns, queue=queue)
    ctx.events.bind(asyncio.get_running_loop())
    # Inbound SPF/DKIM/DMARC has its own tests (test_inbound_auth.py); here mail is accepted.
    service = SmtpService(ctx, verify=verify or accept_all)
    server = await service.listen("127.0.0.1", 0)
    harness = SmtpHarness(ctx, server, ca, service)
    try:
        yield harness
    finally:
        for client in harness.clients:
            client.close()
        server.close()
        ctx.stopping.set()  # idle sessions say 421 and close
        deadline = asyncio.get_running_loop().time() + 10
        while service.open_connections() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # bounded wait for connection_lost of every session
        await server.wait_closed()
        ctx.accounts.close()


class RawClient:
    """A blocking line-level SMTP client for what smtplib will not send (pipelining, BDAT)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """One whole (possibly multi-line) reply, lines joined with \\n."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed: " + repr(self.buf))
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            text = line.decode("utf-8")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    def replies(self, n: int) -> list[str]:
        return [self.reply() for _ in range(n)]

    def is_closed(self) -> bool:
        """True once the server has closed the connection (after pending replies are read)."""
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return True
        self.buf += data
        return not data

    def close(self) -> None:
        self.sock.close()
