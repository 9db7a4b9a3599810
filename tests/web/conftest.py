"""A deployment whose web side listens (https and http on ephemeral loopback ports), a running
`serve` of it, and a small HTTPS client that picks the SNI name apart from the address."""

from __future__ import annotations

import http.client
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailstack.init import InitOptions, init_deployment
from tests.checks.conftest import free_ports
from tests.support.serve import ServeProcess

SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "https", "http")


@pytest.fixture
def web_dir(state_dir: Path) -> Path:
    """Fixed free ports (not 0): autoconfig and `check` tell the ports in the config."""
    ports = tuple(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    init_deployment(
        state_dir,
        InitOptions(
            domain="example.com",
            hostname="mail.example.com",
            ipv4="127.0.0.1",
            listen_host="127.0.0.1",
            ports=ports,
            dkim_selector="test",
        ),
    )
    # No SMTP worker processes: the web side runs in the main process, and 2 cores are shared.
    cfg = state_dir / "mailstack.toml"
    cfg.write_text(cfg.read_text().replace("workers = -1", "workers = 0"))
    return state_dir


@pytest.fixture
def web_serve(web_dir: Path) -> Iterator[ServeProcess]:
    with ServeProcess(web_dir) as serve:
        yield serve


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


def https_request(
    port: int,
    path: str,
    *,
    host: str = "mail.example.com",
    ca: Path,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request to 127.0.0.1:port with SNI and Host `host`, verifying against `ca`."""
    ctx = ssl.create_default_context(cafile=str(ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    conn.sock = ctx.wrap_socket(raw, server_hostname=host)
    return _exchange(conn, method, path, body, headers)


def http_request(
    port: int, path: str, *, host: str = "mail.example.com", method: str = "GET"
) -> Reply:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return _exchange(conn, method, path, None, None)


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | None,
) -> Reply:
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()
