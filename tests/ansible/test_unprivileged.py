"""`serve` as the mailstack user, binding ports below 1024 through CAP_NET_BIND_SERVICE only.

What the role's systemd unit does (User=mailstack, AmbientCapabilities=CAP_NET_BIND_SERVICE),
done here with setpriv(1) because systemd is not PID 1 on a test machine. Uses the role's
virtualenv: its Python is the system's, which an unprivileged user can run.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.ansible.conftest import Deployed
from tests.ansible.support import (
    CAP_NET_BIND_SERVICE,
    SERVICES,
    ServeFrom,
    free_ports,
    open_path_to,
    proc_ids,
)

pytestmark = [pytest.mark.external, pytest.mark.timeout(300)]

# The real ports when this machine leaves them free, else other free ports below 1024.
_WANTED = [25, 587, 465, 143, 993, *range(600, 1024)]

SETPRIV = ["setpriv", "--reuid=mailstack", "--regid=mailstack", "--init-groups"]
WITH_CAP = ["--inh-caps", "+net_bind_service", "--ambient-caps", "+net_bind_service"]


@pytest.fixture(scope="module")
def low_ports_deployment(deployed: Deployed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lowports") / "state"
    open_path_to(root.parent)
    # Privileged means below this sysctl (1024 unless a container lowered it).
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    ports = free_ports(len(SERVICES), [p for p in _WANTED if p < start])
    flags = [f"--{s}-port={p}" for s, p in zip(SERVICES, ports, strict=True)]
    init = subprocess.run(
        [deployed.mailstack, "--dir", str(root), "init", "--non-interactive", "--system-user",
         "--domain", "example.com", "--hostname", "mail.example.com", "--ipv4", "127.0.0.1",
         "--listen-host", "127.0.0.1", *flags],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    assert "The state directory belongs to the user mailstack" in init.stdout
    assert root.stat().st_uid == pwd.getpwnam("mailstack").pw_uid
    return root


def test_serve_binds_low_ports_as_mailstack_with_the_capability(
    deployed: Deployed, low_ports_deployment: Path
) -> None:
    root = low_ports_deployment
    argv = [*SETPRIV, *WITH_CAP, deployed.mailstack, "--dir", str(root), "serve"]
    with ServeFrom(argv, root) as proc:
        assert proc.proc is not None
        uid, euid, ambient = proc_ids(proc.proc.pid)
        assert uid == euid == pwd.getpwnam("mailstack").pw_uid
        assert ambient == CAP_NET_BIND_SERVICE
        assert all(port < 1024 for port in (proc.port(s) for s in SERVICES))
        with smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=30) as smtp:
            code, _ = smtp.ehlo("client.example.org")
            assert code == 250
        with imaplib.IMAP4("127.0.0.1", proc.port("imap"), timeout=30) as imap:
            assert "STARTTLS" in imap.capabilities
        if (os.cpu_count() or 1) > 1:  # then the unprivileged process spawned SMTP workers
            assert any("SMTP worker" in line and "ready" in line for line in proc.log)


def test_serve_without_the_capability_is_refused_in_one_line(
    deployed: Deployed, low_ports_deployment: Path
) -> None:
    done = subprocess.run(
        [*SETPRIV, deployed.mailstack, "--dir", str(low_ports_deployment), "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "permission denied" in done.stderr
    assert "Traceback" not in done.stderr
