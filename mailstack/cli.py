"""The `mailstack` command: a thin click shell over library functions (INTERFACE.md).

Each command parses its arguments, calls one library function inside `reporting()`, prints,
and exits: 0 success, 1 failure (a MailstackError: `error: ...` and maybe `hint: ...`), 2 usage.
Nothing here decides policy; nothing below here exits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import click

from mailstack import __version__
from mailstack.config import (
    format_size,
    is_fqdn,
    load_config,
    parse_size,
    to_toml,
)
from mailstack.errors import MailstackError, UsageError
from mailstack.paths import StatePaths, default_dir

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@contextlib.contextmanager
def reporting(debug: bool = False) -> Iterator[None]:
    """The CLI's error boundary: one clear line on stderr, never a traceback (unless --debug)."""
    try:
        yield
    except click.exceptions.Exit:
        raise
    except (click.ClickException, click.Abort):
        raise
    except MailstackError as exc:
        click.echo(f"error: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            traceback.print_exc()
        click.echo(
            f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(1)


class Obj:
    def __init__(self, root: Path, debug: bool) -> None:
        self.root = root
        self.debug = debug

    @property
    def paths(self) -> StatePaths:
        return StatePaths(self.root)


def _obj() -> Obj:
    obj = click.get_current_context().find_object(Obj)
    assert obj is not None  # noqa: S101 - set by the group callback
    return obj


@contextlib.contextmanager
def deployment() -> Iterator[Any]:
    from mailstack.deployment import Deployment

    dep = Deployment.open(_obj().root)
    try:
        yield dep
    finally:
        dep.close()


def fail_usage(message: str) -> NoReturn:
    raise click.UsageError(message)


class SizeType(click.ParamType):  # type: ignore[type-arg]
    name = "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


@click.group(context_settings=CONTEXT)
@click.option(
    "--dir",
    "root",
    type=click.Path(path_type=Path),
    envvar="MAILSTACK_DIR",
    default=None,
    help="State directory (env MAILSTACK_DIR; default /var/lib/mailstack).",
)
@click.option("--debug", is_flag=True, help="Show tracebacks of internal errors.")
@click.version_option(__version__, prog_name="mailstack")
@click.pass_context
def main(ctx: click.Context, root: Path | None, debug: bool) -> None:
    """mailstack: SMTP, IMAP, DKIM and DNS for your domain, in one process."""
    ctx.obj = Obj((root or default_dir()).absolute(), debug)


# -- init ------------------------------------------------------------------------------------------


def _prompt_or_fail(
    value: str | None, flag: str, prompt: str, interactive: bool, default: str | None = None
) -> str:
    if value:
        return value
    if interactive:
        result: str = click.prompt(prompt, default=default)
        return result
    fail_usage(f"missing option {flag} (no terminal to ask on; pass it, or run interactively)")


def _check_ip(value: str, version: int, flag: str) -> str:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        fail_usage(f"{flag}: {value!r} is not an IPv{version} address")
    if ip.version != version:
        fail_usage(f"{flag}: {value!r} is not an IPv{version} address")
    return str(ip)


@main.command(context_settings=CONTEXT)
@click.option("--domain", help="The mail domain, e.g. example.com.")
@click.option("--hostname", help="The server's name, e.g. mail.example.com.")
@click.option("--ipv4", help="The server's public IPv4 address.")
@click.option("--ipv6", default="", help="The server's public IPv6 address, if any.")
@click.option(
    "--listen-host",
    default="0.0.0.0",  # noqa: S104 - a mail server listens publicly by design
    show_default=True,
    help="Address every listener binds to.",
)
@click.option("--smtp-port", type=click.IntRange(0, 65535), default=25, show_default=True)
@click.option("--submission-port", type=click.IntRange(0, 65535), default=587, show_default=True)
@click.option("--submissions-port", type=click.IntRange(0, 65535), default=465, show_default=True)
@click.option("--imap-port", type=click.IntRange(0, 65535), default=143, show_default=True)
@click.option("--imaps-port", type=click.IntRange(0, 65535), default=993, show_default=True)
@click.option("--dkim-selector", default="", help="DKIM selector (default msYYYYMM).")
@click.option(
    "--force",
    is_flag=True,
    help="Regenerate an existing deployment's config, keys and zones (accounts and mail are kept).",
)
@click.option("--non-interactive", is_flag=True, help="Never prompt; fail on missing options.")
def init(
    domain: str | None,
    hostname: str | None,
    ipv4: str | None,
    ipv6: str,
    listen_host: str,
    smtp_port: int,
    submission_port: int,
    submissions_port: int,
    imap_port: int,
    imaps_port: int,
    dkim_selector: str,
    force: bool,
    non_interactive: bool,
) -> None:
    """Create a deployment: config, TLS certificates, DKIM keys and DNS zone files."""
    from mailstack.init import InitOptions, dns_records, init_deployment
    from mailstack.output import print_records

    obj = _obj()
    interactive = not non_interactive and sys.stdin.isatty()
    domain = _prompt_or_fail(domain, "--domain", "Mail domain (e.g. example.com)", interactive)
    if not is_fqdn(domain):
        fail_usage(f"--domain: {domain!r} is not a valid domain name")
    hostname = _prompt_or_fail(
        hostname, "--hostname", "Server hostname", interactive, default=f"mail.{domain}"
    )
    if not is_fqdn(hostname):
        fail_usage(f"--hostname: {hostname!r} is not a fully-qualified host name")
    ipv4 = _check_ip(
        _prompt_or_fail(ipv4, "--ipv4", "Public IPv4 address", interactive), 4, "--ipv4"
    )
    if ipv6:
        ipv6 = _check_ip(ipv6, 6, "--ipv6")
    with reporting(obj.debug):
        try:
            ipaddress.ip_address(listen_host)
        except ValueError:
            fail_usage(f"--listen-host: {listen_host!r} is not an IP address")
        ports = (
            ("smtp", smtp_port),
            ("submission", submission_port),
            ("submissions", submissions_port),
            ("imap", imap_port),
            ("imaps", imaps_port),
        )
        opts = InitOptions(
            domain=domain,
            hostname=hostname,
            ipv4=ipv4,
            ipv6=ipv6,
            listen_host=listen_host,
            ports=ports,
            dkim_selector=dkim_selector,
            force=force,
        )
        cfg = init_deployment(obj.root, opts)
        paths = obj.paths
        click.echo(f"Created the mailstack deployment for {domain} in {obj.root}\n")
        print_records(dns_records(cfg, paths, None))
        click.echo(f"Zone files to import: {paths.dns_dir}/")
        click.echo(
            "Next: publish the records above, add an account with "
            f"`mailstack user add you@{domain}`, run `mailstack serve`, then "
            "`mailstack check`."
        )


# -- users -----------------------------------------------------------------------------------------


def _read_password(from_stdin: bool) -> str | None:
    if not from_stdin:
        return None
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise UsageError("--password-stdin: no password on standard input")
    return password


@main.group(context_settings=CONTEXT)
def user() -> None:
    """Manage accounts."""


@user.command("add", context_settings=CONTEXT)
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--quota", type=SIZE, default=None, help="Storage quota (bytes or K/M/G; 0 = none).")
def user_add(address: str, password_stdin: bool, quota: int | None) -> None:
    """Add an account (prints a generated password unless --password-stdin)."""
    from mailstack.users import generate_password

    with reporting(_obj().debug), deployment() as dep:
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


def _quota(n: int) -> str:
    return "unlimited" if n == 0 else format_size(n)


@user.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def user_list(as_json: bool) -> None:
    """List accounts with quota and usage."""
    from mailstack.output import print_json, print_table

    with reporting(_obj().debug), deployment() as dep:
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
def user_passwd(address: str, password_stdin: bool) -> None:
    """Set an account's password (generated and printed unless --password-stdin)."""
    from mailstack.users import generate_password

    with reporting(_obj().debug), deployment() as dep:
        password = _read_password(password_stdin)
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
    with reporting(_obj().debug), deployment() as dep:
        dep.accounts.set_quota(address, size)
        click.echo(f"quota of {dep.accounts.require_user(address).address} is now {_quota(size)}")


@user.command("del", context_settings=CONTEXT)
@click.argument("address")
@click.option("--keep-mail", is_flag=True, help="Keep the Maildir on disk.")
def user_del(address: str, keep_mail: bool) -> None:
    """Delete an account and (unless --keep-mail) its mail."""
    with reporting(_obj().debug), deployment() as dep:
        account = dep.accounts.require_user(address)
        dep.accounts.delete_user(account.address)
        if not keep_mail:
            dep.store.delete_account(account.address)
        click.echo(f"deleted {account.address}" + (" (mail kept)" if keep_mail else ""))


# -- aliases ---------------------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def alias() -> None:
    """Manage aliases (ADDR or @domain for a catch-all)."""


@alias.command("add", context_settings=CONTEXT)
@click.argument("address")
@click.argument("targets", nargs=-1, required=True)
def alias_add(address: str, targets: tuple[str, ...]) -> None:
    """Deliver mail for ADDRESS to each TARGET."""
    with reporting(_obj().debug), deployment() as dep:
        dep.accounts.add_alias(address, list(targets))
        click.echo(f"alias {address} -> {', '.join(targets)}")


@alias.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def alias_list(as_json: bool) -> None:
    """List aliases."""
    from mailstack.output import print_json, print_table

    with reporting(_obj().debug), deployment() as dep:
        aliases = dep.accounts.aliases()
        if as_json:
            print_json([{"address": a, "targets": t} for a, t in aliases.items()])
            return
        print_table(["alias", "targets"], [[a, ", ".join(t)] for a, t in aliases.items()])


@alias.command("del", context_settings=CONTEXT)
@click.argument("address")
def alias_del(address: str) -> None:
    """Delete an alias."""
    with reporting(_obj().debug), deployment() as dep:
        dep.accounts.delete_alias(address)
        click.echo(f"deleted alias {address}")


# -- domains and DNS -------------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
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
    with reporting(_obj().debug):
        records = add_domain(_obj().paths, name)
        click.echo(f"now hosting {name}; publish these records:\n")
        print_records(records)


@domain.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def domain_list(as_json: bool) -> None:
    """List hosted domains."""
    from mailstack.init import hosted_domains
    from mailstack.output import print_json

    with reporting(_obj().debug), deployment() as dep:
        domains = hosted_domains(dep.config, dep.accounts)
        if as_json:
            print_json(domains)
        else:
            for d in domains:
                click.echo(d)


@main.command(context_settings=CONTEXT)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "zone", "json"]),
    default="table",
    show_default=True,
)
def dns(fmt: str) -> None:
    """Print the DNS records to publish, for every hosted domain."""
    from mailstack.dnsrecords import group_by_zone
    from mailstack.init import dns_records, render_zone
    from mailstack.output import print_json, print_records

    with reporting(_obj().debug), deployment() as dep:
        records = dns_records(dep.config, dep.paths, dep.accounts)
        if fmt == "json":
            print_json([r.as_dict() for r in records])
        elif fmt == "zone":
            for zone, recs in group_by_zone(records).items():
                click.echo(render_zone(zone, recs, dep.config, "dns"))
        else:
            print_records(records)


