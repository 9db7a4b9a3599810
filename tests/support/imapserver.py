"""A running mailstack IMAP server for tests: a real deployment in a temporary directory.

`make_deployment(root)` builds config (through `config_from_dict`), `Accounts`,
`MaildirStore`, `EventHub`, a trustme CA with a server certificate in `tls/`, and the
`ServerContext` listeners get. `ImapServerThread` runs `start_imap` and `start_imaps` on
127.0.0.1 (port 0) in a background thread with its own event loop, so tests can use blocking
clients (imaplib, imapclient, mbsync) directly; `stop()` and a new thread on the same
deployment is a server restart.

Use `make_deployment` + `running_server` in your own fixtures, or register this module's
`imap_deployment`/`imap_server` fixtures with `pytest_plugins = ("tests.support.imapserver",)`
in a conftest (then import nothing else from it in test modules, or pytest cannot rewrite it).
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.services import ServerContext
from mailstack.imap.server import ImapService

from mailstack.base.config import Config, config_from_dict
from mailstack.base.paths import StatePaths
from mailstack.base.throttle import LoginThrottle
from mailstack.base.tls import TlsProvider
from mailstack.base.users import Accounts

HOSTNAME = "mail.example.com"
DOMAIN = "example.com"
USER = "alice@example.com"
PASSWORD = "correct horse battery"
OTHER_USER = "bob@example.com"
OTHER_PASSWORD = "tr0ub4dor&3"


@dataclass
class ImapDeployment:
    root: Path
    config: Config
    paths: StatePaths
    accounts: Accounts
    store: MaildirStore
    events: EventHub
    ca: trustme.CA
    throttle: LoginThrottle = field(default_factory=LoginThrottle)

    def context(self) -> ServerContext:
        return ServerContext(
            config=self.config,
            paths=self.paths,
            accounts=self.accounts,
            store=self.store,
            events=self.events,
            tls=TlsProvider(self.paths.tls_cert, self.paths.tls_key),
            throttle=self.throttle,
        )

    def add_user(self, address: str, password: str, *, quota_bytes: int = 0) -> None:
        self.accounts.add_user(address, password, quota_bytes=quota_bytes)
        self.store.create_account(address)

    def client_tls(self) -> ssl.SSLContext:
        """A client context that trusts the deployment's CA (and checks the host name)."""
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


def make_deployment(root: Path, **imap: Any) -> ImapDeployment:
    """A deployment for example.com in `root` with alice and bob; `imap` overrides [imap]."""
    config = config_from_dict(
        {
            "server": {"hostname": HOSTNAME, "domains": [DOMAIN]},
            "listen": {
                "smtp": [],
                "submission": [],
                "submissions": [],
                "imap": ["127.0.0.1:0"],
                "imaps": ["127.0.0.1:0"],
            },
            "imap": imap,
        }
    )
    paths = StatePaths(root)
    root.mkdir(parents=True, exist_ok=True)
    paths.tls_dir.mkdir(exist_ok=True)
    ca = trustme.CA()
    # CN "localhost": offlineimap checks only the commonName; clients connect to "localhost".
    cert = ca.issue_cert(HOSTNAME, "127.0.0.1", "localhost", common_name="localhost")
    cert.private_key_pem.write_to_path(str(paths.tls_key))
    paths.tls_cert.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    ca.cert_pem.write_to_path(str(paths.ca_cert))
    accounts = Accounts(paths.users_db)
    accounts.add_domain(DOMAIN, exist_ok=True)
    events = EventHub()
    store = MaildirStore(paths, events, hostname=HOSTNAME, quota_of=accounts.quota_bytes)
    dep = ImapDeployment(root, config, paths, accounts, store, events, ca)
    dep.add_user(USER, PASSWORD)
    dep.add_user(OTHER_USER, OTHER_PASSWORD)
    return dep


class ImapServerThread:
    """`start_imap` + `start_imaps` on 127.0.0.1 in a thread with its own loop."""

    def __init__(self, deployment: ImapDeployment, *, rescan_s: float | None = None) -> None:
        self.deployment = deployment
        self.ctx = deployment.context()
        self.rescan_s = rescan_s  # IDLE's polling period; None: the service's default
        self.service: ImapService | None = None
        self.imap_port = 0
        self.imaps_port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="imap-server", daemon=True)

    def start(self) -> ImapServerThread:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("IMAP server did not start within 30 s")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.ctx.events.bind(self._loop)
        # One for both listeners, as serve does.
        service = ImapService(
            self.ctx, **({} if self.rescan_s is None else {"rescan_s": self.rescan_s})
        )
        self.service = service
        imap = await service.start_imap(self.ctx, "127.0.0.1", 0)
        imaps = await service.start_imaps(self.ctx, "127.0.0.1", 0)
        self.imap_port = imap.sockets[0].getsockname()[1]
        self.imaps_port = imaps.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            for server in (imap, imaps):
                server.close()
            for server in (imap, imaps):
                await server.wait_closed()
            # Cancel connection handlers still running so the loop can close cleanly.
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
            # As a process exit would: the next server on this deployment starts cold.
            service.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    # -- clients -------------------------------------------------------------------------------
    def imap(self) -> imaplib.IMAP4:
        return imaplib.IMAP4("127.0.0.1", self.imap_port, timeout=30)

    def imaps(self) -> imaplib.IMAP4_SSL:
        return imaplib.IMAP4_SSL(
            HOSTNAME_IP, self.imaps_port, ssl_context=self.deployment.client_tls(), timeout=30
        )

    def login(self, user: str = USER, password: str = PASSWORD) -> imaplib.IMAP4:
        client = self.imap()
        client.login(user, password)
        return client


HOSTNAME_IP = "127.0.0.1"  # the certificate carries 127.0.0.1 as a SAN


@contextlib.contextmanager
def running_server(deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    """A started server for the `with` block; stopped (connections cancelled) after it."""
    server = ImapServerThread(deployment).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def imap_deployment(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def imap_server(imap_deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(imap_deployment) as server:
        yield server
