"""DNS checks (`dns.*`): what the world sees of this deployment, through one resolver.

Lookups go to `--resolver`, else `[dns] resolver`, else the system resolver, each bounded by
`[dns] timeout_s` (mailstack.base.dns's `make_resolver`/`DnsClient`: NXDOMAIN and NODATA are
empty answers, anything else an error). What should be published is `init.dns_records()`, so
the fix of a failing check is that record in zone-file form.

- MX (RFC 5321 §5.1) names the hostname; the hostname's A/AAAA are `server.ipv4/ipv6`.
- PTR of each address names the hostname, which resolves back to it (FCrDNS, RFC 8601 §3 "iprev").
- SPF (RFC 7208): exactly one record (§4.5: more is a permerror), evaluated with pyspf
  (`check_host()` for postmaster@domain from each of our addresses), not string-matched.
- DKIM (RFC 6376 §3.6.1): the TXT at <selector>._domainkey holds the public half of the key on
  disk, compared as DER, not as text.
- DMARC (RFC 7489 §6.3) exists and parses; p=none warns. TLS-RPT (RFC 8460), the RFC 6186 SRV
  records and CAA (RFC 8659) warn when missing.
"""

from __future__ import annotations

import base64
import dataclasses
import ipaddress
from collections.abc import Callable
from typing import Any

import dns.name
import dns.reversename

from mailstack.base.config import Config, parse_resolver
from mailstack.base.dns import DnsTempError, make_resolver
from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths
from mailstack.checks import Finding, failed, passed, skip_group, skipped, warned
from mailstack.delivery import dkim_selectors
from mailstack.dnsrecords import DnsRecord, fqdn
from mailstack.keys import dkim_public_record
from mailstack.smtp import dmarc
from mailstack.smtp.inbound_auth import AuthDns, check_spf

Records = list[DnsRecord]


def zone_line(rec: DnsRecord) -> str:
    """One record as a zone-file line, ready to paste."""
    return f"{rec.name} {rec.ttl} IN {rec.type} {rec.value}"


def copy_line(rec: DnsRecord) -> str:
    """A record as a person copies it: a long TXT value (DKIM) as one unbroken string, which
    DNS web forms take (the zone-file line's 255-byte quoted pieces pasted there break it)."""
    if rec.unsplit and rec.value != f'"{rec.unsplit}"':
        return f"{rec.name} {rec.ttl} IN {rec.type} with this value as one string: {rec.unsplit}"
    return zone_line(rec)


def publish(records: list[DnsRecord]) -> str:
    if not records:
        return ""
    if all(r.where == "hosting-provider" for r in records):
        head = "ask your hosting provider (whoever owns the IP block) to set reverse DNS: "
    else:
        head = f"publish at the DNS host of {records[0].zone.rstrip('.')}: "
    return head + " ; ".join(copy_line(r) for r in records)


def _find(records: Records, name: str, type_: str) -> list[DnsRecord]:
    return [r for r in records if r.name == fqdn(name) and r.type == type_]


def _txt(client: AuthDns, name: str) -> list[str]:
    return [t.decode("utf-8", "replace") for t in client.txt(name)]


def resolver_label(cfg: Config) -> str:
    return cfg.dns.resolver or "the system resolver"


