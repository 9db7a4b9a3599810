"""A real, isolated Postfix instance for interop tests and the SMTP benchmark.

Each instance has its own config directory (main.cf, master.cf), queue directory and data
directory under a tmp dir, listens only on 127.0.0.1:<high port>, and is driven with
`postfix -c DIR start|stop` (the documented way to run a second Postfix instance; `postmulti`
only adds bookkeeping in the system-wide main.cf, which we must not touch). Nothing runs
chrooted, so no copies of /etc files are needed.

Modes:
- `relay_to=(host, port)`: everything received is relayed there (`relayhost`), e.g. to a
  mailstack under test;
- `maildir=(domain, base, users)`: Postfix's `virtual(8)` agent delivers `user@domain` into
  `base/<domain>/<user>/` Maildirs (the benchmark's reference).

Postfix daemons run as `mail_owner = postfix`; the virtual agent writes as the `postfix`
user too, so the Maildir base (and the directories above it) must be reachable by it.
Readiness is the SMTP greeting on the listener; stopping is `postfix -c DIR stop`, then the
master PID from `pid/master.pid` (the process we started) is waited for and killed if needed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
{listen} inet  n       -       n       -       {smtpd_procs}  smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixError(RuntimeError):
    """Postfix could not be configured or started; carries its own words."""


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class MaildirTarget:
    domain: str
    base: Path  # Maildirs land in base/<domain>/<user>/
    users: Sequence[str]


class PostfixInstance:
    def __init__(
        self,
        directory: Path,
        *,
        relay_to: tuple[str, int] | None = None,
        maildir: MaildirTarget | None = None,
        hostname: str = "postfix.test",
        smtpd_procs: int = 100,
    ) -> None:
        self.directory = directory
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "spool"
        self.data_dir = directory / "data"
        self.log_path = directory / "maillog"
        self.relay_to = relay_to
        self.maildir = maildir
        self.hostname = hostname
        self.smtpd_procs = smtpd_procs
        self.host = "127.0.0.1"
        self.port = 0
        self.master_pid: int | None = None

    def _main_cf(self) -> str:
        owner = pwd.getpwnam("postfix")
        lines = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": "postfix.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "local_transport": "error:local delivery is disabled in this test instance",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_dns_support_level": "disabled",  # all destinations are [IP]:port literals
            "disable_dns_lookups": "yes",
            "smtpd_peername_lookup": "no",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.directory),
            "biff": "no",
            "message_size_limit": str(64 * 1024 * 1024),
            "smtp_helo_name": "$myhostname",
            # One connection per delivery, closed with QUIT: no idle sessions left on the
            # server under test when the test ends.
            "smtp_connection_cache_on_demand": "no",
            # Deliver at once: the queue manager should not wait between attempts in tests.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "in_flow_delay": "0",
            "default_process_limit": "200",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
        }
        if self.relay_to:
            host, port = self.relay_to
            lines["relayhost"] = f"[{host}]:{port}"
        if self.maildir:
            users = self.config_dir / "vmailbox"
            users.write_text(
                "".join(
                    f"{u}@{self.maildir.domain} {self.maildir.domain}/{u}/\n"
                    for u in self.maildir.users
                )
            )
            lines.update(
                {
                    "virtual_mailbox_domains": self.maildir.domain,
                    "virtual_mailbox_base": str(self.maildir.base),
                    "virtual_mailbox_maps": f"texthash:{users}",
                    "virtual_uid_maps": f"static:{owner.pw_uid}",
                    "virtual_gid_maps": f"static:{owner.pw_gid}",
                    "virtual_minimum_uid": str(min(owner.pw_uid, 100)),
                    "virtual_destination_concurrency_limit": "50",
                    "virtual_destination_recipient_limit": "1",
                    "virtual_mailbox_limit": "0",  # no per-mailbox size limit
                }
            )
        return "".join(f"{k} = {v}\n" for k, v in lines.items())

    def start(self) -> tuple[str, int]:
        """Write the config, start the master, return (host, port) once it greets."""
        for parent in self.directory.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostfixError(
                    f"{parent} is not searchable by the postfix user; put the "
                    "instance under a directory with mode o+x"
                )
        for _ in range(5):  # the probed port can be taken before Postfix binds it
            self.port = free_tcp_port()
            self.config_dir.mkdir(parents=True, exist_ok=True)
            self.queue_dir.mkdir(parents=True, exist_ok=True)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            owner = pwd.getpwnam("postfix")
            os.chown(self.data_dir, owner.pw_uid, owner.pw_gid)  # master.lock, caches
            if self.maildir:
                self._prepare_maildir_base(self.maildir.base)
            (self.config_dir / "main.cf").write_text(self._main_cf())
            (self.config_dir / "master.cf").write_text(
                MASTER_CF.format(listen=f"127.0.0.1:{self.port}", smtpd_procs=self.smtpd_procs)
            )
            self._postfix("check")  # creates the queue subdirectories with their owners
            self._postfix("start")
            self.master_pid = self._read_pid()
            try:
                self._wait_greeting()
            except PostfixError:
                if "address already in use" in self.log().lower():
                    self.stop()
                    continue
                self.stop()
                raise
            return self.host, self.port
        raise PostfixError(f"postfix did not start: {self.log()}")

    def _prepare_maildir_base(self, base: Path) -> None:
        owner = pwd.getpwnam("postfix")
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, owner.pw_uid, owner.pw_gid)
        # The virtual agent runs as `postfix`: every directory above the base must be
        # searchable by it (pytest's tmp dirs are 0700 root, so use a dir made for it).
        for parent in base.parents:
            if not parent.stat().st_mode & 0o001:
                raise PostfixError(
                    f"{parent} is not searchable by the postfix user; put the "
                    "Maildir base under a directory with mode o+x"
                )

    def _postfix(self, action: str) -> None:
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), action],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if proc.returncode != 0:
            raise PostfixError(
                f"postfix {action} failed ({proc.returncode}): "
                f"{(proc.stdout + proc.stderr).strip()}\n{self.log()}"
            )

    def _read_pid(self) -> int | None:
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _wait_greeting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                # Not listening yet: wait on the socket's own connect timeout, then retry.
                with contextlib.suppress(OSError):
                    socket.create_connection((self.host, self.port), timeout=0.2).close()
        raise PostfixError(f"postfix did not greet on port {self.port}: {self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """`postfix stop`, then make sure the master we started (by PID) is gone."""
        pid, self.master_pid = self.master_pid or self._read_pid(), None
        with contextlib.suppress(PostfixError, subprocess.TimeoutExpired):
            self._postfix("stop")
        if pid is None:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)  # not our child (postfix daemonises): just poll
            time.sleep(0.05)  # polling a foreign PID: there is no event to wait on
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> PostfixInstance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); /proc tells us it is really gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


PostfixFactory = Callable[..., PostfixInstance]


@pytest.fixture
def postfix_instance() -> Iterator[PostfixFactory]:
    """Yields `make(**PostfixInstance kwargs)`; every instance made is stopped at teardown."""
    if not os.access(POSTFIX, os.X_OK):
        pytest.fail(f"postfix is not installed ({POSTFIX}); the test setup installs it")
    made: list[PostfixInstance] = []
    # Postfix daemons run as `postfix` and must reach their data and queue directories, so the
    # instance lives in a dir of its own under /tmp with o+x (pytest's tmp dirs are 0700).
    base = Path(tempfile.mkdtemp(prefix="mailstack-postfix-"))
    base.chmod(0o711)

    def make(**kwargs: Any) -> PostfixInstance:
        instance = PostfixInstance(base / f"pf{len(made)}", **kwargs)
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in made:
            instance.stop()
        shutil.rmtree(base, ignore_errors=True)
