"""Runs the selected groups in order, and turns a missing prerequisite into skips.

Order: config (everything needs it), files, dns, tls, the live listeners, relay, the probe
mailbox (imap.login, e2e.delivery), network. A check that raises unexpectedly becomes a
`fail` naming the exception, so one bug cannot hide the rest of the report.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from mailstack.base.config import Config
from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths
from mailstack.checks import GROUPS, CheckOptions, Finding, failed, skip_group, skipped
from mailstack.checks.files import check_config, check_files
from mailstack.deployment import Deployment

log = logging.getLogger(__name__)


def _guard(group: str, fn: Callable[[], list[Finding]]) -> list[Finding]:
    try:
        return fn()
    except Exception as exc:  # a bug in a check: report it, run the others
        log.debug("check group %s failed", group, exc_info=True)
        return [
            failed(
                f"{group}.error",
                f"the {group} checks stopped: {type(exc).__name__}: {exc}",
                "this is a bug in mailstack check: rerun with --debug and report it",
            )
        ]


# Every group that needs a valid config and an openable deployment.
_AFTER_CONFIG = tuple(g for g in GROUPS if g != "config")


def run(root: Path, options: CheckOptions) -> list[Finding]:
    paths = StatePaths(root)
    cfg, config_finding = check_config(paths)
    out: list[Finding] = [config_finding] if options.wants("config") else []
    if cfg is None:
        reason = "the config is not valid (see config.valid)"
        for group in _AFTER_CONFIG:
            if options.wants(group):
                out += skip_group(group, reason)
        if not options.wants("config"):
            out.append(config_finding)  # the reason must be visible even with --only
        return out
    try:
        dep = Deployment.open(root)
    except MailstackError as exc:  # e.g. users.sqlite3 unreadable by whoever runs check
        reason = f"cannot open the deployment: {exc.message}"
        if options.wants("files"):
            out.append(
                failed(
                    "files.present",
                    reason,
                    exc.hint or f"run check as the user that owns {root} (or as root)",
                )
            )
        for group in _AFTER_CONFIG:
            if options.wants(group):
                out += [f for f in skip_group(group, reason) if f.id != "files.present"]
        return out
    try:
        out += _run_groups(cfg, paths, dep, options)
    finally:
        dep.close()
    return out


def _run_groups(
    cfg: Config, paths: StatePaths, dep: Deployment, options: CheckOptions
) -> list[Finding]:
    from mailstack.init import dns_records, hosted_domains

    domains = hosted_domains(cfg, dep.accounts)
    out: list[Finding] = []
    timeout = options.io_timeout_s
    if options.wants("files"):
        out += _guard("files", lambda: check_files(cfg, paths, dep.accounts, domains))
    if options.wants("dns"):
        from mailstack.checks.dns import check_dns

        out += _guard(
            "dns",
            lambda: check_dns(
                cfg, paths, domains, dns_records(cfg, paths, dep.accounts), options.resolver
            ),
        )
    if options.wants("tls"):
        from mailstack.checks.tls import check_tls

        out += _guard("tls", lambda: check_tls(cfg, paths))
    from mailstack.checks import listeners

    if options.wants("smtp"):
        out += _guard("smtp", lambda: listeners.check_smtp(cfg, paths, timeout))
    if options.wants("submission"):
        out += _guard(
            "submission",
            lambda: listeners.check_submission(cfg, paths, timeout),
        )
    imap: list[Finding] = []
    if options.wants("imap"):
        imap = _guard("imap", lambda: listeners.check_imap(cfg, paths, timeout))
        out += imap
    if options.wants("relay"):
        out += _guard("relay", lambda: listeners.check_relay(cfg, paths, domains, timeout))
    if options.wants("imap") or options.wants("e2e"):
        out += _guard("e2e", lambda: _with_probe(dep, domains[0], options))
    if options.wants("network"):
        out += _network(cfg, options)
    if options.wants("web"):
        from mailstack.checks.web import check_web

        records = dns_records(cfg, paths, dep.accounts)
        out += _guard(
            "web", lambda: check_web(cfg, paths, domains, records, options.resolver, timeout)
        )
    if options.wants("deliverability"):
        from mailstack.checks.deliverability import check_deliverability

        out += _guard(
            "deliverability",
            lambda: check_deliverability(
                cfg,
                paths,
                domains,
                options.resolver,
                network=options.network,
                port25_domain=options.port25_domain,
            ),
        )
    return out


def _with_probe(dep: Deployment, domain: str, options: CheckOptions) -> list[Finding]:
    from mailstack.checks import probe

    out: list[Finding] = []
    with contextlib.ExitStack() as stack:
        try:
            mailbox = stack.enter_context(probe.probe_mailbox(dep, domain))
        except Exception as exc:
            reason = f"cannot create the probe mailbox: {exc}"
            if options.wants("imap"):
                out.append(
                    failed(
                        "imap.login",
                        reason,
                        "see files.* (users.sqlite3 and mail/ "
                        "must be writable by whoever runs check)",
                    )
                )
            if options.wants("e2e"):
                out.append(skipped("e2e.delivery", reason))
            return out
        if options.wants("imap"):
            out.append(probe.check_login(dep, mailbox, options.io_timeout_s))
        if options.wants("e2e"):
            out.append(probe.check_e2e(dep, mailbox, options.e2e_timeout_s, options.io_timeout_s))
    return out


def _network(cfg: Config, options: CheckOptions) -> list[Finding]:
    if not options.network:
        reason = "needs the Internet; run `mailstack check --network` to include it"
        return skip_group("network", reason)
    from mailstack.checks.dnsbl import check_dnsbl

    out = _guard("network", lambda: check_dnsbl(cfg, options.resolver))
    # A connection from this host to its own address never leaves it: whether port 25 is
    # reachable from the Internet can only be seen from outside.
    out.append(
        skipped(
            "network.port25",
            "cannot be tested from this host: from another "
            "network, run `swaks --to postmaster@DOMAIN --server HOSTNAME`, or "
            "`nc -vz HOSTNAME 25`",
        )
    )
    return out
