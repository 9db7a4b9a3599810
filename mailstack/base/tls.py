"""The server certificate as an `ssl.SSLContext`, reloadable without restarting listeners."""

from __future__ import annotations

import ssl
from pathlib import Path

from mailstack.base.errors import HostError


def load_server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    """A server TLS context (TLS 1.2+) from PEM files; HostError with the reason if unusable."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for path in (cert, key):  # load_cert_chain's FileNotFoundError does not name the file
        if not path.exists():
            raise HostError(
                f"TLS file missing: {path}", hint="run `mailstack init` or `mailstack tls import`"
            )
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise HostError(
            f"cannot use {cert} with {key}: {exc.reason or exc}",
            hint="the key does not match the certificate, or a file is not PEM; "
            "check with `mailstack tls status`",
        ) from None
    except PermissionError as exc:
        raise HostError(f"cannot read {exc.filename}: permission denied") from None
    return ctx


class TlsProvider:
    """The server certificate, reloadable (SIGHUP) without restarting listeners.

    Implicit-TLS listeners are created with `listening_context()`, whose SNI callback swaps in
    the current context on every handshake, so a reload applies to new connections at once.
    """

    def __init__(self, cert: Path, key: Path) -> None:
        self.cert, self.key = cert, key
        self.current = load_server_tls(cert, key)

    def reload(self) -> None:
        self.current = load_server_tls(self.cert, self.key)

    def listening_context(self) -> ssl.SSLContext:
        outer = load_server_tls(self.cert, self.key)

        def pick(sock: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
            sock.context = self.current

        outer.sni_callback = pick
        return outer
