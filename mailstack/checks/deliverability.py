"""`mailstack check --deliverability`: will the big receivers take our mail into the inbox?

What they look at, each asked through the configured resolver (`--resolver` overrides it):

- deliverability.dnsbl: our IPv4/IPv6 on the DNS blocklists (`[smtp] dnsbl`, else the common
  ones), the same lookup as `network.dnsbl`;
- deliverability.fcrdns: forward-confirmed reverse DNS (RFC 8601 §3 "iprev"; Gmail's sender
  guidelines require it): PTR of each address names a host whose A/AAAA gives it back;
- deliverability.helo: the name we say in EHLO (`server.hostname`) is that PTR name and
  resolves to our address (receivers compare the three);
- deliverability.alignment: a test message as we send it, DKIM-signed here, verified against
  the published key, plus SPF for our address and envelope domain: DMARC passes when either
  is aligned with From: (RFC 7489 §3.1), and receivers like both;
- deliverability.dmarc_policy: p=none reports forgeries but lets them through; pct < 100
  only applies the policy to part of the mail (RFC 7489 §6.3);
- deliverability.mta_sts, deliverability.tlsrpt: the `_mta-sts` (RFC 8461 §3.1) and
  `_smtp._tls` (RFC 8460 §3) records, which Gmail and Microsoft read;
- deliverability.port25 (only with --network): a timed connect to an MX of `--port25-domain`
  (gmail.com): many hosting providers block outbound port 25.

Every warning and failure carries the exact fix. Nothing here changes the deployment.
"""

from __future__ import annotations

import dataclasses
import email.utils
import ipaddress
import socket
import time

import dkim
import dns.reversename

from mailstack.base.config import Config
from mailstack.base.dns import DnsTempError, make_resolver
from mailstack.base.paths import StatePaths
from mailstack.checks import Finding, failed, passed, skipped, warned
from mailstack.checks.dnsbl import check_dnsbl
from mailstack.delivery import dkim as dkim_signing
from mailstack.smtp import dmarc
from mailstack.smtp.inbound_auth import AuthDns, check_spf

PORT25_TIMEOUT_S = 5.0


def check_deliverability(
    cfg: Config,
    paths: StatePaths,
    domains: list[str],
    resolver_override: str = "",
    *,
    network: bool = False,
    port25_domain: str = "gmail.com",
) -> list[Finding]:
    if resolver_override:
        cfg = dataclasses.replace(cfg, dns=dataclasses.replace(cfg.dns, resolver=resolver_override))
    client = AuthDns(make_resolver(cfg.dns))
    out = [dataclasses.replace(f, id="deliverability.dnsbl") for f in check_dnsbl(cfg)]
    out += _reverse_dns(client, cfg)
    for domain in domains:
        out.append(_alignment(client, cfg, paths, domain))
        out.append(_dmarc_policy(client, domain))
        out += _transport_records(client, domain)
    if network:
        out.append(_port25(client, cfg, port25_domain))
    else:
        out.append(
            skipped(
                "deliverability.port25",
                "connects to another host's port 25: add --network to include it",
            )
        )
    return out


def _addresses(cfg: Config) -> list[str]:
    return [a for a in (cfg.server.ipv4, cfg.server.ipv6) if a]


def _lookup(client: AuthDns, name: str, rdtype: str) -> list[str]:
    try:
        records = client.lookup(name, rdtype)
    except DnsTempError:
        return []
    if rdtype == "PTR":
        return [r.target.to_text(omit_final_dot=True).lower() for r in records]
    if rdtype in ("A", "AAAA"):
        return [r.address for r in records]
    return [b"".join(r.strings).decode("utf-8", "replace") for r in records]


