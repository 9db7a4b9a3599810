"""Loopback doubles for outbound transport security tests (MTA-STS, DANE, TLS-RPT).

- `Pki`: a trustme CA ("the public CAs" as far as the test config's `ca_file` says) and a
  second, untrusted one; certificates for any names.
- `PolicyServer`: a real HTTPS server (stdlib http.server in a thread, TLS with the trusted
  CA's certificate for every `mta-sts.<domain>` name) serving per-Host policy files, counting
  requests. Its port goes into `[outbound] mta_sts_port`.
- `TlsMx`: an aiosmtpd MX that offers STARTTLS with a chosen certificate chain, recording each
  message and whether it came inside TLS. Its port goes into `[outbound] mx_port`.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trustme
from aiosmtpd.smtp import SMTP


@dataclass
class Pki:
    trusted: trustme.CA = field(default_factory=trustme.CA)
    untrusted: trustme.CA = field(default_factory=trustme.CA)

    def ca_file(self, directory: Path) -> str:
        path = directory / "test-ca.pem"
        self.trusted.cert_pem.write_to_path(str(path))
        return str(path)

    def server_context(
        self, *names: str, ca: trustme.CA | None = None, with_root: bool = False
    ) -> tuple[ssl.SSLContext, trustme.LeafCert]:
        """A server context for `names`; `with_root`: the CA certificate sent in the chain
        too (what DANE-TA 2 x x needs: RFC 7671 §5.2.2)."""
        issuer = ca or self.trusted
        leaf = issuer.issue_cert(*names)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if with_root:
            pem = leaf.private_key_and_cert_chain_pem.bytes() + issuer.cert_pem.bytes()
            with tempfile.NamedTemporaryFile(suffix=".pem") as f:
                f.write(pem)
                f.flush()
                ctx.load_cert_chain(f.name)
        else:
            leaf.configure_cert(ctx)
        return ctx, leaf


class PolicyServer:
    """HTTPS on 127.0.0.1:<port>: GET /.well-known/mta-sts.txt answers by Host header."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.policies: dict[str, bytes] = {}  # "mta-sts.<domain>" -> body
        self.requests: list[str] = []
        self.content_type = "text/plain"
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").split(":")[0]
                server.requests.append(host)
                body = server.policies.get(host)
                if self.path != "/.well-known/mta-sts.txt" or body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", server.content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PolicyServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def fetches(self, domain: str) -> int:
        return self.requests.count(f"mta-sts.{domain}")


def policy(mode: str, *mx: str, max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Got:
    mail_from: str
    rcpts: list[str]
    content: bytes
    over_tls: bool


@dataclass
class TlsMx:
    """A foreign MX offering STARTTLS with `ctx` (None: no STARTTLS at all)."""

    ctx: ssl.SSLContext | None
    port: int = 0
    received: list[Got] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append(
            Got(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
            )
        )
        return "250 2.0.0 queued"

    async def start(self) -> asyncio.Server:
        def protocol() -> SMTP:
            return SMTP(self, hostname="mx.double.test", tls_context=self.ctx)

        server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


def zone(records: str) -> str:
    """The `test.` zone with extra records (relative names)."""
    return (
        "$ORIGIN test.\n$TTL 60\n"
        "@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60\n"
        "@ IN NS ns.test.\nns IN A 127.0.0.1\n" + records
    )


def domain_records(name: str, *, sts_id: str | None = None, extra: str = "") -> str:
    """MX mx.<name>.test -> 127.0.0.1, and optionally an MTA-STS TXT + mta-sts host."""
    out = f"{name} IN MX 10 mx.{name}.test.\nmx.{name} IN A 127.0.0.1\n"
    if sts_id is not None:
        out += f'_mta-sts.{name} IN TXT "v=STSv1; id={sts_id}"\nmta-sts.{name} IN A 127.0.0.1\n'
    return out + extra
