"""`mailstack demo`: a throwaway deployment for example.test on loopback high ports.

It exists so that a person can see mailstack work in one command: init, one user with a
printed password, every listener on 127.0.0.1 (the web pages too, with the demo user as their
admin), and the exact client settings, a swaks line and the admin page's address.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mailstack.base.config import format_hostport, load_config
from mailstack.base.errors import HostError
from mailstack.base.fsutil import atomic_write
from mailstack.base.paths import StatePaths
from mailstack.base.users import generate_password
from mailstack.deployment import Deployment
from mailstack.init import InitOptions, init_deployment, is_deployment, render_config
from mailstack.output import client_settings

DOMAIN = "example.test"
HOSTNAME = "mail.example.test"
USER = f"demo@{DOMAIN}"


@dataclass(frozen=True, slots=True)
class DemoPorts:
    smtp: int
    submission: int
    submissions: int
    imap: int
    imaps: int
    https: int  # the status and self-service pages
    http: int  # redirects to https (and ACME, which a demo does not use)

    @classmethod
    def from_base(cls, base: int) -> DemoPorts:
        return cls(base + 25, base + 87, base + 65, base + 43, base + 93, base + 44, base + 80)

    def all(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self))


def ensure_ports_free(ports: DemoPorts) -> None:
    """Before anything is created: a demo already running (or any other program) on one of the
    ports gets one line naming the port and a base port that is free, not a banner first."""
    busy = [p for p in ports.all() if not _is_free(p)]
    if not busy:
        return
    hint = "stop the other program (is a demo already running?)"
    for base in range(3000, 60000, 100):
        if all(_is_free(p) for p in DemoPorts.from_base(base).all()):
            hint += f", or use other ports: mailstack demo --base-port {base}"
            break
    raise HostError(f"port {busy[0]} on 127.0.0.1 is in use", hint=hint)


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As serve binds (asyncio sets SO_REUSEADDR): a port left in TIME_WAIT by a demo that
        # just stopped is free for it; one that another program listens on is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass(frozen=True, slots=True)
class DemoResult:
    root: Path
    user: str
    password: str
    ports: DemoPorts


def create_demo(root: Path | None, ports: DemoPorts) -> DemoResult:
    """Set up (or reuse, resetting the demo password) a demo deployment in `root` or a tmp dir."""
    ensure_ports_free(ports)
    root = root or Path(tempfile.mkdtemp(prefix="mailstack-demo-"))
    if not is_deployment(root):
        opts = InitOptions(
            domain=DOMAIN,
            hostname=HOSTNAME,
            ipv4="127.0.0.1",
            listen_host="127.0.0.1",
            ports=(
                ("smtp", ports.smtp),
                ("submission", ports.submission),
                ("submissions", ports.submissions),
                ("imap", ports.imap),
                ("imaps", ports.imaps),
                ("https", ports.https),
                ("http", ports.http),
            ),
            dkim_selector="demo",
        )
        init_deployment(root, opts)
    enable_web(root, ports)
    password = generate_password()
    dep = Deployment.open(root)
    try:
        if dep.accounts.get_user(USER) is None:
            dep.accounts.add_user(USER, password, quota_bytes=dep.config.default_quota_bytes)
            dep.store.create_account(USER)
        else:
            dep.accounts.set_password(USER, password)
    finally:
        dep.close()
    return DemoResult(root, USER, password, ports)


def enable_web(root: Path, ports: DemoPorts) -> None:
    """The web listeners (a demo made before they existed gets them too) with the demo user
    as the pages' admin; the config is rewritten only when that changes something."""
    paths = StatePaths(root)
    cfg = load_config(paths.config)
    listen = cfg.listen
    if not listen.https:
        listen = dataclasses.replace(listen, https=[format_hostport("127.0.0.1", ports.https)])
    if not listen.http:
        listen = dataclasses.replace(listen, http=[format_hostport("127.0.0.1", ports.http)])
    admins = cfg.web.admins if USER in cfg.web.admins else [*cfg.web.admins, USER]
    web = dataclasses.replace(cfg.web, admins=admins)
    changed = dataclasses.replace(cfg, listen=listen, web=web)
    if changed != cfg:
        atomic_write(paths.config, render_config(changed), mode=0o640)  # as init writes it


def instructions(r: DemoResult) -> str:
    ca = r.root / "tls" / "ca.pem"
    ports = {
        "imaps": r.ports.imaps,
        "imap": r.ports.imap,
        "submissions": r.ports.submissions,
        "submission": r.ports.submission,
    }
    settings = "\n".join(client_settings("127.0.0.1", ports, r.user))
    return f"""\
mailstack demo: {DOMAIN} served from {r.root}
  (mail, keys and accounts stay there: `mailstack --dir {r.root} demo` runs it again,
   `rm -rf {r.root}` removes it)

  account   {r.user}
  password  {r.password}

Mail client settings (the certificate, for mail.example.test and 127.0.0.1, is from the
demo's own CA: {ca}):
{settings}
  SMTP in   127.0.0.1 port {r.ports.smtp} (no login; mail for @{DOMAIN} only)

Send a test mail (Debian: apt-get install swaks):
  swaks --server 127.0.0.1:{r.ports.smtp} --from someone@example.org --to {r.user}

Read it (curl speaks IMAP):
  curl --cacert {ca} 'imaps://127.0.0.1:{r.ports.imaps}/INBOX;UID=1' \\
       -u '{r.user}:{r.password}'

The status page and admin (log in as {r.user} with the password above; the browser
warns about the demo's own CA, or import {ca}):
  https://127.0.0.1:{r.ports.https}/

Press Ctrl-C to stop.
"""
