"""`mailstack user|alias|domain`: accounts, aliases and hosted domains (INTERFACE.md).

`mailstack.cli` adds these groups to its `main` group.
"""

from __future__ import annotations

import sys

import click

from mailstack.base.config import format_size, is_fqdn
from mailstack.base.errors import MailstackError, UsageError
from mailstack.clikit import CONTEXT, SIZE, cli_state, deployment, fail_usage, reporting
from mailstack.output import client_settings

# -- users -----------------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin: no password on standard input")
    return password


@click.group(context_settings=CONTEXT)
def user() -> None:
    """Manage accounts."""


@user.command("add", context_settings=CONTEXT)
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--quota", type=SIZE, default=None, help="Storage quota (bytes or K/M/G; 0 = none).")
def user_add(address: str, password_stdin: bool, quota: int | None) -> None:
    """Add an account (prints a generated password unless --password-stdin)."""
    from mailstack.base.users import generate_password

    with reporting(cli_state().debug), deployment() as dep:
        password = _read_password(password_stdin)
        generated = password is None
        password = password or generate_password()
        quota_bytes = dep.config.default_quota_bytes if quota is None else quota
        account = dep.accounts.add_user(address, password, quota_bytes=quota_bytes)
        try:
            dep.store.create_account(account.address)
        except BaseException:
            dep.accounts.delete_user(account.address)  # no account without its Maildir
            raise
        click.echo(f"added {account.address} (quota {_quota(account.quota_bytes)})")
        if generated:
            click.echo(f"password: {password}")
        ports = {
            service: listeners[0][1]
            for service in ("imaps", "imap", "submissions", "submission")
            if (listeners := dep.config.listeners(service))
        }
        click.echo("\nMail client settings:")
        for line in client_settings(dep.config.server.hostname, ports, account.address):
            click.echo(line)


def _quota(n: int) -> str:
    return "unlimited" if n == 0 else format_size(n)


@user.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def user_list(as_json: bool) -> None:
    """List accounts with quota and usage."""
    from mailstack.output import print_json, print_table

    with reporting(cli_state().debug), deployment() as dep:
        rows = []
        for u in dep.accounts.users():
            used = dep.store.usage_bytes(u.address)
            rows.append(
                {
                    "address": u.address,
                    "quota_bytes": u.quota_bytes,
                    "used_bytes": used,
                    "enabled": u.enabled,
                }
            )
        if as_json:
            print_json(rows)
            return
        print_table(
            ["address", "quota", "used", "enabled"],
            [
                [
                    r["address"],
                    _quota(r["quota_bytes"]),
                    format_size(r["used_bytes"]) or "0",
                    "yes" if r["enabled"] else "no",
                ]
                for r in rows
            ],
        )


@user.command("passwd", context_settings=CONTEXT)
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option(
    "--check",
    is_flag=True,
    help="Only compare with the password on stdin: exit 0 if it matches, 1 if not.",
)
def user_passwd(address: str, password_stdin: bool, check: bool) -> None:
    """Set an account's password (generated and printed unless --password-stdin)."""
    from mailstack.base.users import generate_password

    if check and not password_stdin:
        fail_usage("--check compares with a password read from stdin: add --password-stdin")
    with reporting(cli_state().debug), deployment() as dep:
        password = _read_password(password_stdin)
        if check:
            # Provisioning (the Ansible role) asks before it changes: nothing is written here.
            assert password is not None  # noqa: S101 - --password-stdin is required above
            account = dep.accounts.require_user(address)
            if not dep.accounts.verify_password(account.address, password):
                raise MailstackError(f"the password of {account.address} differs")
            click.echo(f"the password of {account.address} matches")
            return
        generated = password is None
        password = password or generate_password()
        dep.accounts.set_password(address, password)
        click.echo(f"password changed for {dep.accounts.require_user(address).address}")
        if generated:
            click.echo(f"password: {password}")


