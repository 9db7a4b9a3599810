"""The `mailstack` command: a thin click shell over library functions (INTERFACE.md).

Each command parses its arguments, calls one library function inside `reporting()`, prints,
and exits: 0 success, 1 failure (a MailstackError: `error: ...` and maybe `hint: ...`), 2 usage.
Nothing here decides policy; nothing below here exits.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailstack import __version__
from mailstack.base.config import (
    is_fqdn,
)
from mailstack.base.errors import ConfigError
from mailstack.base.paths import StatePaths, default_dir
from mailstack.checks import GROUPS
from mailstack.cli_accounts import alias, domain, user
from mailstack.cli_config import config, tls
from mailstack.cli_dkim import dkim
from mailstack.cli_queue import queue
from mailstack.cli_share import mailbox, share
from mailstack.cli_throttle import throttle
from mailstack.clikit import (
    CONTEXT,
    GlobalOptionsGroup,
    Obj,
    cli_state,
    deployment,
    fail_usage,
    reporting,
)

if TYPE_CHECKING:
    pass


@click.group(cls=GlobalOptionsGroup, context_settings=CONTEXT)
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
    """mailstack: SMTP, IMAP, DKIM and DNS for your domain, in one service."""
    ctx.obj = Obj((root or default_dir()).absolute(), debug)
    if ctx.invoked_subcommand not in _AS_INVOKER:
        from mailstack.privileges import become_owner

        with reporting(debug):
            become_owner(ctx.obj.root)  # root on a deployment of `mailstack`: act as mailstack


# Commands that never switch to the state dir's owner: init creates and hands over the dir,
# serve re-executes itself with CAP_NET_BIND_SERVICE; demo, systemd-unit and config write
# nothing there (config validate reads a file root may own, e.g. Ansible's temporary copy).
_AS_INVOKER = frozenset({"init", "serve", "demo", "systemd-unit", "config"})


for _group in (user, alias, domain, throttle, config, tls, queue, share, mailbox):
    main.add_command(_group)
main.add_command(dkim)


# -- init ------------------------------------------------------------------------------------------


def _ask(
    value: str | None,
    flag: str,
    prompt: str,
    interactive: bool,
    problem: Callable[[str], str | None],
    default: str | None = None,
) -> str:
    """A value from its flag (a bad one: exit 2 with the reason) or, on a terminal, asked for
    until it is good (a bad answer is explained and asked again, not the end of init)."""
    if value:
        if (why := problem(value)) is not None:
            fail_usage(f"{flag}: {why}")
        return value
    if not interactive:
        fail_usage(f"missing option {flag} (no terminal to ask on; pass it, or run interactively)")
    while True:
        answer: str = click.prompt(prompt, default=default)
        if (why := problem(answer.strip())) is None:
            return answer.strip()
        click.echo(f"  {why}; try again", err=True)


def _not_ip(value: str, version: int) -> str | None:
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IPv{version} address"
    return None if ip.version == version else f"{value!r} is not an IPv{version} address"


def _not_domain(value: str) -> str | None:
    return None if is_fqdn(value) else f"{value!r} is not a valid domain name"


def _not_hostname(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:  # an MX must name a host (RFC 5321 §5.1, RFC 7505 aside): "MX 10 203.0.113.5." is wrong
        return f"{value!r} is an IP address; give the server's name (e.g. mail.example.com)"
    return None if is_fqdn(value) else f"{value!r} is not a fully-qualified host name"


def _init_warnings(domain: str, hostname: str, ipv4: str) -> list[str]:
    """Legal but probably not meant: said, not refused (test setups and split names exist)."""
    out = []
    ip = ipaddress.ip_address(ipv4)
    if not ip.is_global:
        out.append(
            f"--ipv4 {ipv4} is not a public address: other servers cannot reach it, and the"
            " A and PTR records will point nowhere useful"
        )
    if hostname != domain and not hostname.endswith("." + domain):
        out.append(
            f"--hostname {hostname} is outside {domain}: fine if you control its DNS (its A"
            " record and the PTR must match it), else use e.g. mail." + domain
        )
    return out


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
@click.option(
    "--https-port",
    type=click.IntRange(0, 65535),
    help="Serve autoconfig, MTA-STS and the web pages on this port (e.g. 443); default: off.",
)
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    help="Answer ACME challenges and redirect to https on this port (e.g. 80); default: off.",
)
@click.option("--dkim-selector", default="", help="DKIM selector (default msYYYYMM).")
@click.option(
    "--force",
    is_flag=True,
    help="Regenerate an existing deployment's config, keys and zones (accounts and mail are kept).",
)
@click.option("--non-interactive", is_flag=True, help="Never prompt; fail on missing options.")
@click.option(
    "--system-user",
    is_flag=True,
    help="Create the system user `mailstack` (if missing) and give it the state dir (as root).",
)
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
    https_port: int | None,
    http_port: int | None,
    dkim_selector: str,
    force: bool,
    non_interactive: bool,
    system_user: bool,
) -> None:
    """Create a deployment: config, TLS certificates, DKIM keys and DNS zone files."""
    from mailstack.init import InitOptions, dns_records, init_deployment
    from mailstack.output import print_records

    obj = cli_state()
    interactive = not non_interactive and sys.stdin.isatty()
    domain = _ask(domain, "--domain", "Mail domain (e.g. example.com)", interactive, _not_domain)
    hostname = _ask(
        hostname,
        "--hostname",
        "Server hostname",
        interactive,
        _not_hostname,
        default=f"mail.{domain}",
    )
    ipv4 = str(
        ipaddress.ip_address(
            _ask(ipv4, "--ipv4", "Public IPv4 address", interactive, lambda v: _not_ip(v, 4))
        )
    )
    if ipv6:
        if (why := _not_ip(ipv6, 6)) is not None:
            fail_usage(f"--ipv6: {why}")
        ipv6 = str(ipaddress.ip_address(ipv6))
    for warning in _init_warnings(domain, hostname, ipv4):
        click.echo(f"warning: {warning}", err=True)
    with reporting(obj.debug):
        try:
            ipaddress.ip_address(listen_host)
        except ValueError:
            fail_usage(f"--listen-host: {listen_host!r} is not an IP address")
        ports: tuple[tuple[str, int], ...] = (
            ("smtp", smtp_port),
            ("submission", submission_port),
            ("submissions", submissions_port),
            ("imap", imap_port),
            ("imaps", imaps_port),
        )
        ports += tuple(
            (s, p) for s, p in (("https", https_port), ("http", http_port)) if p is not None
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
        from mailstack.privileges import deployment_owner, hand_over

        owner = deployment_owner(obj.root, system_user)
        cfg = init_deployment(obj.root, opts)
        if owner is not None:  # files init wrote as root belong to the user serve runs as
            hand_over(obj.root, *owner)
        paths = obj.paths
        click.echo(f"Created the mailstack deployment for {domain} in {obj.root}\n")
        print_records(dns_records(cfg, paths, None))
        click.echo(f"Zone files to import: {paths.dns_dir}/")
        # The hints repeat --dir when the deployment is not in the default place.
        ms = "mailstack" if obj.root == default_dir().absolute() else f"mailstack --dir {obj.root}"
        click.echo(
            "Next: publish the records above, add an account with "
            f"`{ms} user add you@{domain}`, run `{ms} serve`, then `{ms} check`."
        )
        if system_user:
            click.echo(
                "The state directory belongs to the user mailstack; run serve as a service "
                f"with `{ms} systemd-unit > /etc/systemd/system/mailstack.service`."
            )


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

    with reporting(cli_state().debug), deployment() as dep:
        records = dns_records(dep.config, dep.paths, dep.accounts)
        if fmt == "json":
            print_json([r.as_dict() for r in records])
        elif fmt == "zone":
            for zone, recs in group_by_zone(records).items():
                click.echo(render_zone(zone, recs, dep.config, "dns"))
        else:
            print_records(records)


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
    from mailstack.base.logs import setup_logging
    from mailstack.deployment import Deployment
    from mailstack.privileges import reexec_serve_as_owner

    with reporting(cli_state().debug):
        reexec_serve_as_owner(cli_state().root)  # root on mailstack's dir: run as mailstack
        dep = Deployment.open(cli_state().root)
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
    help="SMTP on BASE+25, submission +87, submissions +65, IMAP +43, IMAPS +93, "
    "HTTPS +44, HTTP +80.",
)
@click.option("--no-serve", is_flag=True, help="Set up the demo deployment, print, and exit.")
def demo(base_port: int, no_serve: bool) -> None:
    """A throwaway deployment for example.test on loopback, with one user, served at once."""
    from mailstack.demo import DemoPorts, create_demo, instructions

    obj = cli_state()
    explicit_dir = click.get_current_context().find_root().params.get("root") is not None
    with reporting(obj.debug):
        root = obj.root if explicit_dir else None
        result = create_demo(root, DemoPorts.from_base(base_port))
        click.echo(instructions(result))
        if no_serve:
            return
        from mailstack.app import serve as run_serve
        from mailstack.base.logs import setup_logging
        from mailstack.deployment import Deployment

        setup_logging("INFO")
        run_serve(Deployment.open(result.root))


@main.command("systemd-unit", context_settings=CONTEXT)
@click.option("--user", "unit_user", default="mailstack", show_default=True)
@click.option("--group", "unit_group", default=None, help="Default: the user's own group.")
def systemd_unit(unit_user: str, unit_group: str | None) -> None:
    """Print a systemd unit that runs `serve` for this state directory, unprivileged."""
    from mailstack.privileges import user_exists
    from mailstack.render import render

    unit_group = unit_group or unit_user
    if unit_user == "root":
        fail_usage("--user root: serve runs unprivileged (the unit grants CAP_NET_BIND_SERVICE)")
    with reporting(cli_state().debug):
        if not user_exists(unit_user):  # a warning: the unit may be written before the user
            click.echo(
                f"warning: user {unit_user} does not exist yet; `mailstack init --system-user` "
                "creates it and hands it the state directory",
                err=True,
            )
        exe = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "mailstack"
        click.echo(
            render(
                "systemd/mailstack.service.j2",
                exe=exe,
                state_dir=cli_state().root,
                user=unit_user,
                group=unit_group,
            ),
            nl=False,
        )


# -- check -----------------------------------------------------------------------------------------


def _resolver_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    from mailstack.base.config import parse_resolver

    if not value:
        return ""
    try:
        parse_resolver(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option(
    "--resolver",
    metavar="HOST[:PORT]",
    callback=_resolver_option,
    help="DNS resolver to ask (overrides [dns] resolver).",
)
@click.option(
    "--only",
    "only",
    multiple=True,
    metavar="GROUP",
    type=click.Choice(list(GROUPS)),
    help="Run only this group of checks (repeatable).",
)
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@click.option("--network", is_flag=True, help="Also run checks that need the Internet.")
@click.option(
    "--deliverability",
    is_flag=True,
    help="Only the deliverability report: blocklists, reverse DNS, alignment, policies.",
)
@click.option(
    "--port25-domain",
    default="gmail.com",
    show_default=True,
    metavar="DOMAIN",
    help="With --deliverability --network: whose MX the port 25 test connects to.",
)
def check(
    as_json: bool,
    resolver: str,
    only: tuple[str, ...],
    strict: bool,
    network: bool,
    deliverability: bool,
    port25_domain: str,
) -> None:
    """Validate the deployment: DNS, TLS, listeners, login, delivery, open relay."""
    from mailstack.base.errors import ProblemsFoundError
    from mailstack.checks import CheckOptions, run_checks
    from mailstack.checks.report import print_json, print_report

    with reporting(cli_state().debug):
        if deliverability:
            only = (*only, "deliverability")
        opts = CheckOptions(
            resolver=resolver,
            only=frozenset(only),
            strict=strict,
            network=network,
            port25_domain=port25_domain,
        )
        report = run_checks(cli_state().root, opts)
        if as_json:
            print_json(report)
        else:
            print_report(report)
        if not report.ok:
            bad = report.counts.get("fail", 0) + (report.counts.get("warn", 0) if strict else 0)
            raise ProblemsFoundError(
                f"{bad} check(s) did not pass",
                hint=None
                if as_json
                else "apply each fix shown above, then run `mailstack check` again",
            )


@main.command(context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(as_json: bool) -> None:
    """Is serve running (exit 0) or not (exit 1)? Listeners, workers, queue, certificate
    expiry, the last check and free disk."""
    from mailstack.output import print_json
    from mailstack.status import collect, render

    with reporting(cli_state().debug):
        root = cli_state().root
        if not StatePaths(root).config.exists():
            raise ConfigError(
                f"no mailstack deployment in {root} (no mailstack.toml)",
                hint="pass --dir or set MAILSTACK_DIR",
            )
        found = collect(root)
        if as_json:
            print_json(found.as_dict())
        else:
            for line in render(found):
                click.echo(line)
    sys.exit(0 if found.running else 1)


# -- deliver (LDA) ---------------------------------------------------------------------------------


@main.command(context_settings=CONTEXT)
@click.argument("address", required=False)
@click.option(
    "--from",
    "mail_from",
    default="",
    metavar="SENDER",
    help="Envelope sender, written as Return-Path.",
)
def deliver(address: str | None, mail_from: str) -> None:
    """Deliver the message on stdin to ADDRESS (an LDA: sysexits codes, 75 = try later)."""
    from mailstack.lda import run_lda

    status, problem = run_lda(
        cli_state().root, address, sys.stdin.buffer.read(), mail_from=mail_from
    )
    if problem:
        click.echo(f"error: {problem}", err=True)
    sys.exit(status)