def check_dns(
    cfg: Config,
    paths: StatePaths,
    domains: list[str],
    records: Records,
    resolver_override: str = "",
) -> list[Finding]:
    dns_cfg = cfg.dns
    if resolver_override:
        parse_resolver(resolver_override)  # validated by the CLI; a ValueError here is a bug
        dns_cfg = dataclasses.replace(dns_cfg, resolver=resolver_override)
    cfg = dataclasses.replace(cfg, dns=dns_cfg)
    client = AuthDns(make_resolver(dns_cfg))
    first = domains[0]
    try:
        client.lookup(first, "SOA")
    except DnsTempError as exc:
        where = resolver_label(cfg)
        return [
            failed(
                "dns.resolver",
                f"{where} gives no answer for {first}: {exc}",
                f"make sure {where} answers (`dig {_dig_at(cfg)}{first} SOA`); set "
                "[dns] resolver in mailstack.toml or pass --resolver HOST[:PORT]",
            ),
            *skip_group("dns", "DNS lookups fail (see dns.resolver)")[1:],
        ]
    out = [passed("dns.resolver", f"{resolver_label(cfg)} answers")]
    per_domain: list[Callable[[AuthDns, Config, StatePaths, str, Records], Finding]] = [
        _mx,
        _spf,
        _dkim,
        _dmarc,
        _tlsrpt,
        _srv,
    ]
    by_id: dict[str, list[Finding]] = {}
    for check in per_domain:
        for d in domains:
            finding = _guarded(check, client, cfg, paths, d, records)
            by_id.setdefault(finding.id, []).append(finding)
    out += by_id.pop("dns.mx")
    out.append(_guarded_host(_a, client, cfg, records))
    addresses = [a for a in (cfg.server.ipv4, cfg.server.ipv6) if a]
    if not addresses:
        out.append(skipped("dns.ptr", "no server.ipv4 or server.ipv6 in the config"))
    for address in addresses:
        try:
            out.append(_ptr(client, cfg, address, records))
        except DnsTempError as exc:
            out.append(_lookup_failed("dns.ptr", address, exc))
    for id_ in ("dns.spf", "dns.dkim", "dns.dmarc", "dns.tlsrpt", "dns.srv"):
        out += by_id.pop(id_)
    out.append(_guarded_host(_caa, client, cfg, records))
    return out


def _dig_at(cfg: Config) -> str:
    if not cfg.dns.resolver:
        return ""
    host, port = parse_resolver(cfg.dns.resolver)
    return f"@{host} " + (f"-p {port} " if port != 53 else "")


def _lookup_failed(id_: str, subject: str, exc: Exception) -> Finding:
    return failed(
        id_,
        f"{subject}: lookup failed: {exc}",
        f"the DNS servers for {subject} must answer (SERVFAIL, REFUSED or a timeout "
        "means receivers cannot see your records either): check the zone at your "
        "DNS host",
    )


_ID_OF = {
    "_mx": "dns.mx",
    "_spf": "dns.spf",
    "_dkim": "dns.dkim",
    "_dmarc": "dns.dmarc",
    "_tlsrpt": "dns.tlsrpt",
    "_srv": "dns.srv",
    "_a": "dns.a",
    "_caa": "dns.caa",
}


def _guarded(
    check: Callable[[AuthDns, Config, StatePaths, str, Records], Finding],
    client: AuthDns,
    cfg: Config,
    paths: StatePaths,
    domain: str,
    records: Records,
) -> Finding:
    try:
        return check(client, cfg, paths, domain, records)
    except DnsTempError as exc:
        return _lookup_failed(_ID_OF[check.__name__], domain, exc)


def _guarded_host(
    check: Callable[[AuthDns, Config, Records], Finding],
    client: AuthDns,
    cfg: Config,
    records: Records,
) -> Finding:
    try:
        return check(client, cfg, records)
    except DnsTempError as exc:
        return _lookup_failed(_ID_OF[check.__name__], cfg.server.hostname, exc)


# -- MX, A/AAAA, PTR ---------------------------------------------------------------------------


def _mx(client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records) -> Finding:
    host = fqdn(cfg.server.hostname)
    want = _find(records, domain, "MX")
    found = sorted(
        (int(r.preference), r.exchange.to_text().lower()) for r in client.lookup(domain, "MX")
    )
    shown = ", ".join(f"{p} {x}" for p, x in found)
    if not found:
        return failed(
            "dns.mx", f"{domain}: no MX record: mail for it cannot be delivered here", publish(want)
        )
    if host not in {x for _, x in found}:
        return failed(
            "dns.mx",
            f"{domain}: MX points to {shown}, not to {host}",
            publish(want)
            + f" ; and remove: {domain}. IN MX "
            + ", ".join(f"{p} {x}" for p, x in found),
        )
    best = found[0][0]
    ours = min(p for p, x in found if x == host)
    if ours > best:
        return warned(
            "dns.mx",
            f"{domain}: {host} is MX with preference {ours}, but {shown} "
            "is preferred: senders try the other host first",
            publish(want) + " ; and give the other MX a higher preference number",
        )
    return passed("dns.mx", f"{domain}: MX {shown}")