@user.command("quota", context_settings=CONTEXT)
@click.argument("address")
@click.argument("size", type=SIZE)
def user_quota(address: str, size: int) -> None:
    """Set an account's storage quota (0 = unlimited)."""
    with reporting(cli_state().debug), deployment() as dep:
        dep.accounts.set_quota(address, size)
        click.echo(f"quota of {dep.accounts.require_user(address).address} is now {_quota(size)}")


@user.command("del", context_settings=CONTEXT)
@click.argument("address")
@click.option("--keep-mail", is_flag=True, help="Keep the Maildir on disk.")
def user_del(address: str, keep_mail: bool) -> None:
    """Delete an account and (unless --keep-mail) its mail."""
    with reporting(cli_state().debug), deployment() as dep:
        account = dep.accounts.require_user(address)
        dep.accounts.delete_user(account.address)
        if not keep_mail:
            dep.store.delete_account(account.address)
        click.echo(f"deleted {account.address}" + (" (mail kept)" if keep_mail else ""))


# -- aliases ---------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def alias() -> None:
    """Manage aliases (ADDR or @domain for a catch-all)."""


@alias.command("add", context_settings=CONTEXT)
@click.argument("address")
@click.argument("targets", nargs=-1, required=True)
@click.option(
    "--external",
    is_flag=True,
    help="Allow targets outside the hosted domains (mail is forwarded there).",
)
def alias_add(address: str, targets: tuple[str, ...], external: bool) -> None:
    """Deliver mail for ADDRESS to each TARGET (each must exist here, or be outside with
    --external); prints all of the alias's targets."""
    with reporting(cli_state().debug), deployment() as dep:
        all_targets = dep.accounts.add_alias(
            address, list(targets), allow_external=external, allow_unknown=False
        )
        click.echo(f"alias {address} -> {', '.join(all_targets)}")


@alias.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def alias_list(as_json: bool) -> None:
    """List aliases."""
    from mailstack.output import print_json, print_table

    with reporting(cli_state().debug), deployment() as dep:
        aliases = dep.accounts.aliases()
        if as_json:
            print_json([{"address": a, "targets": t} for a, t in aliases.items()])
            return
        print_table(["alias", "targets"], [[a, ", ".join(t)] for a, t in aliases.items()])


@alias.command("del", context_settings=CONTEXT)
@click.argument("address")
@click.argument("targets", nargs=-1)
def alias_del(address: str, targets: tuple[str, ...]) -> None:
    """Delete an alias, or only the given TARGETs of it."""
    with reporting(cli_state().debug), deployment() as dep:
        left = dep.accounts.delete_alias(address, targets)
        if not targets:
            click.echo(f"deleted alias {address}")
        elif left:
            click.echo(f"alias {address} -> {', '.join(left)}")
        else:
            click.echo(f"deleted alias {address} (no targets left)")


# -- domains and DNS -------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def domain() -> None:
    """Manage hosted domains."""


@domain.command("add", context_settings=CONTEXT)
@click.argument("name")
def domain_add(name: str) -> None:
    """Host another domain: DKIM key, zone file, records to publish."""
    from mailstack.init import add_domain
    from mailstack.output import print_records

    if not is_fqdn(name):
        fail_usage(f"{name!r} is not a valid domain name")
    with reporting(cli_state().debug):
        records = add_domain(cli_state().paths, name)
        click.echo(f"now hosting {name}; publish these records:\n")
        print_records(records)


@domain.command("del", context_settings=CONTEXT)
@click.argument("name")
def domain_del(name: str) -> None:
    """Stop hosting a domain added with `domain add` (no users or aliases may be left in it)."""
    from mailstack.init import remove_domain

    with reporting(cli_state().debug):
        removed = remove_domain(cli_state().paths, name)
        click.echo(f"no longer hosting {removed}; remove its DNS records (its DKIM key stays)")


@domain.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def domain_list(as_json: bool) -> None:
    """List hosted domains."""
    from mailstack.init import hosted_domains
    from mailstack.output import print_json

    with reporting(cli_state().debug), deployment() as dep:
        domains = hosted_domains(dep.config, dep.accounts)
        if as_json:
            print_json(domains)
        else:
            for d in domains:
                click.echo(d)