# -- config ----------------------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def config() -> None:
    """Validate and show the configuration."""


@config.command("validate", context_settings=CONTEXT)
@click.argument("file", required=False, type=click.Path(path_type=Path))
def config_validate(file: Path | None) -> None:
    """Check a config file (default: the deployment's); exit 1 naming the key at fault."""
    with reporting(_obj().debug):
        path = file or _obj().paths.config
        load_config(path)
        click.echo(f"{path}: ok")


@config.command("show", context_settings=CONTEXT)
def config_show() -> None:
    """Print the effective configuration, defaults included."""
    with reporting(_obj().debug):
        click.echo(to_toml(load_config(_obj().paths.config)), nl=False)


# -- TLS -------------------------------------------------------------------------------------------


@main.group(context_settings=CONTEXT)
def tls() -> None:
    """Inspect or replace the server certificate."""


@tls.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def tls_status(as_json: bool) -> None:
    """Show the certificate in use: names, issuer, expiry."""
    from mailstack.keys import inspect_tls
    from mailstack.output import print_json

    with reporting(_obj().debug):
        paths = _obj().paths
        cfg = load_config(paths.config)
        try:
            info = inspect_tls(paths.tls_cert.read_bytes())
        except FileNotFoundError:
            raise MailstackError(
                f"no certificate at {paths.tls_cert}",
                hint="run `mailstack init` or `mailstack tls import`",
            ) from None
        data = {
            "file": str(paths.tls_cert),
            "subject": info.subject,
            "issuer": info.issuer,
            "names": list(info.names),
            "not_after": info.not_after.isoformat(),
            "days_left": int(info.days_left()),
            "private_ca": info.is_self_issued_chain and paths.ca_cert.exists(),
            "covers_hostname": cfg.server.hostname,
        }
        if as_json:
            print_json(data)
            return
        for key, value in data.items():
            click.echo(f"{key:16} {', '.join(value) if isinstance(value, list) else value}")