def _addresses(client: AuthDns, name: str) -> dict[str, set[str]]:
    return {
        t: {str(ipaddress.ip_address(r.address)) for r in client.lookup(name, t)}
        for t in ("A", "AAAA")
    }


def _a(client: AuthDns, cfg: Config, records: Records) -> Finding:
    host = cfg.server.hostname
    found = _addresses(client, host)
    problems: list[str] = []
    fixes: list[DnsRecord] = []
    removals: list[str] = []
    for type_, configured in (("A", cfg.server.ipv4), ("AAAA", cfg.server.ipv6)):
        want = {str(ipaddress.ip_address(configured))} if configured else set()
        have = found[type_]
        if want - have:
            problems.append(f"no {type_} {configured}")
            fixes += _find(records, host, type_)
        if have - want:
            key = "server.ipv4" if type_ == "A" else "server.ipv6"
            problems.append(
                f"{type_} {', '.join(sorted(have - want))} is not this server "
                f"({key} = {configured!r})"
            )
            removals += [f"{fqdn(host)} IN {type_} {a}" for a in sorted(have - want)]
    if not problems:
        shown = ", ".join(sorted(found["A"] | found["AAAA"]))
        return passed("dns.a", f"{host} resolves to {shown}")
    fix = publish(fixes) if fixes else ""
    if removals:
        fix += (
            (" ; " if fix else "")
            + "remove: "
            + " ; ".join(removals)
            + " (or set server.ipv4/ipv6 in mailstack.toml if those are this server's)"
        )
    return failed("dns.a", f"{host}: " + "; ".join(problems), fix)


def _ptr(client: AuthDns, cfg: Config, address: str, records: Records) -> Finding:
    host = fqdn(cfg.server.hostname)
    owner = dns.reversename.from_address(address).to_text()
    want = [r for r in records if r.type == "PTR" and r.name == owner]
    names = sorted(r.target.to_text().lower() for r in client.lookup(owner, "PTR"))
    if not names:
        return failed(
            "dns.ptr",
            f"{address}: no reverse DNS (PTR): many receivers refuse mail "
            "from addresses without it",
            publish(want),
        )
    if host not in names:
        return failed(
            "dns.ptr", f"{address}: reverse DNS names {', '.join(names)}, not {host}", publish(want)
        )
    back = _addresses(client, host)
    if str(ipaddress.ip_address(address)) not in back["A"] | back["AAAA"]:
        type_ = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        fwd = [r for r in records if r.type == type_ and r.name == host] or [
            DnsRecord(host, type_, address, host, "dns-host", "forward-confirmed reverse DNS")
        ]
        return failed(
            "dns.ptr",
            f"{address}: PTR names {host}, but {host} does not resolve "
            f"back to {address} (forward-confirmed reverse DNS fails)",
            publish(fwd),
        )
    return passed("dns.ptr", f"{address}: PTR {host}, which resolves back (FCrDNS)")


# -- SPF, DKIM, DMARC --------------------------------------------------------------------------


def is_spf(text: str) -> bool:
    # RFC 7208 §4.5: "v=spf1" exactly, then a space or the end.
    return text.lower() == "v=spf1" or text.lower().startswith("v=spf1 ")


def suggest_spf(current: str, addresses: list[str]) -> str:
    """`current` with mechanisms for `addresses` inserted before its final all/redirect."""
    terms = current.split()
    mechs = [f"ip{ipaddress.ip_address(a).version}:{a}" for a in addresses]
    tail_at = next(
        (
            i
            for i, t in enumerate(terms)
            if t.lstrip("+-~?").lower() == "all" or t.lower().startswith("redirect=")
        ),
        len(terms),
    )
    return " ".join(terms[:tail_at] + mechs + terms[tail_at:])