def _reverse_dns(client: AuthDns, cfg: Config) -> list[Finding]:
    host = cfg.server.hostname.lower().rstrip(".")
    if not _addresses(cfg):
        reason = "no server.ipv4 or server.ipv6 in the config"
        return [skipped("deliverability.fcrdns", reason), skipped("deliverability.helo", reason)]
    out: list[Finding] = []
    for address in _addresses(cfg):
        rdtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        arpa = dns.reversename.from_address(address).to_text(omit_final_dot=True)
        names = _lookup(client, arpa, "PTR")
        confirmed = [n for n in names if address in _lookup(client, n, rdtype)]
        ptr_fix = (
            f"ask whoever owns {address} (your hosting provider) to set its reverse DNS to "
            f"{host}: {arpa}. IN PTR {host}."
        )
        if not names:
            out.append(
                failed(
                    "deliverability.fcrdns",
                    f"{address} has no PTR record: Gmail and Microsoft refuse or junk such mail",
                    ptr_fix,
                )
            )
        elif not confirmed:
            out.append(
                failed(
                    "deliverability.fcrdns",
                    f"{address}: PTR {', '.join(names)} does not resolve back to {address}",
                    f"publish {names[0]}. IN {rdtype} {address} (or {ptr_fix})",
                )
            )
        else:
            out.append(passed("deliverability.fcrdns", f"{address} -> {confirmed[0]} -> {address}"))
        forward = _lookup(client, host, rdtype)
        if host in confirmed and address in forward:
            out.append(passed("deliverability.helo", f"{address}: EHLO {host} matches its PTR"))
        elif address not in forward:
            out.append(
                failed(
                    "deliverability.helo",
                    f"{address}: our EHLO name {host} does not resolve to {address}",
                    f"publish {host}. IN {rdtype} {address}",
                )
            )
        else:
            out.append(
                warned(
                    "deliverability.helo",
                    f"{address}: our EHLO name {host} is not the PTR name "
                    f"({', '.join(names) or 'none'}): receivers compare the two",
                    ptr_fix,
                )
            )
    return out


def _alignment(client: AuthDns, cfg: Config, paths: StatePaths, domain: str) -> Finding:
    date = email.utils.formatdate(usegmt=True)
    message = (
        f"From: postmaster@{domain}\r\nTo: check@example.invalid\r\n"
        f"Subject: mailstack deliverability check\r\nDate: {date}\r\n"
        f"Message-ID: <check.{time.time_ns()}@{domain}>\r\n\r\nA message as we send it.\r\n"
    ).encode()
    signed = dkim_signing.sign(
        message, paths=paths, selector=cfg.dkim.selector, hosted_domains={domain}
    )
    problems: list[str] = []
    if signed == message:
        problems.append("not DKIM-signed (no key: see files.present)")
        dkim_ok = False
    else:
        try:
            dkim_ok = bool(dkim.verify(signed, dnsfunc=client.dkim_txt))
        except Exception:  # dkimpy on a broken record: a failure to report, not a crash
            dkim_ok = False
        if not dkim_ok:
            problems.append("the DKIM signature does not verify against the published key")
    ips = _addresses(cfg)
    spf = [check_spf(client, ip, f"postmaster@{domain}", cfg.server.hostname).result for ip in ips]
    spf_ok = bool(spf) and all(r == "pass" for r in spf)
    if not spf_ok:
        problems.append(f"SPF for our address(es) is {', '.join(spf) or 'unknown (no address)'}")
    fix = (
        "publish the dns.spf and dns.dkim records `mailstack dns` prints "
        "(see `mailstack check --only dns` for each)"
    )
    if dkim_ok and spf_ok:
        return passed(
            "deliverability.alignment",
            f"{domain}: DKIM (d={domain}) and SPF pass, both aligned with From:",
        )
    if dkim_ok or spf_ok:
        return warned(
            "deliverability.alignment",
            f"{domain}: DMARC passes on one leg only: {'; '.join(problems)}",
            fix,
        )
    return failed(
        "deliverability.alignment",
        f"{domain}: DMARC would fail: {'; '.join(problems)}",
        fix,
    )


