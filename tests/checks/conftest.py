"""A real deployment for `mailstack check`: init on loopback, zones in a real nsd, a real serve.

Listeners get fixed free high ports (not 0), because `check` connects to the ports in the
config and the zone's SRV records carry them too.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mailstack.init import InitOptions, init_deployment
from tests.conftest import run_cli
from tests.support.nsd import NsdServer
from tests.support.serve import ServeProcess

SERVICES = ("smtp", "submission", "submissions", "imap", "imaps")
DOMAIN = "example.com"
HOSTNAME = "mail.example.com"
FORWARD = "example.com"
REVERSE = "0.0.127.in-addr.arpa"


def free_ports(n: int) -> list[int]:
    """n distinct ports free on 127.0.0.1 right now (all held open at once, then released)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def make_deployment(root: Path) -> dict[str, int]:
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    init_deployment(
        root,
        InitOptions(
            domain=DOMAIN,
            hostname=HOSTNAME,
            ipv4="127.0.0.1",
            listen_host="127.0.0.1",
            ports=tuple(ports.items()),
            dkim_selector="test",
        ),
    )
    return ports


def zones(root: Path) -> dict[str, str]:
    return {
        FORWARD: (root / "dns" / f"{FORWARD}.zone").read_text(),
        REVERSE: (root / "dns" / f"{REVERSE}.zone").read_text(),
    }


def start_nsd(directory: Path, zone_texts: dict[str, str]) -> NsdServer:
    server = NsdServer(directory, zone_texts)
    server.start()
    return server


def set_listen(root: Path, service: str, value: str) -> None:
    """Rewrite `listen.<service>` in the deployment's mailstack.toml."""
    config = root / "mailstack.toml"
    text, n = re.subn(rf"(?m)^{service} = \[.*\]$", f"{service} = {value}", config.read_text())
    assert n == 1, f"no listen.{service} line"
    config.write_text(text)


def set_resolver(root: Path, resolver: str) -> None:
    """Point `[dns] resolver` at nsd, so serve's own SPF/DKIM/DMARC verdicts use our zones."""
    config = root / "mailstack.toml"
    text, n = re.subn(r'(?m)^resolver = ".*"$', f'resolver = "{resolver}"', config.read_text())
    assert n == 1
    config.write_text(text)


@dataclass
class Live:
    root: Path
    ports: dict[str, int]
    nsd: NsdServer

    @property
    def resolver(self) -> str:
        return f"127.0.0.1:{self.nsd.port}"


def check(root: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`mailstack check --json ARGS` as a subprocess: (process, the parsed JSON object)."""
    proc = run_cli(root, "check", "--json", *args, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    data: dict[str, Any] = json.loads(proc.stdout)
    return proc, data


def not_passing(data: dict[str, Any]) -> dict[str, str]:
    """id -> status of every check that did not pass (ids repeat only per subject)."""
    return {c["id"]: c["status"] for c in data["checks"] if c["status"] != "pass"}


def only(data: dict[str, Any], id_: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [c for c in data["checks"] if c["id"] == id_]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One deployment with its zones in nsd and `mailstack serve` running (module-wide)."""
    base = tmp_path_factory.mktemp("live")
    root = base / "state"
    ports = make_deployment(root)
    nsd = start_nsd(base / "nsd", zones(root))
    set_resolver(root, f"127.0.0.1:{nsd.port}")
    try:
        with ServeProcess(root):
            yield Live(root, ports, nsd)
    finally:
        nsd.stop()


@pytest.fixture(scope="module")
def dns_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deployment for DNS variants (no serve needed: `check --only dns`)."""
    root = tmp_path_factory.mktemp("dnsvariants") / "state"
    make_deployment(root)
    return root