@tls.command("import", context_settings=CONTEXT)
@click.option(
    "--cert",
    "cert_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM chain: server certificate first.",
)
@click.option(
    "--key",
    "key_file",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="PEM private key (unencrypted).",
)
def tls_import(cert_file: Path, key_file: Path) -> None:
    """Use a certificate from a public CA (checks key, chain order and hostname first)."""
    from mailstack.keys import validate_tls_pair, write_private, write_public

    with reporting(_obj().debug):
        paths = _obj().paths
        cfg = load_config(paths.config)
        chain, key = cert_file.read_bytes(), key_file.read_bytes()
        info = validate_tls_pair(chain, key, cfg.server.hostname)
        write_private(paths.tls_key, key)
        write_public(paths.tls_cert, chain)
        for stale in (paths.ca_cert, paths.ca_key):  # the private CA no longer vouches for us
            stale.unlink(missing_ok=True)
        click.echo(
            f"imported certificate for {', '.join(info.names)} "
            f"(expires {info.not_after:%Y-%m-%d}); a running serve picks it up on SIGHUP"
        )


# -- serve and demo --------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default=None,
    help="Overrides [log] level.",
)
@click.option("--log-json", is_flag=True, default=None, help="One JSON object per log line.")
def serve(log_level: str | None, log_json: bool | None) -> None:
    """Run every listener in the foreground (SIGTERM stops, SIGHUP reloads certificates)."""
    from mailstack.app import serve as run_serve
    from mailstack.deployment import Deployment
    from mailstack.logs import setup_logging

    with reporting(_obj().debug):
        dep = Deployment.open(_obj().root)
        setup_logging(
            log_level or dep.config.log.level,
            json_lines=dep.config.log.json if log_json is None else log_json,
        )
        run_serve(dep)


