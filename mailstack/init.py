"""Create and extend a deployment: `mailstack init`, `domain add`, zone files, `dns`.

`init` builds the whole state directory in a temporary sibling and renames it into place, so
a failed init leaves nothing behind. `init --force` over an existing deployment regenerates
config, TLS, DKIM keys and zones (each file replaced atomically) and keeps the accounts, the
mail and the queue: no flag of ours ever deletes mail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import ipaddress
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mailstack import keys
from mailstack.base.config import Config, config_from_dict, field_docs, format_hostport, load_config
from mailstack.base.errors import ExistsError, HostError
from mailstack.base.fsutil import atomic_write, ensure_dir
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts
from mailstack.delivery import dkim_selectors
from mailstack.dnsrecords import DnsRecord, MailDns, MtaStsPolicy, Ports, group_by_zone, in_zone
from mailstack.render import render

SERVICES = ("smtp", "submission", "submissions", "imap", "imaps")
DEFAULT_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993}
# The web side listens only where InitOptions.ports names it (`init --https-port/--http-port`).
WEB_SERVICES = ("https", "http")


def default_selector(today: dt.date | None = None) -> str:
    """'msYYYYMM': a dated selector makes key rotation a matter of adding the next one."""
    return f"ms{(today or dt.date.today()):%Y%m}"


@dataclass(frozen=True, slots=True)
class InitOptions:
    domain: str
    hostname: str
    ipv4: str
    ipv6: str = ""
    listen_host: str = "0.0.0.0"  # noqa: S104 - a mail server listens publicly by design
    ports: tuple[tuple[str, int], ...] = tuple(DEFAULT_PORTS.items())
    dkim_selector: str = ""
    force: bool = False


def build_config(opts: InitOptions) -> Config:
    """The config `init` writes, validated by the same code that loads it (errors name keys)."""
    ports = dict(opts.ports)
    listen = {s: [format_hostport(opts.listen_host, ports[s])] for s in SERVICES}
    listen |= {s: [format_hostport(opts.listen_host, ports[s])] for s in WEB_SERVICES if s in ports}
    data = {
        "server": {
            "hostname": opts.hostname,
            "domains": [opts.domain],
            "ipv4": opts.ipv4,
            "ipv6": opts.ipv6,
        },
        "listen": listen,
        "dkim": {"selector": opts.dkim_selector or default_selector()},
    }
    return config_from_dict(data, source="init options")


def render_config(cfg: Config) -> str:
    sections = []
    names = ("smtp", "submission", "accounts", "imap", "auth", "dns", "dkim", "outbound", "log")
    for name in (*names, "web"):
        table = getattr(cfg, name)
        items = [(f, _toml(getattr(table, f))) for f in type(table).__dataclass_fields__]
        sections.append({"name": name, "items": items})
    return render(
        "config/mailstack.toml.j2",
        docs=field_docs(),
        server=cfg.server,
        listen={s: getattr(cfg.listen, s) for s in (*SERVICES, *WEB_SERVICES)},
        sections=sections,
    )


def _toml(value: object) -> str:
    import json  # TOML basic strings, arrays of them, ints and bools are JSON-compatible

    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def public_ports(cfg: Config) -> Ports:
    """The ports clients are told about (SRV): the first listener of each service, if any."""

    def first(service: str) -> int | None:
        listeners = cfg.listeners(service)
        return listeners[0][1] if listeners else None

    return Ports(first("submission"), first("submissions"), first("imap"), first("imaps"))


def hosted_domains(cfg: Config, accounts: Accounts | None) -> list[str]:
    extra = accounts.domains() if accounts else []
    return list(dict.fromkeys([*cfg.server.domains, *extra]))


def dns_records(cfg: Config, paths: StatePaths, accounts: Accounts | None) -> list[DnsRecord]:
    selector = cfg.dkim.selector
    domains: dict[str, str | None] = {}
    for d in hosted_domains(cfg, accounts):
        key_path = paths.dkim_key(selector, d)
        domains[d] = keys.dkim_public_record(key_path.read_bytes()) if key_path.exists() else None
    https = cfg.listeners("https")
    mail_dns = MailDns(
        cfg.server.hostname,
        cfg.server.ipv4,
        cfg.server.ipv6,
        public_ports(cfg),
        https_port=https[0][1] if https else None,
        mta_sts=mta_sts_policy(cfg) if https else None,
    )
    rotated = dkim_selectors.load(paths)  # `mailstack dkim rotate`: per-domain selectors
    for d in rotated.keys() & domains.keys():
        domains[d] = None  # its DKIM records follow, one per selector in use
    recs = mail_dns.all_records(domains, selector)
    for d, state in rotated.items():
        in_use = [
            (state.signing, "DKIM: the key that signs now"),
            (state.pending, "DKIM: the next key (`mailstack dkim rotate` waits for it)"),
            (state.previous, "DKIM: the old key, kept for `dkim status`'s grace period"),
        ]
        for sel, reason in in_use:
            if not sel or d not in domains or not paths.dkim_key(sel, d).exists():
                continue
            txt = keys.dkim_public_record(paths.dkim_key(sel, d).read_bytes())
            recs += [
                dataclasses.replace(r, reason=reason)
                for r in mail_dns.domain_records(d, sel, txt)
                if r.name.startswith(f"{sel}._domainkey.")
            ]
    return recs


def mta_sts_policy(cfg: Config) -> MtaStsPolicy:
    """The policy `serve` publishes at https://mta-sts.<domain>/.well-known/mta-sts.txt."""
    return MtaStsPolicy(cfg.web.mta_sts_mode, (cfg.server.hostname,), cfg.web.mta_sts_max_age)


