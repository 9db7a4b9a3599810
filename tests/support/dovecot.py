"""A real Dovecot IMAP server for tests, on a loopback high port, serving our Maildirs.

Interoperability tests point Dovecot at the Maildir++ that mailstack wrote (and the other way
round) to prove the two agree on messages, flags, keywords, folders, UIDs and UIDVALIDITY.

Each instance lives in its own work dir: dovecot.conf, a passwd-file with one line per account
(`user:{PLAIN}password::::<maildir>::userdb_mail=maildir:<maildir>`), base_dir (sockets, pid),
state_dir and the log. Dovecot runs in the foreground (`dovecot -F -c CONF`); plaintext LOGIN is
allowed (loopback only, no TLS); the default Maildir++ layout with "." as separator is used,
exactly as mailstack lays it out.

Dovecot's imap refuses to touch mail as root ("Mail access not allowed for root", hard-coded
in mail-storage-service.c), so mail is accessed as `nobody`: the work dir is traversable (0711)
and `grant()` hands the Maildirs to that user. Tests running as root keep full access to the
files, but what mailstack writes after `grant()` is root's again: call `grant()` again before
Dovecot should see it. Keep the state directory under `factory.workdir` for this reason.

Readiness is the IMAP greeting on the port; stopping sends SIGTERM to the PID we started.

Usage (import the fixture by name so pytest sees it):

    from tests.support.dovecot import dovecot_server  # noqa: F401

    def test_something(dovecot_server):
        maildir = dovecot_server.workdir / "state" / ...          # write it with mailstack
        server = dovecot_server({"alice@example.com": ("secret", maildir)})
        with server.imap("alice@example.com") as imap:           # imaplib.IMAP4, logged in
            imap.select("INBOX")
"""

from __future__ import annotations

import contextlib
import grp
import imaplib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

DOVECOT = "/usr/sbin/dovecot"
MAIL_USER, MAIL_GROUP = "nobody", "nogroup"
START_TIMEOUT_S = 30.0

CONFIG = """\
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
info_log_path = {base}/dovecot.log
instance_name = mailstack-test-{port}
login_greeting = {greeting}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_uid = {mail_uid}
mail_gid = {mail_gid}
first_valid_uid = 1
mail_fsync = always
# Our tests read the files right after Dovecot answers: no lazily written state.
maildir_very_dirty_syncs = no
# The passwd-file sits in the test's work dir: let auth read it as the user running the test.
service auth {{
  user = {user}
}}
service auth-worker {{
  user = {user}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {base}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = .
  prefix =
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DovecotServer:
    """One running Dovecot; `imap(user)` opens a logged-in imaplib connection."""

    base: Path
    port: int
    accounts: dict[str, tuple[str, Path]]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @contextlib.contextmanager
    def imap(self, user: str) -> Iterator[imaplib.IMAP4]:
        conn = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        try:
            conn.login(user, self.accounts[user][0])
            yield conn
        finally:
            with contextlib.suppress(imaplib.IMAP4.error, OSError):
                conn.logout()

    def grant(self) -> None:
        """Give the Maildirs to Dovecot's mail user (after mailstack wrote into them)."""
        uid, gid = pwd.getpwnam(MAIL_USER).pw_uid, grp.getgrnam(MAIL_GROUP).gr_gid
        for _password, maildir in self.accounts.values():
            for parent in maildir.parents:
                if parent == self.base.parent:
                    break
                os.chown(parent, uid, gid)
            for dirpath, _dirs, files in os.walk(maildir):
                os.chown(dirpath, uid, gid)
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        os.chown(os.path.join(dirpath, name), uid, gid)

    def log(self) -> str:
        try:
            return (self.base / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def start_dovecot(
    base: Path, accounts: dict[str, tuple[str, Path]], extra_config: str = ""
) -> DovecotServer:
    """Start Dovecot serving `accounts` ({user: (password, maildir)}) from `base`.

    Every maildir must lie under `base.parent`, which must be traversable by MAIL_USER.
    `extra_config` is appended to dovecot.conf (e.g. `mail_plugins = quota` and its plugin {}).
    """
    for sub in ("run", "state"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "passwd").write_text(
        "".join(
            f"{user}:{{PLAIN}}{password}::::{maildir}::userdb_mail=maildir:{maildir}\n"
            for user, (password, maildir) in accounts.items()
        )
    )
    server = DovecotServer(base, 0, dict(accounts))
    server.grant()
    for _attempt in range(3):
        # The free port may be taken by another process before Dovecot binds it: try again.
        server.port = _free_port()
        if _start_on_port(server, extra_config):
            return server
    raise RuntimeError(f"dovecot could not bind a free port: {server.log()}")


def _start_on_port(server: DovecotServer, extra_config: str) -> bool:
    """Start Dovecot on `server.port`; False if that port was taken meanwhile."""
    base, port = server.base, server.port
    greeting = f"mailstack-test-{port}-{os.getpid()}"  # so we know it is our Dovecot answering
    config = base / "dovecot.conf"
    config.write_text(
        CONFIG.format(
            base=base,
            port=port,
            user=pwd.getpwuid(os.getuid()).pw_name,
            mail_uid=MAIL_USER,
            mail_gid=MAIL_GROUP,
            greeting=greeting,
        )
        + extra_config
    )
    with open(base / "stderr.log", "wb") as stderr:  # the child keeps its own descriptor
        server.process = process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)], stdout=subprocess.DEVNULL, stderr=stderr
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            err = (base / "stderr.log").read_text(errors="replace") + server.log()
            if "in use" in err:
                return False
            raise RuntimeError(f"dovecot exited with {process.returncode}: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if greeting.encode() in s.recv(512):
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"dovecot did not greet on port {port}: {server.log()}")
        time.sleep(0.05)  # poll for the listener; the greeting, not the sleep, is the signal


class DovecotFactory:
    """Callable fixture value: `factory(accounts)` starts a server; `workdir` holds state."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[DovecotServer] = []

    def __call__(
        self, accounts: dict[str, tuple[str, Path]], extra_config: str = ""
    ) -> DovecotServer:
        base = self.workdir / f"dovecot{len(self.started)}"
        server = start_dovecot(base, accounts, extra_config)
        self.started.append(server)
        return server


@pytest.fixture
def dovecot_server() -> Iterator[DovecotFactory]:
    """Starts Dovecot for {user: (password, maildir)}; stopped and cleaned up after the test."""
    if not (Path(DOVECOT).exists() and shutil.which("doveconf")):
        pytest.fail("dovecot is not installed (Debian: dovecot-imapd); scripts/test installs it")
    # Not tmp_path: pytest's base temp dir is 0700, and Dovecot's imap runs as MAIL_USER.
    workdir = Path(tempfile.mkdtemp(prefix="mailstack-dovecot-"))
    workdir.chmod(0o711)
    factory = DovecotFactory(workdir)
    try:
        yield factory
    finally:
        for server in factory.started:
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