@main.command(context_settings=CONTEXT)
@click.option(
    "--base-port",
    type=click.IntRange(1024, 65000),
    default=2500,
    show_default=True,
    help="SMTP on BASE+25, submission +87, submissions +65, IMAP +43, IMAPS +93.",
)
@click.option("--no-serve", is_flag=True, help="Set up the demo deployment, print, and exit.")
def demo(base_port: int, no_serve: bool) -> None:
    """A throwaway deployment for example.test on loopback, with one user, served at once."""
    from mailstack.demo import DemoPorts, create_demo, instructions

    obj = _obj()
    explicit_dir = click.get_current_context().find_root().params.get("root") is not None
    with reporting(obj.debug):
        root = obj.root if explicit_dir else None
        result = create_demo(root, DemoPorts.from_base(base_port))
        click.echo(instructions(result))
        if no_serve:
            return
        from mailstack.app import serve as run_serve
        from mailstack.deployment import Deployment
        from mailstack.logs import setup_logging

        setup_logging("INFO")
        run_serve(Deployment.open(result.root))


@main.command("systemd-unit", context_settings=CONTEXT)
@click.option("--user", "unit_user", default="mailstack", show_default=True)
@click.option("--group", "unit_group", default="mailstack", show_default=True)
def systemd_unit(unit_user: str, unit_group: str) -> None:
    """Print a systemd unit that runs `serve` for this state directory."""
    from mailstack.render import render

    with reporting(_obj().debug):
        exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "mailstack"
        click.echo(
            render(
                "systemd/mailstack.service.j2",
                exe=exe,
                state_dir=_obj().root,
                user=unit_user,
                group=unit_group,
            ),
            nl=False,
        )


# -- check -----------------------------------------------------------------------------------------

def _resolver_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    from mailstack.config import parse_resolver

    if not value:
        return ""
    try:
        parse_resolver(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--resolver", metavar="HOST[:PORT]", callback=_resolver_option,
              help="DNS resolver to ask (overrides [dns] resolver).")
@click.option("--only", "only", multiple=True, metavar="GROUP",
              type=click.Choice(["config", "files", "dns", "tls", "smtp", "submission", "imap",
                                 "relay", "e2e", "network"]),
              help="Run only this group of checks (repeatable).")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.option("--network", is_flag=True, help="Also run checks that need the Internet.")
def check(as_json: bool, resolver: str, only: tuple[str, ...], strict: bool,
          network: bool) -> None:
    """Validate the deployment: DNS, TLS, listeners, login, delivery, open relay."""
    from mailstack.checks import CheckOptions, run_checks
    from mailstack.checks.report import print_json, print_report
    from mailstack.errors import ProblemsFoundError

    with reporting(_obj().debug):
        opts = CheckOptions(resolver=resolver, only=frozenset(only), strict=strict,
                            network=network)
        report = run_checks(_obj().root, opts)
        if as_json:
            print_json(report)
        else:
            print_report(report)
        if not report.ok:
            bad = report.counts.get("fail", 0) + (report.counts.get("warn", 0) if strict else 0)
            raise ProblemsFoundError(f"{bad} check(s) did not pass",
                                     hint=None if as_json else "apply each fix shown above, "
                                     "then run `mailstack check` again")


# -- deliver (LDA) ---------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.argument("address", required=False)
@click.option("--from", "mail_from", default="", metavar="SENDER",
              help="Envelope sender, written as Return-Path.")
def deliver(address: str | None, mail_from: str) -> None:
    """Deliver the message on stdin to ADDRESS (an LDA: sysexits codes, 75 = try later)."""
    from delivery.local import run_lda

    status, problem = run_lda(_obj().root, address, sys.stdin.buffer.read(), mail_from=mail_from)
    if problem:
        click.echo(f"error: {problem}", err=True)
    sys.exit(status)
