"""Which MX hosts one attempt may use, and with what TLS: MTA-STS, DANE, TLS-RPT together.

    OutboundSecurity(directory).plan(config, domain, targets, resolver) -> Plan | refusal

For each (MX host, address) that `delivery.remote.route` found, in order:
- DANE (RFC 7672) when `[dns] dnssec` trusts the resolver and the host has usable TLSA
  records: TLS required and the certificate matched against them (`delivery.dane`). RFC 8461
  §2: where DANE applies it wins over MTA-STS.
- otherwise the domain's MTA-STS policy (RFC 8461 §4, §5): in enforce mode only hosts matching
  its mx patterns, and only with a verified certificate; in testing mode every host, TLS
  verified where possible, each failure reported and delivery going on (opportunistically);
- otherwise opportunistic TLS (RFC 7435).
Hosts an enforce policy excludes are dropped; none left: the attempt is a temporary failure
naming the policy, so the message stays queued and bounces after the queue's lifetime.

Every session's TLS outcome is recorded for TLS-RPT (RFC 8460) per recipient domain
(`delivery.tlsrpt`). Blocking (DNS, HTTPS): runs in the attempt's thread.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.resolver
from mailstack.delivery import dane
from mailstack.delivery.mtasts import Policy
from mailstack.delivery.mtasts_fetch import PolicyStore
from mailstack.delivery.tlsrpt import ReportStore, Session
from mailstack.delivery.transport import (
    OPPORTUNISTIC,
    TlsRequirement,
    verified,
    verified_context,
)

from mailstack.base.config import Config
from mailstack.base.dns import DnsClient

log = logging.getLogger(__name__)

Target = tuple[str, str, TlsRequirement]  # (MX host, address, what TLS it must reach)


@dataclass(frozen=True, slots=True)
class Refusal:
    reply: str  # "451 4.7.5 ...": every recipient stays queued with it


@dataclass(frozen=True, slots=True)
class Plan:
    targets: list[Target]
    report: Callable[[TlsRequirement, str, str, str | None], None]


def _policy_lines(policy: Policy) -> list[str]:
    """RFC 8460 §4.4 policy-string for an STS policy: its lines."""
    return [
        "version: STSv1",
        f"mode: {policy.mode}",
        *(f"mx: {mx}" for mx in policy.mx),
        f"max_age: {policy.max_age_s}",
    ]


class OutboundSecurity:
    """Per-process state of outbound transport security: the MTA-STS cache, TLS-RPT counts."""

    def __init__(self, directory: Path | None, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.sts = PolicyStore(directory / "mta-sts" if directory else None)
        self.reports = ReportStore(directory / "tlsrpt.sqlite3" if directory else None)

    def plan(
        self,
        config: Config,
        domain: str,
        targets: Sequence[tuple[str, str]],
        resolver: dns.resolver.Resolver,
    ) -> Plan | Refusal:
        now = self.clock()
        client = DnsClient(resolver)
        lookup = self.sts.lookup(
            domain,
            client,
            port=config.outbound.mta_sts_port,
            ca_file=config.outbound.ca_file,
            now=now,
        )
        policy = lookup.policy if lookup.policy and lookup.policy.mode != "none" else None
        ca_file = config.outbound.ca_file
        tlsa = dane.Lookup(resolver, config.dns.dnssec, domain)

        mismatched: set[str] = set()  # testing mode: MX hosts enforce would have refused

        def report(req: TlsRequirement, host: str, address: str, result: str | None) -> None:
            if result is None and host in mismatched:
                result = "validation-failure"  # TLS fine, but not an MX the policy names
            kind, strings = "no-policy-found", []
            if req.policy == "dane":
                kind, strings = "tlsa", tlsa.strings(host)
            elif policy is not None:
                kind, strings = "sts", _policy_lines(policy)
            self.reports.add(
                Session(domain, kind, tuple(strings), host, address, result), now=self.clock()
            )

        if lookup.failure is not None and lookup.policy is None:
            # A TXT record announced a policy we could not fetch: counted as a failed session
            # of the sts type (RFC 8460 §4.3.2.2), delivery goes on as without a policy.
            self.reports.add(Session(domain, "sts", (), "", "", lookup.failure), now=self.clock())
        planned: list[Target] = []
        excluded: list[str] = []
        for host, address in targets:
            requirement = tlsa.requirement(host)
            if isinstance(requirement, str):  # DNSSEC said "bogus": this host is unusable
                excluded.append(f"{host} ({requirement})")
                self.reports.add(
                    Session(domain, "tlsa", (), host, address, "dnssec-invalid"), now=now
                )
                continue
            if requirement is not None:
                planned.append((host, address, requirement))
            elif policy is None:
                planned.append((host, address, OPPORTUNISTIC))
            elif policy.mode == "enforce":
                if policy.allows(host):
                    planned.append((host, address, verified("sts", ca_file)))
                else:
                    excluded.append(f"{host} (not an mx of its MTA-STS policy)")
                    report(verified("sts", ca_file), host, address, "validation-failure")
            else:  # testing: report what enforce would refuse, deliver anyway
                if not policy.allows(host):
                    mismatched.add(host)
                planned.append((host, address, _testing(ca_file)))
        if not planned:
            return Refusal(
                f"451 4.7.5 {domain}: no MX host may be used: {'; '.join(dict.fromkeys(excluded))}"
            )
        if excluded:
            log.info("security: %s: skipping %s", domain, "; ".join(dict.fromkeys(excluded)))
        return Plan(planned, report)


def _testing(ca_file: str) -> TlsRequirement:
    """MTA-STS testing mode: verify, report a failure, then carry on opportunistically."""
    return TlsRequirement("sts-testing", required=False, context=verified_context(ca_file))
