"""DANE for SMTP (RFC 7672): TLSA records of an MX host, checked against its certificate.

    Lookup(resolver, dnssec_mode, domain).requirement(mx_host)
        -> TlsRequirement (DANE applies), None (it does not), or a reason (host unusable)
    match(records, chain, host, now) -> None when the chain satisfies a record, else why

DANE needs DNSSEC-validated answers. mailstack does not validate signatures itself; `[dns]
dnssec` says whom to believe:
- "off" (default): no DANE.
- "trust-ad": the configured resolver validates (e.g. a local unbound) and the path to it is
  trusted (loopback): an answer counts as secure when it carries the AD bit (RFC 4035 §3.2.3;
  we set AD in queries, RFC 6840 §5.7, so such a resolver reports it).
- "trust-all": every answer of the configured resolver counts as secure. For test setups whose
  resolver is an authoritative server (nsd never sets AD) and for nothing else: with it, anyone
  who can answer our DNS queries can make us require a certificate of their choosing.

Rules applied (RFC 7672 §2.2): DANE applies to an MX host when the domain's MX answer and the
host's address answer are secure and its `_25._tcp.<host>` TLSA RRset is secure and not empty.
Then TLS is mandatory. Usable records are DANE-TA(2) and DANE-EE(3) (§3.1.3: PKIX-TA/PKIX-EE
are unusable for SMTP) with selector 0/1 and matching type 0/1/2; with none usable, TLS is
still mandatory but unauthenticated (§2.2). DANE-EE checks only the leaf's key or certificate
(no names, no expiry, §3.1.1); DANE-TA needs the trust anchor in the served chain, and the leaf
valid for the MX host name under it (§3.1.2, §3.2.2). A TLSA lookup that fails (SERVFAIL: what
a validating resolver answers for bogus data) makes the host unusable (§2.2.2).
The TLSA name always uses port 25, whatever `[outbound] mx_port` says: the service is
SMTP-to-MX, and mx_port only redirects tests.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.resolver
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from mailstack.delivery.transport import TlsRequirement, opportunistic_context

TLSA_PORT = 25  # RFC 7672 §2.2.2: _25._tcp.<MX host>
DANE_TA, DANE_EE = 2, 3


@dataclass(frozen=True, slots=True)
class Tlsa:
    usage: int
    selector: int
    mtype: int
    data: bytes

    @property
    def is_usable(self) -> bool:
        return (
            self.usage in (DANE_TA, DANE_EE) and self.selector in (0, 1) and self.mtype in (0, 1, 2)
        )

    def __str__(self) -> str:
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def _selected(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(Encoding.DER)
    return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _matches(record: Tlsa, cert: x509.Certificate) -> bool:
    data = _selected(cert, record.selector)
    if record.mtype == 1:
        data = hashlib.sha256(data).digest()
    elif record.mtype == 2:
        data = hashlib.sha512(data).digest()
    return data == record.data


def match(
    records: Sequence[Tlsa], chain: Sequence[bytes], host: str, now: datetime.datetime
) -> str | None:
    """None when the served chain (DER, leaf first) satisfies a usable record, else why not."""
    usable = [r for r in records if r.is_usable]
    if not usable:
        return None  # §2.2: mandatory TLS without authentication
    try:
        certs = [x509.load_der_x509_certificate(c) for c in chain]
    except ValueError as exc:
        return f"DANE: unparsable certificate: {exc}"
    if not certs:
        return "DANE: the server sent no certificate"
    leaf = certs[0]
    if any(_matches(r, leaf) for r in usable if r.usage == DANE_EE):
        return None
    for anchor in certs:
        if any(_matches(r, anchor) for r in usable if r.usage == DANE_TA):
            problem = _chains_to(anchor, leaf, certs[1:], host, now)
            return None if problem is None else f"DANE-TA: {problem}"
    return f"DANE: no TLSA record of _{TLSA_PORT}._tcp.{host} matches the certificate"


def _chains_to(
    anchor: x509.Certificate,
    leaf: x509.Certificate,
    others: Sequence[x509.Certificate],
    host: str,
    now: datetime.datetime,
) -> str | None:
    """RFC 7672 §3.1.2: the leaf must chain (signatures, dates) to the anchor the TLSA
    record names, and (§3.2.2) carry the MX host name. The anchor's own dates do not matter
    (RFC 7671 §5.2.2: the TLSA record vouches for it). Not the full Web PKI profile: DANE-TA
    anchors are private CAs as often as public ones."""
    path, current = [leaf], leaf
    while current != anchor:
        issuer = next(
            (c for c in [anchor, *others] if c.subject == current.issuer and _signed(current, c)),
            None,
        )
        if issuer is None or len(path) > 8:  # a chain longer than 8 is not one we accept
            return "the certificate does not chain to the TLSA trust anchor"
        path.append(issuer)
        current = issuer
    for cert in path[:-1] if len(path) > 1 else path:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            return f"certificate {cert.subject.rfc4514_string()!r} is not valid now"
    if not _names_host(leaf, host):
        return f"the certificate does not name {host}"
    return None


def _signed(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 6125 §6.4: a DNS-ID equal to the host, or "*." plus the host minus its first label."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return False
    host = host.lower().rstrip(".")
    for name in san.value.get_values_for_type(x509.DNSName):
        name = name.lower().rstrip(".")
        if name == host or (name.startswith("*.") and host.partition(".")[2] == name[2:]):
            return True
    return False


class Lookup:
    """TLSA lookups for the MX hosts of one domain, during one attempt. Blocking."""

    def __init__(self, resolver: dns.resolver.Resolver, mode: str, domain: str) -> None:
        self.mode = mode
        self.domain = domain
        self._records: dict[str, list[Tlsa]] = {}
        self._mx_secure: bool | None = None
        self._resolver = resolver
        if mode == "trust-ad":
            # Our own copy: AD set in queries (RFC 6840 §5.7), and a cache of its own so an
            # answer fetched without AD is never mistaken for an insecure one.
            r = dns.resolver.Resolver(configure=False)
            r.nameservers, r.port = list(resolver.nameservers), resolver.port
            r.timeout, r.lifetime = resolver.timeout, resolver.lifetime
            r.flags = dns.flags.RD | dns.flags.AD
            self._resolver = r

    def _secure(self, name: str, rdtype: str) -> tuple[bool, list[object]]:
        """(answer is secure, records); NXDOMAIN is (False, []); SERVFAIL etc. raise."""
        try:
            answer = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return False, []
        secure = self.mode == "trust-all" or bool(answer.response.flags & dns.flags.AD)
        return secure, list(answer.rrset or [])

    def requirement(self, host: str) -> TlsRequirement | str | None:
        if self.mode not in ("trust-ad", "trust-all"):
            return None
        try:
            if self._mx_secure is None:
                self._mx_secure = self._secure(self.domain, "MX")[0]
            if not self._mx_secure or not self._secure(host, "A")[0]:
                return None  # §2.2.1: an insecure MX or address: DANE does not apply
            secure, rdatas = self._secure(f"_{TLSA_PORT}._tcp.{host}", "TLSA")
        except dns.exception.DNSException as exc:
            return f"TLSA lookup for {host} failed: {type(exc).__name__}"
        if not secure or not rdatas:
            return None
        records = [
            Tlsa(r.usage, r.selector, r.mtype, bytes(r.cert))  # type: ignore[attr-defined]
            for r in rdatas
        ]
        self._records[host] = records

        def check(chain: list[bytes]) -> str | None:
            return match(records, chain, host, datetime.datetime.now(datetime.UTC))

        return TlsRequirement("dane", required=True, context=opportunistic_context(), check=check)

    def strings(self, host: str) -> list[str]:
        """RFC 8460 §4.4 policy-string for the host's TLSA RRset."""
        return [str(r) for r in self._records.get(host, [])]
