"""`mailstack throttle list|clear`: see and lift the login throttle of a deployment.

The state is DIR/throttle.sqlite3 (mailstack/base/throttle_db.py), which a running `serve`
writes through and follows: a clear takes effect before its next login decision.
`mailstack.cli` adds this group to its `main` group.
"""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime
from typing import Any

import click

from mailstack.base.connections import network_of
from mailstack.base.errors import UsageError
from mailstack.base.throttle import Kind
from mailstack.clikit import CONTEXT, cli_state, deployment, reporting


@click.group(context_settings=CONTEXT)
def throttle() -> None:
    """See and lift login throttles (IMAP and submission)."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def current_rows() -> list[dict[str, Any]]:
    """Every failure record still inside its window, with what it does to logins now."""
    from mailstack.base.login import throttle_from_config
    from mailstack.base.throttle_db import ThrottleDb

    with deployment() as dep:
        if not dep.paths.throttle_db.exists():
            return []
        rules = throttle_from_config(dep.config.auth)
        db = ThrottleDb(dep.paths.throttle_db)
        try:
            records = db.load()
        finally:
            db.close()
    now = time.time()
    rows = []
    for (kind, account, network), (failures, last) in sorted(records.items()):
        if kind is Kind.GOOD or not failures or now - last > rules.window_s:
            continue
        delay = rules.delay_for(kind, failures)
        status = (
            "refused" if rules.is_refusing(kind, failures) else "delayed" if delay else "counting"
        )
        rows.append(
            {
                "kind": kind.value,
                "account": account or None,
                "network": network or None,
                "failures": failures,
                "status": status,
                "delay_s": delay,
                "last_failure": _iso(last),
                "expires": _iso(last + rules.window_s),
            }
        )
    return rows


@throttle.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of records.")
def throttle_list(as_json: bool) -> None:
    """Show failed-login counters: per account and network, per network, per account."""
    from mailstack.output import print_json, print_table

    with reporting(cli_state().debug):
        rows = current_rows()
        if as_json:
            print_json(rows)
            return
        if not rows:
            click.echo("no login throttles")
            return
        print_table(
            ["kind", "account", "network", "failures", "status", "expires"],
            [
                [
                    r["kind"],
                    r["account"] or "-",
                    r["network"] or "-",
                    str(r["failures"]),
                    f"delayed {r['delay_s']:g}s" if r["status"] == "delayed" else r["status"],
                    r["expires"],
                ]
                for r in rows
            ],
        )


def _networks(target: str) -> list[str] | None:
    """The throttle networks an IP address or CIDR names; None if `target` is neither."""
    try:
        return [network_of(str(ipaddress.ip_address(target)))]
    except ValueError:
        pass
    try:
        wanted = ipaddress.ip_network(target, strict=False)
    except ValueError:
        return None
    mapped = network_of(str(wanted.network_address))
    if wanted.prefixlen >= (24 if wanted.version == 4 else 64):
        return [mapped]  # inside one throttle network: that network
    return [r["network"] for r in current_rows() if r["network"] and _within(r["network"], wanted)]


def _within(network: str, wanted: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    try:
        net = ipaddress.ip_network(network)
    except ValueError:
        return False
    return net.version == wanted.version and net.subnet_of(wanted)  # type: ignore[arg-type]


@throttle.command("clear", context_settings=CONTEXT)
@click.argument("target", required=False)
def throttle_clear(target: str | None) -> None:
    """Lift throttles: of an account (ADDR), of a client address or network (IP or CIDR), or
    all of them (no argument). A running serve follows at once."""
    from mailstack.base.login import canonical_name
    from mailstack.base.throttle_db import ThrottleDb

    with reporting(cli_state().debug):
        if target is not None and not target.strip():
            raise UsageError("TARGET: expected an address, an IP address or a network")
        networks = _networks(target.strip()) if target else None
        account = canonical_name(target) if target and networks is None else None
        with deployment() as dep:
            db = ThrottleDb(dep.paths.throttle_db)
            try:
                count = db.clear(account=account, networks=networks)
            finally:
                db.close()
        what = (
            "every account and network"
            if target is None
            else account or ", ".join(networks or []) or target
        )
        click.echo(f"cleared {count} throttle record{'s' * (count != 1)} for {what}")
