"""`mailstack check`: prove a deployment works, and say exactly how to fix what does not.

Every check yields `Finding`s: an id (stable, dotted, lower-case: INTERFACE.md), a status
(pass, warn, fail, skip), a message, and for warn/fail the exact fix (for DNS: the record to
publish, in zone-file form). Checks are grouped by area (`GROUPS`, the first part of the id);
`--only GROUP` runs some groups, and a group whose prerequisite is missing (no valid config,
no probe mailbox) reports each of its ids as `skip` with the reason, never as pass or fail.

Several subjects, one id: checks that apply to each hosted domain (`dns.mx`, `dns.spf`, ...),
to each address (`dns.ptr`) or to each listener (`smtp.banner`, ...) appear once per subject
with the same id, and the message starts with the subject ("example.com: ...").

Invariants: running the checks changes nothing in the deployment except for the probe mailbox,
which `probe.probe_mailbox` removes again, even on failure. Every network operation is bounded
by a timeout; nothing here exits or prints.
"""

from __future__ import annotations

import contextlib
import enum
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


class Status(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a status, not a password
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    status: Status
    message: str
    fix: str | None = None

    @property
    def group(self) -> str:
        return self.id.split(".", 1)[0]

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "group": self.group,
            "status": str(self.status),
            "message": self.message,
            "fix": self.fix,
        }


def passed(id_: str, message: str) -> Finding:
    return Finding(id_, Status.PASS, message)


def warned(id_: str, message: str, fix: str) -> Finding:
    return Finding(id_, Status.WARN, message, fix)


def failed(id_: str, message: str, fix: str) -> Finding:
    return Finding(id_, Status.FAIL, message, fix)


def skipped(id_: str, reason: str) -> Finding:
    return Finding(id_, Status.SKIP, reason)


# Every id each group can report, in display order: a group that cannot run skips each of them.
GROUPS: dict[str, tuple[str, ...]] = {
    "config": ("config.valid",),
    "files": (
        "files.present",
        "files.modes",
        "files.owner",
        "files.disk",
        "files.queue",
        "files.maildirs",
    ),
    "dns": (
        "dns.resolver",
        "dns.mx",
        "dns.a",
        "dns.ptr",
        "dns.spf",
        "dns.dkim",
        "dns.dmarc",
        "dns.tlsrpt",
        "dns.srv",
        "dns.caa",
    ),
    "tls": ("tls.chain", "tls.key", "tls.hostname", "tls.expiry", "tls.trust"),
    "smtp": ("smtp.banner", "smtp.ehlo", "smtp.starttls", "smtp.auth"),
    "submission": ("submission.starttls", "submission.auth", "submission.tls"),
    "imap": ("imap.banner", "imap.starttls", "imap.tls", "imap.login"),
    "relay": ("relay.open",),
    "e2e": ("e2e.delivery",),
    "network": ("network.dnsbl", "network.port25"),
    "web": ("web.mta_sts", "web.autoconfig", "web.acme"),
    # Only on request (`--deliverability`, `--only deliverability`): checks/deliverability.py.
    "deliverability": (
        "deliverability.dnsbl",
        "deliverability.fcrdns",
        "deliverability.helo",
        "deliverability.alignment",
        "deliverability.dmarc_policy",
        "deliverability.mta_sts",
        "deliverability.tlsrpt",
        "deliverability.port25",
    ),
}
OPT_IN_GROUPS = frozenset({"deliverability"})


def skip_group(group: str, reason: str) -> list[Finding]:
    return [skipped(id_, reason) for id_ in GROUPS[group]]


@dataclass(frozen=True, slots=True)
class CheckOptions:
    resolver: str = ""  # "host[:port]"; empty: `[dns] resolver`, else the system resolver
    only: frozenset[str] = frozenset()  # groups to run; empty: all
    strict: bool = False  # warnings fail too
    network: bool = False  # checks that need the Internet (DNSBL, outside reachability)
    port25_domain: str = "gmail.com"  # deliverability.port25 connects to this domain's MX
    e2e_timeout_s: float = 10.0  # how long a probe message may take to show up over IMAP
    io_timeout_s: float = 10.0  # each connect/read of a listener check

    def wants(self, group: str) -> bool:
        if group in OPT_IN_GROUPS:
            return group in self.only
        return not self.only or group in self.only


@dataclass(frozen=True, slots=True)
class Report:
    findings: tuple[Finding, ...]
    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        bad = {Status.FAIL, Status.WARN} if self.strict else {Status.FAIL}
        return not any(f.status in bad for f in self.findings)

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checks": [f.as_dict() for f in self.findings]}


def _order(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Group by area in `GROUPS` order; within a group keep the order checks ran in."""
    rank = {g: i for i, g in enumerate(GROUPS)}
    return tuple(sorted(findings, key=lambda f: rank.get(f.group, len(rank))))


def run_checks(root: Path, options: CheckOptions) -> Report:
    """Run the selected checks on the deployment in `root`. Never raises for what it finds."""
    from mailstack.checks.runner import run

    findings = _order(run(root, options))
    counts: dict[str, int] = {}
    for f in findings:
        counts[str(f.status)] = counts.get(str(f.status), 0) + 1
    report = Report(findings, options.strict, counts)
    _remember(root, options, report)
    return report


def _remember(root: Path, options: CheckOptions, report: Report) -> None:
    """Leave the outcome for `mailstack status` (best effort: a check run by a user who cannot
    write the state directory still reports)."""
    from mailstack.base.fsutil import atomic_write, ensure_dir
    from mailstack.base.paths import StatePaths

    paths = StatePaths(root)
    if not paths.config.exists():
        return
    record = {
        "time": time.time(),
        "ok": report.ok,
        "counts": report.counts,
        "only": sorted(options.only),
        "failed": [f.id for f in report.findings if f.status is Status.FAIL],
    }
    with contextlib.suppress(OSError):
        ensure_dir(paths.run_dir, mode=0o750)
        atomic_write(paths.last_check, json.dumps(record) + "\n", mode=0o640)
