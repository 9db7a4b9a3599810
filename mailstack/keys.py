"""Key material: the private CA and server certificate `init` makes, DKIM keys, TLS import.

TLS: an ECDSA P-256 CA valid 10 years signs a server certificate valid 397 days (the CA/Browser
Forum's maximum, so the same rotation habits work with a public CA later). DKIM: RSA-2048
(RFC 8301 requires >= 1024, recommends 2048; Ed25519 (RFC 8463) is not yet verified by every
large receiver). Every private key is written 0600 and atomically.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import itertools
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mailstack.base.errors import MailstackError
from mailstack.base.fsutil import atomic_write

CA_DAYS = 3650
LEAF_DAYS = 397
DKIM_BITS = 2048


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: PrivateKeyTypes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    ca_cert: bytes
    ca_key: bytes
    fullchain: bytes  # leaf then CA
    privkey: bytes


def _general_name(name: str) -> x509.GeneralName:
    """An IP address SAN for an address (RFC 5280 §4.2.1.6), a DNS name SAN otherwise."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_tls(hostname: str, extra_names: list[str]) -> TlsMaterial:
    """A private CA and a server certificate for `hostname` (+ `extra_names`) signed by it."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailstack"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"mailstack private CA for {hostname}"),
        ]
    )
    now = _now()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    names = list(dict.fromkeys([hostname, *extra_names]))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return TlsMaterial(
        _pem_cert(ca_cert),
        _pem_key(ca_key),
        _pem_cert(leaf) + _pem_cert(ca_cert),
        _pem_key(leaf_key),
    )


def make_dkim_key() -> bytes:
    """An RSA-2048 DKIM private key, PEM (PKCS#1, as OpenDKIM and dkimpy both read)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=DKIM_BITS)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def dkim_public_record(private_pem: bytes) -> str:
    """The DKIM TXT value for a private key: 'v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>'."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise MailstackError("DKIM key is not an RSA key")
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def write_private(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o600)


def write_public(path: Path, data: bytes) -> None:
    atomic_write(path, data, mode=0o644)


# -- inspecting and importing certificates -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertInfo:
    subject: str
    issuer: str
    names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    is_self_issued_chain: bool  # the chain ends in a certificate that signed itself (our CA)
    chain_length: int

    def days_left(self, now: dt.datetime | None = None) -> float:
        return (self.not_after - (now or _now())).total_seconds() / 86400


def load_chain(pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise MailstackError(f"not a PEM certificate chain: {exc}") from None
    if not certs:
        raise MailstackError("no certificate found in the file")
    return certs


def cert_names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(san.get_values_for_type(x509.DNSName)) + tuple(
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    )


def name_matches(pattern: str, hostname: str) -> bool:
    """RFC 6125 matching of one SAN entry (a leftmost '*' matches exactly one label)."""
    pattern, hostname = pattern.lower().rstrip("."), hostname.lower().rstrip(".")
    if pattern == hostname:
        return True
    if pattern.startswith("*."):
        head, _, rest = hostname.partition(".")
        return bool(head) and rest == pattern[2:]
    return False


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def key_matches_cert(key: PrivateKeyTypes, cert: x509.Certificate) -> bool:
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(key.public_key().public_bytes(der, pub) == cert.public_key().public_bytes(der, pub))


def inspect_tls(fullchain: bytes) -> CertInfo:
    chain = load_chain(fullchain)
    leaf, last = chain[0], chain[-1]
    return CertInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        names=cert_names(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        is_self_issued_chain=last.issuer == last.subject and _signed_by(last, last),
        chain_length=len(chain),
    )


def validate_tls_pair(fullchain: bytes, key_pem: bytes, hostname: str) -> CertInfo:
    """Check an imported certificate: key matches, chain in order, hostname covered, in date."""
    chain = load_chain(fullchain)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise MailstackError(
            f"cannot read the private key: {exc}",
            hint="the key must be PEM and not password-protected",
        ) from None
    if not key_matches_cert(key, chain[0]):
        raise MailstackError(
            "the private key does not match the certificate",
            hint="pass the key that was used for this certificate's request",
        )
    for i, (cert, issuer) in enumerate(itertools.pairwise(chain)):
        if not _signed_by(cert, issuer):
            raise MailstackError(
                f"certificate {i + 1} in the chain is not signed by certificate {i + 2}",
                hint="the file must hold the server certificate first, then each issuer in order "
                "(a 'fullchain.pem')",
            )
    names = cert_names(chain[0])
    if not any(name_matches(n, hostname) for n in names):
        raise MailstackError(
            f"the certificate does not cover {hostname} "
            f"(it names: {', '.join(names) or 'nothing'})",
            hint="get a certificate that lists the server hostname as a SAN",
        )
    info = inspect_tls(fullchain)
    if info.days_left() < 0:
        raise MailstackError(f"the certificate expired on {info.not_after:%Y-%m-%d}")
    return info


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True