def _spf(client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records) -> Finding:
    want = _find(records, domain, "TXT")
    want = [r for r in want if r.unsplit and is_spf(r.unsplit)]
    found = [t for t in _txt(client, domain) if is_spf(t)]
    if not found:
        return failed(
            "dns.spf",
            f"{domain}: no SPF record: receivers cannot tell our mail from forgeries",
            publish(want),
        )
    if len(found) > 1:
        listed = " | ".join(found)
        return failed(
            "dns.spf",
            f"{domain}: {len(found)} SPF records ({listed}): RFC 7208 §4.5 "
            "makes that a permerror, as if there were none",
            "keep exactly one SPF TXT record: remove the others, then " + publish(want),
        )
    addresses = [a for a in (cfg.server.ipv4, cfg.server.ipv6) if a]
    if not addresses:
        return skipped(
            "dns.spf", f"{domain}: no server.ipv4/ipv6 in the config to evaluate the record for"
        )
    bad: list[str] = []
    for ip in addresses:
        outcome = check_spf(client, ip, f"postmaster@{domain}", cfg.server.hostname)
        if outcome.result == "permerror":
            return failed(
                "dns.spf",
                f"{domain}: SPF record {found[0]!r} does not parse: {outcome.explanation}",
                "replace it: " + publish(want),
            )
        if outcome.result == "temperror":
            raise DnsTempError(outcome.explanation)
        if outcome.result != "pass":
            bad.append(f"{ip} ({outcome.result})")
    if bad:
        fixed = suggest_spf(found[0], [b.split()[0] for b in bad])
        return failed(
            "dns.spf",
            f"{domain}: SPF {found[0]!r} does not authorise "
            f"{', '.join(bad)}: receivers may reject or junk our mail",
            f'replace the SPF record: {domain}. 3600 IN TXT "{fixed}"',
        )
    return passed("dns.spf", f"{domain}: {found[0]!r} authorises {', '.join(addresses)}")


