"""The web side's checks (`web.*`): the MTA-STS policy as senders fetch it, client
autoconfiguration as Thunderbird fetches it, ACME renewal.

`web.mta_sts` (per hosted domain, RFC 8461 §3): the `_mta-sts` TXT record holds the id of the
policy this deployment serves, and https://mta-sts.<domain>/.well-known/mta-sts.txt, fetched
the way a sender does (the name resolved through `[dns]`/`--resolver`, the certificate verified
for that name, no redirects), returns exactly that policy. The connection goes to the first
`listen.https` port, which is 443 on a deployment that senders can reach.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
import ssl

from mailstack.base.config import Config, parse_resolver
from mailstack.base.dns import DnsClient, DnsTempError, make_resolver
from mailstack.base.paths import StatePaths
from mailstack.checks import Finding, failed, passed, skipped, warned
from mailstack.delivery.mtasts import StsError, parse_policy
from mailstack.dnsrecords import DnsRecord, fqdn

POLICY_PATH = "/.well-known/mta-sts.txt"  # RFC 8461 §3.3
AUTOCONFIG_PATH = "/mail/config-v1.1.xml"  # Thunderbird's first lookup
MAX_POLICY_BYTES = 65536  # RFC 8461 §3.3: senders may refuse policies over 64 KiB


def check_web(
    cfg: Config,
    paths: StatePaths,
    domains: list[str],
    records: list[DnsRecord],
    resolver_override: str = "",
    timeout_s: float = 10.0,
) -> list[Finding]:
    acme = _acme(paths)
    if not cfg.listeners("https"):
        off = "the web side is off (listen.https = [])"
        return [skipped("web.mta_sts", off), skipped("web.autoconfig", off), acme]
    dns_cfg = cfg.dns
    if resolver_override:
        parse_resolver(resolver_override)
        dns_cfg = dataclasses.replace(dns_cfg, resolver=resolver_override)
    client = DnsClient(make_resolver(dns_cfg))
    return [
        *(_mta_sts(cfg, paths, client, d, records, timeout_s) for d in domains),
        *(_autoconfig(cfg, paths, client, d, timeout_s) for d in domains),
        acme,
    ]


def _autoconfig(
    cfg: Config, paths: StatePaths, client: DnsClient, domain: str, timeout_s: float
) -> Finding:
    """web.autoconfig: Thunderbird's first URL answers with our host (its ISPDB comes later)."""
    name = f"autoconfig.{domain}"
    url = f"https://{name}{AUTOCONFIG_PATH}"
    try:
        addresses = [str(r) for r in client.lookup(name, "A")]
    except DnsTempError as exc:
        return failed("web.autoconfig", f"{domain}: DNS lookup failed: {exc}", "see dns.resolver")
    if not addresses:
        return warned(
            "web.autoconfig",
            f"{domain}: {name} has no address: mail clients cannot configure themselves",
            f"publish `{name}. CNAME {cfg.server.hostname}.`",
        )
    port = cfg.listeners("https")[0][1]
    try:
        status, body = _fetch(addresses[0], port, name, paths, timeout_s, AUTOCONFIG_PATH)
    except (OSError, http.client.HTTPException) as exc:
        return warned(
            "web.autoconfig",
            f"{domain}: cannot fetch {url}: {exc}",
            f"is serve running with listen.https, and does the certificate name {name}?",
        )
    if status != 200 or f"<hostname>{cfg.server.hostname}</hostname>".encode() not in body:
        return warned(
            "web.autoconfig",
            f"{domain}: {url} answered HTTP {status} without {cfg.server.hostname}",
            f"is {name} pointing at this server?",
        )
    return passed("web.autoconfig", f"{domain}: {url} gives mail clients {cfg.server.hostname}")


