"""`mailstack config` and `mailstack tls`: the configuration file and the certificate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from mailstack.base.config import load_config, to_toml
from mailstack.base.errors import MailstackError
from mailstack.clikit import CONTEXT, cli_state, reporting

if TYPE_CHECKING:
    pass


# -- config ----------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def config() -> None:
    """Validate and show the configuration."""


@config.command("validate", context_settings=CONTEXT)
@click.argument("file", required=False, type=click.Path(path_type=Path))
def config_validate(file: Path | None) -> None:
    """Check a config file (default: the deployment's); exit 1 naming the key at fault."""
    with reporting(cli_state().debug):
        path = file or cli_state().paths.config
        load_config(path)
        click.echo(f"{path}: ok")


@config.command("show", context_settings=CONTEXT)
def config_show() -> None:
    """Print the effective configuration, defaults included."""
    with reporting(cli_state().debug):
        click.echo(to_toml(load_config(cli_state().paths.config)), nl=False)


# -- TLS -------------------------------------------------------------------------------------------


@click.group(context_settings=CONTEXT)
def tls() -> None:
    """Inspect or replace the server certificate."""


@tls.command("status", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True)
def tls_status(as_json: bool) -> None:
    """Show the certificate in use: names, issuer, expiry."""
    from mailstack.keys import inspect_tls
    from mailstack.output import print_json

    with reporting(cli_state().debug):
        paths = cli_state().paths
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

    with reporting(cli_state().debug):
        paths = cli_state().paths
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


@tls.command("acme", context_settings=CONTEXT)
@click.option("--email", required=True, help="Contact address for the ACME account (expiry mail).")
@click.option(
    "--directory",
    default="https://acme-v02.api.letsencrypt.org/directory",
    show_default=True,
    help="The ACME CA's directory URL.",
)
@click.option(
    "--ca-bundle",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="CA bundle to trust for the directory (a private or test CA).",
)
@click.option(
    "--challenge",
    type=click.Choice(["http-01", "tls-alpn-01"]),
    help="How the CA checks the names: http-01 on listen.http, or tls-alpn-01 on listen.https "
    "(default: http-01 when listen.http is set, else tls-alpn-01). Renewals use the same.",
)
def tls_acme(email: str, directory: str, ca_bundle: Path | None, challenge: str | None) -> None:
    """Get a certificate from an ACME CA (HTTP-01 or TLS-ALPN-01); serve renews it."""
    import datetime as dt

    from mailstack.deployment import Deployment
    from mailstack.init import hosted_domains
    from mailstack.web.acme import acme_command

    with reporting(cli_state().debug):
        dep = Deployment.open(cli_state().root)
        try:
            issued = acme_command(
                dep.paths,
                dep.config,
                hosted_domains(dep.config, dep.accounts),
                email=email,
                directory=directory,
                ca_bundle=str(ca_bundle.absolute()) if ca_bundle else "",
                challenge=challenge or "",
            )
        finally:
            dep.close()
        when = dt.datetime.fromtimestamp(issued.expires, dt.UTC)
        click.echo(f"certificate for {', '.join(issued.names)} (expires {when:%Y-%m-%d})")
        if issued.reloaded_pid is not None:
            click.echo(f"serve (pid {issued.reloaded_pid}) reloads it now")
        days = dep.config.web.acme_renew_days
        click.echo(f"serve renews it {days} days before it expires")