def _tags(text: str) -> dict[str, str]:
    """RFC 6376 §3.2 tag-list: tag=value pairs separated by ';' (whitespace is folding)."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            out.setdefault(name.strip().lower(), value.strip())
    return out


def _dkim_key_der(p: str) -> bytes | None:
    try:
        return base64.b64decode("".join(p.split()), validate=True)
    except ValueError:
        return None


def _dkim(
    client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records
) -> Finding:
    selector = dkim_selectors.signing_selector(paths, cfg.dkim.selector, domain)  # rotated?
    name = f"{selector}._domainkey.{domain}"
    key_path = paths.dkim_key(selector, domain)
    if not key_path.exists():
        return skipped("dns.dkim", f"{domain}: no DKIM key at {key_path} (see files.present)")
    try:
        expected_txt = dkim_public_record(key_path.read_bytes())
    except (OSError, MailstackError) as exc:
        return skipped("dns.dkim", f"{domain}: cannot read the DKIM key {key_path}: {exc}")
    expected = _dkim_key_der(_tags(expected_txt)["p"])
    want = _find(records, name, "TXT")
    found = [t for t in _txt(client, name) if "p=" in t]
    if not found:
        return failed(
            "dns.dkim",
            f"{domain}: no DKIM key record at {name}: receivers cannot verify our signatures",
            publish(want),
        )
    if len(found) > 1:
        return failed(
            "dns.dkim",
            f"{domain}: {len(found)} key records at {name}: verifiers pick one at random",
            "keep only this one: " + publish(want),
        )
    tags = _tags(found[0])
    if tags.get("v", "DKIM1") != "DKIM1" or tags.get("k", "rsa").lower() != "rsa":
        return failed(
            "dns.dkim",
            f"{domain}: the record at {name} is not an RSA DKIM1 key "
            f"(v={tags.get('v')}, k={tags.get('k')})",
            "replace it: " + publish(want),
        )
    if not tags.get("p"):
        return failed(
            "dns.dkim",
            f"{domain}: the key at {name} is revoked (empty p=)",
            "replace it: " + publish(want),
        )
    if _dkim_key_der(tags["p"]) != expected:
        return failed(
            "dns.dkim",
            f"{domain}: the key published at {name} is not the public half "
            f"of {key_path}: every signature will fail",
            "replace it: " + publish(want),
        )
    return passed("dns.dkim", f"{domain}: {name} holds the public half of {key_path.name}")


def _dmarc(
    client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records
) -> Finding:
    name = f"_dmarc.{domain}"
    want = _find(records, name, "TXT")
    found = [t for t in _txt(client, name) if t.replace(" ", "").upper().startswith("V=DMARC1")]
    if not found:
        return failed(
            "dns.dmarc",
            f"{domain}: no DMARC record at {name}: large receivers require one",
            publish(want),
        )
    if len(found) > 1:
        return failed(
            "dns.dmarc",
            f"{domain}: {len(found)} DMARC records at {name}: RFC 7489 §6.6.3 ignores them all",
            "keep only one: " + publish(want),
        )
    try:
        record = dmarc.parse_record(found[0])
    except dmarc.DmarcRecordError as exc:
        return failed(
            "dns.dmarc",
            f"{domain}: DMARC record {found[0]!r} does not parse: {exc}",
            "replace it: " + publish(want),
        )
    policy = record.policy.value
    if record.policy is dmarc.Policy.NONE:
        return warned(
            "dns.dmarc",
            f"{domain}: DMARC policy p=none: forged mail from {domain} is "
            "only reported, not stopped",
            "once reports show only your own mail, tighten it: " + publish(want),
        )
    return passed(
        "dns.dmarc",
        f"{domain}: DMARC p={policy}" + (f" pct={record.pct}" if record.pct != 100 else ""),
    )


# -- TLS-RPT, SRV, CAA -------------------------------------------------------------------------


def _tlsrpt(
    client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records
) -> Finding:
    name = f"_smtp._tls.{domain}"
    found = [t for t in _txt(client, name) if t.replace(" ", "").startswith("v=TLSRPTv1")]
    if not found:
        return warned(
            "dns.tlsrpt",
            f"{domain}: no TLS-RPT record: senders cannot tell you when TLS to your server fails",
            publish(_find(records, name, "TXT")),
        )
    return passed("dns.tlsrpt", f"{domain}: {found[0]}")


def _srv_tuple(value: str) -> tuple[int, str]:
    _prio, _weight, port, target = value.split()
    return int(port), target.lower()


def _srv(client: AuthDns, cfg: Config, paths: StatePaths, domain: str, records: Records) -> Finding:
    want = [r for r in records if r.type == "SRV" and r.zone == fqdn(domain)]
    wrong: list[DnsRecord] = []
    notes: list[str] = []
    for rec in want:
        expected = _srv_tuple(rec.value)
        found = {(int(r.port), r.target.to_text().lower()) for r in client.lookup(rec.name, "SRV")}
        if expected not in found:
            wrong.append(rec)
            label = rec.name.split(".")[0]
            notes.append(
                f"{label}: "
                + (", ".join(f"{t}:{p}" for p, t in sorted(found)) if found else "missing")
            )
    if wrong:
        return warned(
            "dns.srv",
            f"{domain}: RFC 6186 SRV records missing or different "
            f"({'; '.join(notes)}): mail clients cannot set themselves up",
            publish(wrong),
        )
    return passed("dns.srv", f"{domain}: {len(want)} RFC 6186 SRV records as expected")


def _caa(client: AuthDns, cfg: Config, records: Records) -> Finding:
    """RFC 8659 §3: the relevant CAA set is the first one found climbing from the name."""
    host = fqdn(cfg.server.hostname)
    name = dns.name.from_text(host)
    zones = {r.zone for r in records if r.where == "dns-host"}
    top = max((z for z in zones if host.endswith(z)), key=len, default=None)
    stop = dns.name.from_text(top) if top else name.parent()
    found: list[Any] = []
    while True:
        found = client.lookup(name.to_text(), "CAA")
        if found or name == stop or len(name.labels) <= 2:
            break
        name = name.parent()
    if not found:
        caa = DnsRecord(
            stop.to_text(), "CAA", '0 issue "letsencrypt.org"', stop.to_text(), "dns-host", "CAA"
        )
        return warned(
            "dns.caa",
            f"{host.rstrip('.')}: no CAA record: any public CA may issue certificates for it",
            publish([caa]) + " (name the CA you use)",
        )
    shown = "; ".join(r.to_text() for r in found)
    return passed("dns.caa", f"{host.rstrip('.')}: CAA at {name.to_text()}: {shown}")
