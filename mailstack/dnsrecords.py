"""Every DNS record a deployment needs, computed in Python; templates only lay them out.

For each hosted domain: MX, SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489), TLS-RPT
(RFC 8460), the RFC 6186 SRV records that let clients find submission and IMAP (and say that
POP3 is not offered), an autoconfig name; when the web side is served, the autodiscover name and
SRV record and MTA-STS (RFC 8461: the policy host and the `_mta-sts` TXT whose id is derived
from the policy, so it changes whenever the policy does); for the hostname: A/AAAA and an SPF
record of its own (HELO checks and bounces use it); and the reverse (PTR) records, which go to
whoever owns the IP block, not to the registrar. TXT values longer than 255 bytes are split into
several strings (RFC 7208 §3.3), and `unsplit` keeps the whole value for DNS web forms.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Where = Literal["dns-host", "hosting-provider"]
TTL = 3600


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str  # absolute, with trailing dot
    type: str
    value: str  # rdata in zone-file presentation format (TXT already quoted and split)
    zone: str  # the zone the record belongs in (absolute, trailing dot)
    where: Where
    reason: str
    unsplit: str | None = None  # TXT: the value as one string, for web forms
    ttl: int = TTL

    @property
    def relative_name(self) -> str:
        if self.name == self.zone:
            return "@"
        return self.name[: -len(self.zone) - 1]

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "type": self.type,
            "value": self.unsplit or self.value,
            "rdata": self.value,
            "zone": self.zone,
            "ttl": self.ttl,
            "where": self.where,
            "reason": self.reason,
        }


def txt_rdata(value: str) -> str:
    """A TXT value as zone-file rdata: split into <=255-byte quoted strings, quotes escaped."""
    raw = value.encode("utf-8")
    chunks = [raw[i : i + 255] for i in range(0, len(raw), 255)] or [b""]
    return " ".join(
        '"' + c.decode("utf-8").replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks
    )


def fqdn(name: str) -> str:
    return name.rstrip(".").lower() + "."


def in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def reverse_zone(address: str) -> tuple[str, str]:
    """(zone, owner name) of the PTR: the /24 for IPv4, the /64 nibble zone for IPv6."""
    ip = ipaddress.ip_address(address)
    owner = ip.reverse_pointer + "."
    if ip.version == 4:
        return owner.split(".", 1)[1], owner
    return owner.split(".", 16)[16], owner  # drop the 16 interface-id nibbles


@dataclass(frozen=True, slots=True)
class Ports:
    submission: int | None = 587
    submissions: int | None = 465
    imap: int | None = 143
    imaps: int | None = 993


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    """The MTA-STS policy this server publishes for every hosted domain (RFC 8461 §3.2)."""

    mode: str  # enforce, testing or none
    mx: tuple[str, ...]
    max_age: int  # seconds; RFC 8461 §3.2 caps it at 31557600

    def text(self) -> str:
        # RFC 8461 §3.2: "key: value" lines; CRLF is the recommended line end.
        lines = ["version: STSv1", f"mode: {self.mode}"]
        lines += [f"mx: {mx}" for mx in self.mx]
        lines.append(f"max_age: {self.max_age}")
        return "".join(line + "\r\n" for line in lines)

    def policy_id(self) -> str:
        """RFC 8461 §3.1: 1-32 alphanumerics that change when the policy does; a digest of
        the policy text does that by construction."""
        return hashlib.sha256(self.text().encode("ascii")).hexdigest()[:20]

    def txt(self) -> str:
        return f"v=STSv1; id={self.policy_id()}"


@dataclass(frozen=True, slots=True)
class MailDns:
    hostname: str
    ipv4: str = ""
    ipv6: str = ""
    ports: Ports = field(default_factory=Ports)
    https_port: int | None = None  # the web side (autoconfig, autodiscover, MTA-STS); None: off
    mta_sts: MtaStsPolicy | None = None

    def domain_records(
        self, domain: str, dkim_selector: str, dkim_txt: str | None
    ) -> list[DnsRecord]:
        """Records published in the domain's own zone (at its DNS host)."""
        zone, host = fqdn(domain), fqdn(self.hostname)
        recs = [
            DnsRecord(
                zone,
                "MX",
                f"10 {host}",
                zone,
                "dns-host",
                f"mail for {domain} is delivered to {self.hostname}",
            ),
            DnsRecord(
                zone,
                "TXT",
                txt_rdata("v=spf1 mx -all"),
                zone,
                "dns-host",
                "SPF: only this domain's MX hosts send its mail",
                "v=spf1 mx -all",
            ),
        ]
        if dkim_txt is not None:
            recs.append(
                DnsRecord(
                    f"{dkim_selector}._domainkey.{zone}",
                    "TXT",
                    txt_rdata(dkim_txt),
                    zone,
                    "dns-host",
                    "DKIM: the public key receivers verify our signatures with",
                    dkim_txt,
                )
            )
        dmarc = f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"
        tlsrpt = f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"
        recs += [
            DnsRecord(
                f"_dmarc.{zone}",
                "TXT",
                txt_rdata(dmarc),
                zone,
                "dns-host",
                "DMARC: quarantine mail that fails SPF and DKIM alignment; reports to postmaster",
                dmarc,
            ),
            DnsRecord(
                f"_smtp._tls.{zone}",
                "TXT",
                txt_rdata(tlsrpt),
                zone,
                "dns-host",
                "TLS-RPT: senders report TLS delivery problems to postmaster",
                tlsrpt,
            ),
        ]
        for service, port in (
            ("submission", self.ports.submission),
            ("submissions", self.ports.submissions),
            ("imap", self.ports.imap),
            ("imaps", self.ports.imaps),
        ):
            value = f"0 1 {port} {host}" if port else "0 0 0 ."
            why = (
                f"RFC 6186: mail clients find {service} at {self.hostname}:{port}"
                if port
                else f"RFC 6186: {service} is not offered"
            )
            recs.append(DnsRecord(f"_{service}._tcp.{zone}", "SRV", value, zone, "dns-host", why))
        for service in ("pop3", "pop3s"):
            recs.append(
                DnsRecord(
                    f"_{service}._tcp.{zone}",
                    "SRV",
                    "0 0 0 .",
                    zone,
                    "dns-host",
                    f"RFC 6186: {service.upper()} is not offered",
                )
            )
        if f"autoconfig.{zone}" != host:
            recs.append(
                DnsRecord(
                    f"autoconfig.{zone}",
                    "CNAME",
                    host,
                    zone,
                    "dns-host",
                    "mail-client autoconfiguration is served by the mail host",
                )
            )
        if self.https_port:
            recs += self._web_records(zone, host)
        return recs

    def _web_records(self, zone: str, host: str) -> list[DnsRecord]:
        recs = [
            DnsRecord(
                f"{sub}.{zone}",
                "CNAME",
                host,
                zone,
                "dns-host",
                f"{why} is served by the mail host",
            )
            for sub, why in (
                ("autodiscover", "Outlook's autodiscover"),
                ("mta-sts", "the MTA-STS policy (RFC 8461 §3.3)"),
            )
            if f"{sub}.{zone}" != host
        ]
        recs.append(
            DnsRecord(
                f"_autodiscover._tcp.{zone}",
                "SRV",
                f"0 1 {self.https_port} {host}",
                zone,
                "dns-host",
                f"Outlook finds autodiscover at {self.hostname}:{self.https_port}",
            )
        )
        if self.mta_sts is not None:
            txt = self.mta_sts.txt()
            recs.append(
                DnsRecord(
                    f"_mta-sts.{zone}",
                    "TXT",
                    txt_rdata(txt),
                    zone,
                    "dns-host",
                    f"MTA-STS (RFC 8461): senders require TLS to our MX ({self.mta_sts.mode}); "
                    "the id changes with the policy",
                    txt,
                )
            )
        return recs

    def host_records(self, zone: str) -> list[DnsRecord]:
        """The hostname's address and SPF records, in `zone` (a hosted domain or its own)."""
        host = fqdn(self.hostname)
        recs = []
        if self.ipv4:
            recs.append(
                DnsRecord(
                    host,
                    "A",
                    self.ipv4,
                    zone,
                    "dns-host",
                    f"{self.hostname} is the mail server's name",
                )
            )
        if self.ipv6:
            recs.append(
                DnsRecord(
                    host,
                    "AAAA",
                    str(ipaddress.IPv6Address(self.ipv6)),
                    zone,
                    "dns-host",
                    f"{self.hostname} over IPv6",
                )
            )
        recs.append(
            DnsRecord(
                host,
                "TXT",
                txt_rdata("v=spf1 a -all"),
                zone,
                "dns-host",
                "SPF for the HELO name and bounces (empty MAIL FROM)",
                "v=spf1 a -all",
            )
        )
        return recs

    def reverse_records(self) -> list[DnsRecord]:
        recs = []
        for address in (self.ipv4, self.ipv6):
            if address:
                zone, owner = reverse_zone(address)
                recs.append(
                    DnsRecord(
                        owner,
                        "PTR",
                        fqdn(self.hostname),
                        zone,
                        "hosting-provider",
                        f"reverse DNS of {address} must name {self.hostname}: "
                        "set it in your hosting provider's panel",
                    )
                )
        return recs

    def all_records(self, domains: dict[str, str | None], dkim_selector: str) -> list[DnsRecord]:
        """`domains` maps each hosted domain to its DKIM TXT value (None: no key yet)."""
        recs: list[DnsRecord] = []
        zones = [fqdn(d) for d in domains]
        host = fqdn(self.hostname)
        host_zone = max((z for z in zones if in_zone(host, z)), key=len, default=host)
        for domain, dkim_txt in domains.items():
            recs += self.domain_records(domain, dkim_selector, dkim_txt)
        recs += self.host_records(host_zone)
        recs += self.reverse_records()
        return recs


def group_by_zone(records: list[DnsRecord]) -> dict[str, list[DnsRecord]]:
    out: dict[str, list[DnsRecord]] = {}
    for r in records:
        out.setdefault(r.zone, []).append(r)
    return out
