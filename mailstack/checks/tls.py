"""TLS checks (`tls.*`) of the certificate files: chain, key, hostname, expiry, trust.

Each property is its own check so that one fault fails one id: the chain's signatures and
order (`tls.chain`), the key matching the leaf (`tls.key`), the leaf naming the hostname
(RFC 6125, `tls.hostname`), time left (`tls.expiry`: warn under 30 days, fail under 7 or
expired), and who vouches for it (`tls.trust`): a chain that ends in a root from the system's
trust store passes; mailstack's private CA warns, since public senders and mail clients do
not know it (SMTP senders mostly still deliver: RFC 7435 opportunistic TLS).
"""

from __future__ import annotations

import datetime as dt
import itertools
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from mailstack.base.config import Config
from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths
from mailstack.checks import Finding, failed, passed, skipped, warned
from mailstack.keys import cert_names, key_matches_cert, load_chain, name_matches

EXPIRY_WARN_DAYS = 30
EXPIRY_FAIL_DAYS = 7

_RENEW = (
    "renew it: with the private CA, `mailstack init --force` makes a new one; with a "
    "public CA, `mailstack tls import --cert fullchain.pem --key privkey.pem`, then "
    "reload serve (SIGHUP)"
)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_tls(cfg: Config, paths: StatePaths, now: dt.datetime | None = None) -> list[Finding]:
    now = now or dt.datetime.now(dt.UTC)
    try:
        chain = load_chain(paths.tls_cert.read_bytes())
    except (OSError, MailstackError) as exc:
        reason = f"cannot read {paths.tls_cert}: {exc}"
        return [
            failed("tls.chain", reason, "restore the file, or `mailstack tls import`"),
            *(
                skipped(i, f"no certificate ({reason})")
                for i in ("tls.key", "tls.hostname", "tls.expiry", "tls.trust")
            ),
        ]
    return [
        _chain(paths, chain),
        _key(paths, chain[0]),
        _hostname(cfg, chain[0]),
        _expiry(chain[0], now),
        _trust(paths, chain),
    ]


def _chain(paths: StatePaths, chain: list[x509.Certificate]) -> Finding:
    for i, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        if not _signed_by(cert, issuer):
            return failed(
                "tls.chain",
                f"{paths.tls_cert}: certificate {i + 1} is not signed by certificate {i + 2}",
                "the file must hold the server certificate first, then each issuer "
                "in order (a fullchain.pem); `mailstack tls import` checks this",
            )
    return passed(
        "tls.chain",
        f"{paths.tls_cert}: {len(chain)} certificate(s) in order, each signed by the next",
    )


def _key(paths: StatePaths, leaf: x509.Certificate) -> Finding:
    try:
        key = serialization.load_pem_private_key(paths.tls_key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return failed(
            "tls.key",
            f"cannot read {paths.tls_key}: {exc}",
            "the key must be unencrypted PEM: `mailstack tls import --cert ... "
            "--key ...` with the key of this certificate",
        )
    if not key_matches_cert(key, leaf):
        return failed(
            "tls.key",
            f"{paths.tls_key} is not the key of the certificate in "
            f"{paths.tls_cert}: serve cannot start TLS",
            "install the matching pair: `mailstack tls import --cert fullchain.pem "
            "--key privkey.pem` (or `mailstack init --force` for a new private-CA "
            "pair)",
        )
    return passed("tls.key", f"{paths.tls_key.name} matches the certificate")


def _hostname(cfg: Config, leaf: x509.Certificate) -> Finding:
    host = cfg.server.hostname
    names = cert_names(leaf)
    if any(name_matches(n, host) for n in names):
        return passed("tls.hostname", f"the certificate covers {host}")
    return failed(
        "tls.hostname",
        f"the certificate names {', '.join(names) or 'nothing'}, not {host}: clients refuse it",
        f"get a certificate with {host} as a subjectAltName and `mailstack tls import` "
        "it (or `mailstack init --force` for a private-CA one)",
    )


def _expiry(leaf: x509.Certificate, now: dt.datetime) -> Finding:
    not_after = leaf.not_valid_after_utc
    days = (not_after - now).total_seconds() / 86400
    when = f"{not_after:%Y-%m-%d %H:%M} UTC"
    if now < leaf.not_valid_before_utc:
        return failed(
            "tls.expiry",
            f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            "check the system clock, or install a certificate valid now",
        )
    if days < 0:
        return failed("tls.expiry", f"the certificate expired on {when}", _RENEW)
    if days < EXPIRY_FAIL_DAYS:
        return failed("tls.expiry", f"the certificate expires in {days:.1f} days ({when})", _RENEW)
    if days < EXPIRY_WARN_DAYS:
        return warned("tls.expiry", f"the certificate expires in {days:.0f} days ({when})", _RENEW)
    return passed("tls.expiry", f"valid for {days:.0f} more days (until {when})")


def system_roots() -> list[x509.Certificate]:
    """The system's trusted roots (the file OpenSSL uses), empty if there is none."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            try:
                return x509.load_pem_x509_certificates(Path(candidate).read_bytes())
            except ValueError:
                continue
    return []


def _trust(paths: StatePaths, chain: list[x509.Certificate]) -> Finding:
    last = chain[-1]
    private_ca = None
    if paths.ca_cert.exists():
        try:
            private_ca = load_chain(paths.ca_cert.read_bytes())[0]
        except MailstackError:
            private_ca = None
    if private_ca is not None and (last == private_ca or _signed_by(last, private_ca)):
        return warned(
            "tls.trust",
            "the certificate is from mailstack's private CA: public "
            "senders and mail clients do not trust it (clients must import "
            f"{paths.ca_cert})",
            "for public use get a certificate from a public CA "
            "(e.g. Let's Encrypt) and `mailstack tls import --cert fullchain.pem "
            "--key privkey.pem`",
        )
    roots = system_roots()
    for root in roots:
        if last == root or (root.subject == last.issuer and _signed_by(last, root)):
            return passed(
                "tls.trust", f"the chain ends at a public root: {root.subject.rfc4514_string()}"
            )
    if last.issuer == last.subject:
        what = "is self-signed"
    else:
        what = f"ends at {last.issuer.rfc4514_string()}, which the system does not trust"
    return warned(
        "tls.trust",
        f"the certificate chain {what}: public senders and mail clients will not trust it",
        "get a certificate from a public CA (e.g. Let's Encrypt) and `mailstack tls "
        "import --cert fullchain.pem --key privkey.pem`; if the chain lacks its "
        "intermediate, import the full chain",
    )