def _acme(paths: StatePaths) -> Finding:
    """web.acme: the last issuance or renewal attempt went through (acme/state.json)."""
    if not paths.acme_account.exists():
        return skipped("web.acme", "no ACME account (`mailstack tls acme` sets one up)")
    try:  # written by mailstack.web.acme.write_state
        state = json.loads(paths.acme_state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if not isinstance(state, dict):
        return passed("web.acme", "ACME account set up; serve renews when due")
    if state.get("ok"):
        return passed("web.acme", f"ACME: {state.get('message')}")
    return warned(
        "web.acme",
        f"ACME: {state.get('message')} (serve still uses the current certificate; see tls.expiry)",
        "see serve's log for the CA's answer: the names must resolve to this server and "
        "listen.http must be reachable on port 80; serve tries again at the next interval",
    )


def _mta_sts(
    cfg: Config,
    paths: StatePaths,
    client: DnsClient,
    domain: str,
    records: list[DnsRecord],
    timeout_s: float,
) -> Finding:
    from mailstack.init import mta_sts_policy

    policy = mta_sts_policy(cfg)
    want_txt = policy.txt()
    record = next((r for r in records if r.name == fqdn(f"_mta-sts.{domain}")), None)
    publish = f"publish `_mta-sts.{domain}. TXT {want_txt!r}`"
    if record is not None:
        publish = f"publish `{record.name} {record.ttl} IN TXT {record.value}`"
    try:
        txts = [t.decode("ascii", "replace") for t in client.txt(f"_mta-sts.{domain}")]
        addresses = [str(r) for r in client.lookup(f"mta-sts.{domain}", "A")]
    except DnsTempError as exc:
        return failed("web.mta_sts", f"{domain}: DNS lookup failed: {exc}", "see dns.resolver")
    sts = [t for t in txts if t.startswith("v=STSv1")]
    if not sts:
        return failed("web.mta_sts", f"{domain}: no _mta-sts TXT record", publish)
    if len(sts) > 1:  # RFC 8461 §3.1: more than one record means no policy at all
        return failed("web.mta_sts", f"{domain}: {len(sts)} _mta-sts TXT records", publish)
    if sts[0].replace(" ", "") != want_txt.replace(" ", ""):
        return failed(
            "web.mta_sts",
            f"{domain}: _mta-sts TXT is {sts[0]!r}, but the policy served has "
            f"id={policy.policy_id()} (it changed: senders keep the old one cached)",
            publish,
        )
    if not addresses:
        return failed(
            "web.mta_sts",
            f"{domain}: mta-sts.{domain} has no address",
            f"publish `mta-sts.{domain}. CNAME {cfg.server.hostname}.`",
        )
    port = cfg.listeners("https")[0][1]
    url = f"https://mta-sts.{domain}{POLICY_PATH}"
    try:
        status, body = _fetch(addresses[0], port, f"mta-sts.{domain}", paths, timeout_s)
    except (OSError, http.client.HTTPException) as exc:
        return failed(
            "web.mta_sts",
            f"{domain}: cannot fetch {url} from {addresses[0]}:{port}: {exc}",
            "is serve running with listen.https, and does the certificate name "
            f"mta-sts.{domain}? (`mailstack tls acme` includes it)",
        )
    if status != 200:
        return failed("web.mta_sts", f"{domain}: {url} answered HTTP {status}", "see serve's log")
    if body != policy.text().encode("ascii"):
        return warned(
            "web.mta_sts",
            f"{domain}: {url} serves another policy than this config's (a serve started "
            "before the config changed?)",
            "restart serve so it serves the current policy",
        )
    if (problem := _as_a_sender_sees_it(cfg, client, domain, body)) is not None:
        return problem
    return passed(
        "web.mta_sts",
        f"{domain}: {url} serves mode {policy.mode}, id {policy.policy_id()} matches DNS",
    )


def _as_a_sender_sees_it(
    cfg: Config, client: DnsClient, domain: str, body: bytes
) -> Finding | None:
    """What a sender enforcing the policy does with it: mailstack's own outbound parser
    (delivery.mtasts) reads it, and every MX host of the domain must match one of its mx
    patterns (RFC 8461 §4.1), or enforcing senders will not deliver to that host."""
    try:
        served = parse_policy(body)
        answer = client.lookup(domain, "MX")
    except StsError as exc:
        return failed(
            "web.mta_sts",
            f"{domain}: senders would ignore the policy served: {exc}",
            "report this as a bug: the served policy and the outbound parser disagree",
        )
    except DnsTempError as exc:
        return failed("web.mta_sts", f"{domain}: MX lookup failed: {exc}", "see dns.resolver")
    hosts = [r.exchange.to_text(omit_final_dot=True) for r in answer] or [domain]
    outside = [h for h in hosts if not served.allows(h)]
    if not outside:
        return None
    verdict = failed if served.mode == "enforce" else warned
    return verdict(
        "web.mta_sts",
        f"{domain}: MX {', '.join(outside)} is not in the policy's mx "
        f"({', '.join(served.mx)}): senders enforcing it will not deliver there",
        f"point every MX record of {domain} at {cfg.server.hostname}.",
    )


def _fetch(
    address: str, port: int, name: str, paths: StatePaths, timeout_s: float, path: str = POLICY_PATH
) -> tuple[int, bytes]:
    """GET `path` from `address` with SNI and Host `name`, verified for `name` against the
    system's roots plus this deployment's private CA (if it has one)."""
    ctx = ssl.create_default_context()
    if paths.ca_cert.exists():
        ctx.load_verify_locations(cafile=str(paths.ca_cert))
    raw = socket.create_connection((address, port), timeout=timeout_s)
    conn = http.client.HTTPSConnection(name, port, context=ctx, timeout=timeout_s)
    try:
        conn.sock = ctx.wrap_socket(raw, server_hostname=name)
        conn.request("GET", path, headers={"Host": name})
        response = conn.getresponse()
        return response.status, response.read(MAX_POLICY_BYTES)
    finally:
        raw.close()
        conn.close()