def render_zone(zone: str, records: list[DnsRecord], cfg: Config, command: str) -> str:
    reverse = zone.endswith(".arpa.")
    mail_domain = next(
        (d for d in cfg.server.domains if in_zone(f"{d}.", zone)), cfg.server.domains[0]
    )
    serial = int(dt.datetime.now(dt.UTC).strftime("%Y%m%d00"))
    return render(
        "dns/zone.j2",
        zone=zone,
        hostname=cfg.server.hostname,
        records=records,
        reverse=reverse,
        soa_mail_domain=mail_domain,
        serial=serial,
        ttl=3600,
        command=command,
    )


def write_zones(
    cfg: Config, paths: StatePaths, accounts: Accounts | None, *, command: str = "init"
) -> list[Path]:
    ensure_dir(paths.dns_dir, mode=0o755)
    written = []
    for zone, records in group_by_zone(dns_records(cfg, paths, accounts)).items():
        path = paths.zone_file(zone)
        atomic_write(path, render_zone(zone, records, cfg, command), mode=0o644)
        written.append(path)
    return written


def tls_names(cfg: Config, domains: list[str]) -> list[str]:
    """SANs of the server certificate: the hostname and each domain's autoconfig name; when
    every listener is on one loopback address (the demo, a test setup), that address too, so a
    client on this machine can connect by address and still verify the certificate."""
    names = [cfg.server.hostname, *(f"autoconfig.{d}" for d in domains)]
    # The web side's names when it is served: autodiscover, the MTA-STS policy host, and the
    # domain itself (Thunderbird's second autoconfig URL is https://<domain>/.well-known/...).
    if cfg.listen.https:
        names += [f"{sub}{d}" for d in domains for sub in ("autodiscover.", "mta-sts.", "")]
    hosts = {host for service in SERVICES for host, _port in cfg.listeners(service)}
    if len(hosts) == 1 and _is_loopback(host := hosts.pop()):
        names.append(host)
    return names


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def write_tls(cfg: Config, paths: StatePaths, domains: list[str]) -> None:
    ensure_dir(paths.tls_dir, mode=0o755)
    material = keys.make_tls(cfg.server.hostname, tls_names(cfg, domains)[1:])
    keys.write_private(paths.ca_key, material.ca_key)
    keys.write_public(paths.ca_cert, material.ca_cert)
    keys.write_private(paths.tls_key, material.privkey)
    keys.write_public(paths.tls_cert, material.fullchain)


