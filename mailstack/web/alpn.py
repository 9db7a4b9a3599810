"""ACME TLS-ALPN-01 (RFC 8737): the challenge certificates and how the https listener shows them.

While a name's challenge is pending, `mailstack.web.acme` keeps a self-signed certificate for it
under acme/tls-alpn/<name>.pem (certificate and key, 0600). Every https listener, serve's and the
one `tls acme` binds when no serve runs, looks there from its SNI callback: a file for the
requested name switches the handshake to a context whose only certificate is the challenge one
and whose only ALPN protocol is "acme-tls/1" (§3), so the CA's validation handshake succeeds.

Python's ssl module has no ALPN-select callback, and SNI is decided before ALPN, so the switch is
by name alone: while that exact name's challenge is pending (the seconds the CA needs to
validate), ordinary HTTPS to it gets the challenge certificate and fails, as with other ACME
clients' standalone TLS-ALPN mode. Other names keep the real certificate throughout. A file left
behind by a killed `tls acme` stops counting after MAX_PENDING_S, so it cannot keep a name from
its real certificate. The look-up costs one stat() per handshake; a context is built once per file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.base.fsutil import ensure_dir
from mailstack.base.paths import StatePaths
from mailstack.keys import write_private

log = logging.getLogger(__name__)

ACME_TLS_1 = "acme-tls/1"  # the ALPN protocol of the validation handshake (RFC 8737 §6.2)
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")  # RFC 8737 §6.1
# An SNI name we may turn into a file name: an A-label host name, nothing else.
# Far beyond an order's deadline (mailstack.web.acme.ORDER_TIMEOUT_S): older files are leftovers.
MAX_PENDING_S = 600
_NAME = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def challenge_dir(paths: StatePaths) -> Path:
    """Where pending TLS-ALPN-01 certificates are kept (beside HTTP-01's acme/challenges/)."""
    return paths.acme_dir / "tls-alpn"


def acme_identifier_value(key_authorization: str) -> bytes:
    """The extension's value (RFC 8737 §3): the DER OCTET STRING of SHA-256(key authorization)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest  # OCTET STRING tag, length 32, the digest


def challenge_certificate(name: str, key_authorization: str) -> bytes:
    """RFC 8737 §3: a self-signed certificate naming only `name`, with the critical
    acmeIdentifier extension; returned as PEM, certificate then its (throwaway) key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(
            x509.UnrecognizedExtension(
                ID_PE_ACME_IDENTIFIER, acme_identifier_value(key_authorization)
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM) + key_pem


def challenge_path(directory: Path, name: str) -> Path | None:
    """Where `name`'s challenge certificate lives; None for a name that is no plain host name."""
    name = name.lower().rstrip(".")
    return directory / f"{name}.pem" if _NAME.fullmatch(name) and ".." not in name else None


@contextlib.contextmanager
def pending_challenges(directory: Path) -> Iterator[Callable[[str, str], None]]:
    """Yields publish(name, key authorization), which puts a name's challenge certificate where
    the listeners look; every one published is removed on the way out, validated or not."""
    ensure_dir(directory, mode=0o700)
    published: list[Path] = []

    def publish(name: str, key_authorization: str) -> None:
        path = challenge_path(directory, name)
        if path is None:
            raise ValueError(f"not a host name: {name!r}")
        published.append(path)
        write_private(path, challenge_certificate(name, key_authorization))  # atomic

    try:
        yield publish
    finally:
        for path in published:
            path.unlink(missing_ok=True)


class AlpnResponder:
    """Hands an SNI callback the challenge context of a name whose challenge is pending."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cache: dict[Path, tuple[int, ssl.SSLContext]] = {}

    def context_for(self, name: str | None) -> ssl.SSLContext | None:
        path = challenge_path(self.directory, name) if name else None
        if path is None:
            return None
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            self._cache.pop(path, None)
            return None
        if time.time() - mtime / 1e9 > MAX_PENDING_S:
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §4: TLS 1.2 or later
        try:
            ctx.load_cert_chain(path)
        except (OSError, ssl.SSLError) as exc:  # half written, or removed meanwhile
            log.warning("ACME: cannot use the TLS-ALPN-01 certificate %s: %s", path, exc)
            return None
        ctx.set_alpn_protocols([ACME_TLS_1])  # §3: that protocol only
        self._cache[path] = (mtime, ctx)
        return ctx

    def wrap(self, outer: ssl.SSLContext) -> ssl.SSLContext:
        """Make `outer`'s SNI callback answer pending challenges first, then do what it did."""
        previous = outer.sni_callback

        # `name` is None when the client sent no SNI, whatever typeshed's signature says.
        def pick(sock: ssl.SSLObject, name: str, ctx: ssl.SSLContext) -> int | None:
            if (challenge := self.context_for(name)) is not None:
                sock.context = challenge
                return None
            return previous(sock, name, ctx) if previous is not None else None

        outer.sni_callback = pick
        return outer
