"""`mailstack dkim`: which selector signs each domain, and key rotation that never signs with
a key receivers cannot find yet (delivery/dkim_selectors.py holds the state and the steps)."""

from __future__ import annotations

import datetime as dt
import re
import time
from typing import TYPE_CHECKING

import click

from mailstack.clikit import CONTEXT, cli_state, deployment, reporting

if TYPE_CHECKING:
    from mailstack.base.config import Config

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
WAIT_STEP_S = 5.0


@click.group(context_settings=CONTEXT)
def dkim() -> None:
    """DKIM signing keys: which selector signs, rotation to a new key."""


def _utc(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _next_selector(taken: set[str]) -> str:
    """'msYYYYMM' as `init` names keys, then 'msYYYYMMb', 'c', ... if that one is taken."""
    base = f"ms{dt.datetime.now(dt.UTC):%Y%m}"
    for suffix in ["", *"bcdefghijklmnopqrstuvwxyz"]:
        name: str = base + suffix
        if name not in taken:
            return name
    raise click.UsageError("no free selector name this month: pass --selector")


def _p_value(txt: str) -> str:
    """The p= tag of a DKIM key record, whitespace removed (RFC 6376 §3.6.1)."""
    for tag in txt.split(";"):
        name, _, value = tag.partition("=")
        if name.strip() == "p":
            return re.sub(r"\s+", "", value)
    return ""


def published_key(config: Config, resolver: str, name: str) -> str | None:
    """The p= of the DKIM record at `name` as the resolver sees it; None if there is none."""
    import dataclasses

    import dns.exception
    import dns.resolver

    from mailstack.base.dns import make_resolver

    cfg = dataclasses.replace(config.dns, resolver=resolver) if resolver else config.dns
    try:
        answer = make_resolver(cfg).resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        from mailstack.base.errors import HostError

        raise HostError(f"DNS lookup of {name} failed: {exc}") from None
    for rdata in answer:
        text = b"".join(rdata.strings).decode("utf-8", "replace")
        if "p=" in text:
            return _p_value(text)
    return None


@dkim.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per domain.")
def dkim_status(as_json: bool) -> None:
    """Show which selector signs each domain, a rotation in progress and a key to retire."""
    import dataclasses

    from mailstack.delivery import dkim_selectors
    from mailstack.init import hosted_domains
    from mailstack.output import print_json, print_table

    with reporting(cli_state().debug), deployment() as dep:
        states = {
            d: dkim_selectors.current(dep.paths, dep.config.dkim.selector, d)
            for d in hosted_domains(dep.config, dep.accounts)
        }
        if as_json:
            print_json([{"domain": d, **dataclasses.asdict(k)} for d, k in states.items()])
            return
        print_table(
            ["domain", "signs", "pending (not yet published)", "previous: keep published until"],
            [
                [
                    d,
                    k.signing,
                    k.pending or "",
                    f"{k.previous} ({_utc(k.retire_after or 0)})" if k.previous else "",
                ]
                for d, k in states.items()
            ],
            title="DKIM selectors",
        )


@dkim.command("rotate", context_settings=CONTEXT)
@click.argument("domain")
@click.option("--selector", default="", help="Name of the new selector (default msYYYYMM).")
@click.option("--resolver", default="", help="DNS resolver to ask (overrides [dns] resolver).")
@click.option(
    "--grace-days",
    type=click.IntRange(min=1),
    default=7,
    show_default=True,
    help="Days the old key must stay published after the switch.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.IntRange(min=0),
    default=0,
    help="Seconds to keep checking DNS for the new record before giving up.",
)
def dkim_rotate(domain: str, selector: str, resolver: str, grace_days: int, wait_s: int) -> None:
    """Rotate DOMAIN's DKIM key: make the next selector's key and print its record; once DNS
    shows that record (this run or a later one), switch signing to it.

    Exit 0 when the new key signs; 1 while the record is not visible yet (signing stays with
    the old key: publish the record and run the command again).
    """
    from mailstack import keys
    from mailstack.base.config import parse_resolver, to_ascii_domain
    from mailstack.base.errors import MailstackError, NotFoundError, ProblemsFoundError
    from mailstack.delivery import dkim_selectors
    from mailstack.dnsrecords import txt_rdata
    from mailstack.init import hosted_domains

    with reporting(cli_state().debug), deployment() as dep:
        if resolver:
            try:
                parse_resolver(resolver)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint="--resolver") from None
        if selector and not _LABEL.fullmatch(selector):
            raise click.BadParameter(f"{selector!r} is not a DNS label", param_hint="--selector")
        try:
            domain = to_ascii_domain(domain)
        except UnicodeError:
            raise click.BadParameter(f"{domain!r} is not a domain name") from None
        if domain not in hosted_domains(dep.config, dep.accounts):
            raise NotFoundError(
                f"{domain} is not hosted here", hint=f"`mailstack domain add {domain}` first"
            )
        default = dep.config.dkim.selector
        state = dkim_selectors.current(dep.paths, default, domain)
        if state.pending is not None:
            if selector and selector != state.pending:
                raise MailstackError(
                    f"a rotation of {domain} to {state.pending!r} is in progress",
                    hint=f"publish {state.pending}._domainkey.{domain} and run this without "
                    "--selector, or finish it first",
                )
            new = state.pending
            click.echo(f"Rotation of {domain} to selector {new} in progress.")
        else:
            taken = {p.name.split(".", 1)[0] for p in dep.paths.dkim_dir.glob(f"*.{domain}.key")}
            new = selector or _next_selector(taken | {state.signing})
            path = dep.paths.dkim_key(new, domain)
            if path.exists() or new == state.signing:
                raise MailstackError(f"selector {new!r} is already in use for {domain} ({path})")
            keys.write_private(path, keys.make_dkim_key())
            dkim_selectors.begin(dep.paths, default, domain, new)
            click.echo(f"Created {path} for selector {new}; {state.signing} still signs.")
        record = keys.dkim_public_record(dep.paths.dkim_key(new, domain).read_bytes())
        name = f"{new}._domainkey.{domain}"
        click.echo(f"Publish:\n  {name}. IN TXT {txt_rdata(record)}")
        want = _p_value(record)
        deadline = time.monotonic() + wait_s
        seen = published_key(dep.config, resolver, name)
        while seen != want and time.monotonic() < deadline:
            time.sleep(WAIT_STEP_S)
            seen = published_key(dep.config, resolver, name)
        if seen != want:
            what = "no DKIM record" if seen is None else "a different key"
            raise ProblemsFoundError(
                f"{name} shows {what} yet; {state.signing} keeps signing for {domain}",
                hint=f"publish the record above, then run `mailstack dkim rotate {domain}` again",
            )
        done = dkim_selectors.switch(dep.paths, default, domain, time.time(), grace_days * 86400.0)
        assert done.retire_after is not None  # noqa: S101 - switch always sets it
        click.echo(f"{name} is published: selector {new} now signs mail for {domain}.")
        click.echo(
            f"Keep {state.signing}._domainkey.{domain} published until "
            f"{_utc(done.retire_after)} ({grace_days} days: mail signed with it is still "
            f"being verified); then remove it and {dep.paths.dkim_key(state.signing, domain)}."
        )