def write_dkim(paths: StatePaths, selector: str, domain: str, *, overwrite: bool) -> Path:
    ensure_dir(paths.dkim_dir, mode=0o700)
    path = paths.dkim_key(selector, domain)
    if overwrite or not path.exists():
        keys.write_private(path, keys.make_dkim_key())
    return path


def is_deployment(root: Path) -> bool:
    return StatePaths(root).config.exists()


def init_deployment(root: Path, opts: InitOptions) -> Config:
    """Create (or with force, regenerate) the deployment at `root`. Returns its config."""
    cfg = build_config(opts)
    if is_deployment(root) and not opts.force:
        raise ExistsError(
            f"{root} already holds a mailstack deployment",
            hint="pass --force to regenerate config, keys and zones (accounts and mail are kept)",
        )
    if root.exists() and not root.is_dir():
        raise HostError(f"{root} exists and is not a directory", hint="choose another --dir")
    if root.exists() and is_deployment(root):
        _populate(StatePaths(root), cfg, regenerate=True)
        return cfg
    # Fresh: build beside the target, then one rename makes it appear whole.
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.init-", dir=root.parent))
    try:
        _populate(StatePaths(staging), cfg, regenerate=True)
        os.chmod(staging, 0o755)  # noqa: S103 - the state dir is traversable; secrets inside are 0600/0700
        if root.exists():  # an empty (or non-deployment) directory, e.g. made by a package
            for child in staging.iterdir():
                target = root / child.name
                if target.exists():
                    raise ExistsError(
                        f"{target} already exists and is not ours",
                        hint="move it away or choose another --dir",
                    )
            for child in staging.iterdir():
                os.replace(child, root / child.name)
            staging.rmdir()
        else:
            os.replace(staging, root)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
        raise
    return cfg


def _populate(paths: StatePaths, cfg: Config, *, regenerate: bool) -> None:
    ensure_dir(paths.root, mode=0o755)
    accounts = Accounts(paths.users_db)
    try:
        os.chmod(paths.users_db, 0o600)
        for d in cfg.server.domains:
            accounts.add_domain(d, exist_ok=True)
        domains = hosted_domains(cfg, accounts)
        write_tls(cfg, paths, domains)
        for d in domains:
            write_dkim(paths, cfg.dkim.selector, d, overwrite=regenerate)
        write_zones(cfg, paths, accounts)
        ensure_dir(paths.mail_dir, mode=0o700)
        ensure_dir(paths.queue_dir, mode=0o700)
        # The config goes last: its presence is what marks a complete deployment.
        atomic_write(paths.config, render_config(cfg), mode=0o640)
    finally:
        accounts.close()


def add_domain(paths: StatePaths, domain: str) -> list[DnsRecord]:
    """`domain add`: host another domain (DKIM key and zone), live for a running serve."""
    cfg = load_config(paths.config)
    accounts = Accounts(paths.users_db)
    try:
        if domain.rstrip(".").lower() in cfg.server.domains:
            raise ExistsError(f"domain {domain} is already hosted here (it is in the config)")
        name = accounts.add_domain(domain)
        write_dkim(paths, cfg.dkim.selector, name, overwrite=False)
        write_zones(cfg, paths, accounts, command="domain add")
        return [r for r in dns_records(cfg, paths, accounts) if in_zone(r.name, f"{name}.")]
    finally:
        accounts.close()


def remove_domain(paths: StatePaths, domain: str) -> str:
    """`domain del`: stop hosting a domain that `domain add` added (one in the config's
    server.domains is the config's to drop). Its zone file goes; its DKIM key stays, so adding
    the domain back reuses the key whose record may still be published."""
    from mailstack.base.config import to_ascii_domain
    from mailstack.base.errors import MailstackError

    cfg = load_config(paths.config)
    name = to_ascii_domain(domain)
    if name in cfg.server.domains:
        raise MailstackError(
            f"domain {name} is in mailstack.toml (server.domains)",
            hint="remove it there, then restart serve",
        )
    accounts = Accounts(paths.users_db)
    try:
        accounts.delete_domain(name)
        paths.zone_file(name).unlink(missing_ok=True)
        write_zones(cfg, paths, accounts, command="domain del")  # the reverse zone's notes
    finally:
        accounts.close()
    return name