def _dmarc_policy(client: AuthDns, domain: str) -> Finding:
    name = f"_dmarc.{domain}"
    wanted = f'{name}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"'
    found = [
        t for t in _lookup(client, name, "TXT") if t.replace(" ", "").upper().startswith("V=DMARC1")
    ]
    if len(found) != 1:
        return failed(
            "deliverability.dmarc_policy",
            f"{domain}: {'no' if not found else 'more than one'} DMARC record at {name}",
            f"publish exactly one: {wanted}",
        )
    try:
        record = dmarc.parse_record(found[0])
    except dmarc.DmarcRecordError as exc:
        return failed(
            "deliverability.dmarc_policy", f"{domain}: DMARC record does not parse: {exc}", wanted
        )
    if record.policy is dmarc.Policy.NONE:
        return warned(
            "deliverability.dmarc_policy",
            f"{domain}: p=none: forged mail in your name is delivered (only reported)",
            f"once the reports show only your own mail: {wanted} (later p=reject)",
        )
    if record.pct < 100:
        return warned(
            "deliverability.dmarc_policy",
            f"{domain}: p={record.policy.value} applies to {record.pct}% of failing mail only",
            f"drop pct= (100 is the default) from {name}",
        )
    return passed("deliverability.dmarc_policy", f"{domain}: p={record.policy.value}")


def _transport_records(client: AuthDns, domain: str) -> list[Finding]:
    sts = [t for t in _lookup(client, f"_mta-sts.{domain}", "TXT") if t.startswith("v=STSv1")]
    rpt = [t for t in _lookup(client, f"_smtp._tls.{domain}", "TXT") if t.startswith("v=TLSRPTv1")]
    out = [
        passed("deliverability.mta_sts", f"{domain}: {sts[0]}")
        if len(sts) == 1
        else warned(
            "deliverability.mta_sts",
            f"{domain}: no MTA-STS record at _mta-sts.{domain}: senders may deliver "
            "to you without TLS",
            f'publish _mta-sts.{domain}. IN TXT "v=STSv1; id={time.strftime("%Y%m%d")}" '
            f"and serve https://mta-sts.{domain}/.well-known/mta-sts.txt ([listen] https)",
        )
    ]
    out.append(
        passed("deliverability.tlsrpt", f"{domain}: {rpt[0]}")
        if len(rpt) == 1
        else warned(
            "deliverability.tlsrpt",
            f"{domain}: no TLS-RPT record at _smtp._tls.{domain}: nobody reports TLS "
            "failures to you",
            f'publish _smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{domain}"',
        )
    )
    return out


def _port25(client: AuthDns, cfg: Config, domain: str) -> Finding:
    try:
        mx = sorted(client.lookup(domain, "MX"), key=lambda r: r.preference)
    except DnsTempError as exc:
        return skipped("deliverability.port25", f"no MX for {domain}: {exc}")
    hosts = [r.exchange.to_text(omit_final_dot=True) for r in mx] or [domain]
    port = cfg.outbound.mx_port
    errors = []
    for host in hosts[:2]:
        # The MX's address through the configured resolver too, as the queue finds it.
        ips = _lookup(client, host, "A") + _lookup(client, host, "AAAA")
        if not ips:
            errors.append(f"{host}: no address")
        for ip in ips[:1]:
            start = time.monotonic()
            try:
                with socket.create_connection((ip, port), timeout=PORT25_TIMEOUT_S):
                    took_ms = (time.monotonic() - start) * 1000
                return passed(
                    "deliverability.port25",
                    f"connected to {host} port {port} in {took_ms:.0f} ms",
                )
            except OSError as exc:
                errors.append(f"{host} ({ip}): {exc}")
    fix = (
        "ask your hosting provider to unblock outbound port 25 for this server, or send "
        'through a smarthost: [outbound] relay = "smtp.example.net:587"'
    )
    if cfg.outbound.relay:
        return warned(
            "deliverability.port25",
            f"port {port} to {domain}'s MX is blocked ({'; '.join(errors)}); "
            f"mail goes through {cfg.outbound.relay} instead",
            fix,
        )
    return failed(
        "deliverability.port25",
        f"cannot reach {domain}'s MX on port {port} ({'; '.join(errors)}): "
        "direct delivery will not work",
        fix,
    )
