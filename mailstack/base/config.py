"""The configuration model: `DIR/mailstack.toml`, read once, validated, passed down.

Every key is a field of a frozen dataclass below with `metadata={"doc": ...}`; the config
template documents each one (tests/test_config.py checks that). Errors name the file, the dotted
key and, where it can be found, the line: `mailstack.toml:12: listen.smtp[0]: expected "host:port"`.
Nothing else in mailstack reads the config file or the environment for settings.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailstack.base.config_rules import ConfigKeyError, validate
from mailstack.base.config_values import (
    MAX_SMTP_WORKERS,
    MTA_STS_MODES,
    format_hostport,
    format_size,
    is_fqdn,
    parse_hostport,
    parse_resolver,
    parse_size,
    to_ascii_domain,
)
from mailstack.base.errors import ConfigError

# The values' parsers live in config_values.py; re-exported for the code that reads config.
__all__ = [
    "MAX_SMTP_WORKERS",
    "MTA_STS_MODES",
    "AccountsConfig",
    "AuthConfig",
    "Config",
    "DkimConfig",
    "DnsConfig",
    "ImapConfig",
    "ListenConfig",
    "LogConfig",
    "OutboundConfig",
    "ServerConfig",
    "SmtpConfig",
    "SubmissionConfig",
    "WebConfig",
    "config_from_dict",
    "config_to_dict",
    "doc",
    "field_docs",
    "format_hostport",
    "format_size",
    "is_fqdn",
    "load_config",
    "parse_hostport",
    "parse_resolver",
    "parse_size",
    "to_ascii_domain",
    "to_toml",
]


def doc(text: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its documentation (rendered into the config template)."""
    return field(metadata={"doc": text}, **kwargs)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = doc("The mail server's name: used in EHLO, greetings and the certificate.")
    domains: list[str] = doc("Mail domains hosted here (ASCII/IDNA form); the first is primary.")
    ipv4: str = doc(
        "Public IPv4 address (for DNS records, SPF and `check`); empty if none.", default=""
    )
    ipv6: str = doc(
        "Public IPv6 address (for DNS records, SPF and `check`); empty if none.", default=""
    )


@dataclass(frozen=True, slots=True)
class ListenConfig:
    smtp: list[str] = doc(
        'Inbound SMTP (MX) listeners, "host:port"; [] disables.',
        default_factory=lambda: ["0.0.0.0:25"],
    )
    submission: list[str] = doc(
        "Submission with STARTTLS + AUTH (RFC 6409).", default_factory=lambda: ["0.0.0.0:587"]
    )
    submissions: list[str] = doc(
        "Submission over implicit TLS + AUTH (RFC 8314).", default_factory=lambda: ["0.0.0.0:465"]
    )
    imap: list[str] = doc("IMAP with STARTTLS.", default_factory=lambda: ["0.0.0.0:143"])
    imaps: list[str] = doc("IMAP over implicit TLS.", default_factory=lambda: ["0.0.0.0:993"])
    https: list[str] = doc(
        "HTTPS: client autoconfiguration, the MTA-STS policy, status and self-service pages.",
        default_factory=list,
    )
    http: list[str] = doc(
        "Plain HTTP: ACME HTTP-01 challenges; everything else is redirected to https.",
        default_factory=list,
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    max_message_size: int = doc(
        "Largest message accepted, in bytes; advertised in EHLO SIZE.", default=52428800
    )
    max_recipients: int = doc(
        "Recipients per transaction; more get 452 4.5.3 (RFC 5321 "
        "§4.5.3.1.8 asks for at least 100).",
        default=100,
    )
    max_connections: int = doc("Concurrent SMTP connections in total.", default=200)
    max_connections_per_ip: int = doc(
        "Concurrent SMTP connections from one client address.", default=20
    )
    max_connections_per_network: int = doc(
        "Concurrent SMTP connections from one client network (IPv4 /24, IPv6 /64), "
        "checked before the global cap; 0: no limit.",
        default=50,
    )
    reserved_for_authenticated: int = doc(
        "Of max_connections on each submission listener, slots that only sessions which "
        "authenticated may hold (idle unauthenticated clients cannot take them).",
        default=20,
    )
    max_errors: int = doc("Protocol errors in one session before we disconnect.", default=10)
    command_timeout_s: int = doc(
        "Deadline in seconds for a whole command line, from our last reply to its CRLF "
        "(RFC 5321 §4.5.3.2.7: 5 min); a byte now and then does not extend it.",
        default=300,
    )
    data_timeout_s: int = doc(
        "Seconds a DATA body or BDAT chunk may take, plus one second per min_data_rate bytes "
        "received (RFC 5321 §4.5.3.2.6: 3 min per block).",
        default=180,
    )
    min_data_rate: int = doc(
        "Bytes per second a client must keep up during DATA/BDAT to earn more time than "
        "data_timeout_s (as Postfix's smtpd_min_data_rate).",
        default=500,
    )
    max_received_headers: int = doc(
        "Received: headers beyond which mail is a loop (554 5.4.6).", default=30
    )
    dnsbl: list[str] = doc(
        'DNS blocklists to consult for the client address, e.g. ["zen.spamhaus.org"]; [] disables.',
        default_factory=list,
    )
    reject_invalid_helo: bool = doc(
        "Refuse HELO/EHLO names that are neither a FQDN nor an address literal.", default=False
    )
    dmarc_reject_to_junk: bool = doc(
        "Deliver mail failing a DMARC p=reject policy to Junk "
        "instead of refusing it with 550 5.7.1.",
        default=False,
    )
    srs: bool = doc(
        "Rewrite the envelope sender of mail that aliases forward outside with SRS (so SPF "
        "passes at the next hop) and pass bounces to such addresses back.",
        default=True,
    )
    verify_inbound: bool = doc(
        "Check SPF, DKIM and DMARC of inbound mail and add Authentication-Results.", default=True
    )
    workers: int = doc(
        "Processes serving SMTP (port 25 and submission), so mail uses every core (the main "
        "process accepts, hands connections over and decides logins); -1: one per CPU core, "
        "0: none, SMTP in the main process.",
        default=-1,
    )


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    """Sending limits of authenticated users (smtp/sendlimits.py); 0 turns one off."""

    messages_per_hour: int = doc(
        "Messages one account may send per hour from one client network (IPv4 /24, IPv6 /64).",
        default=200,
    )
    recipients_per_hour: int = doc(
        "Recipients (all messages together) one account may send to per hour from one network.",
        default=1000,
    )
    recipients_per_message: int = doc(
        "Recipients of one submitted message; more get 550 5.7.1.", default=100
    )
    account_messages_per_hour: int = doc(
        "Messages one account may send per hour from all networks together; networks it has "
        "sent from for more than a day are exempt (a stolen password cannot lock them out).",
        default=1000,
    )
    network_messages_per_hour: int = doc(
        "Messages all accounts together may send per hour from one network; accounts that have "
        "sent from it for more than a day are exempt.",
        default=1000,
    )


@dataclass(frozen=True, slots=True)
class AccountsConfig:
    default_quota: str = doc(
        'Storage quota of a new account (bytes or K/M/G); "0" = unlimited.', default="10G"
    )


@dataclass(frozen=True, slots=True)
class ImapConfig:
    allow_plaintext_auth: bool = doc(
        "Allow LOGIN/AUTHENTICATE without TLS even off loopback (benchmarks, trusted proxies).",
        default=False,
    )
    max_connections: int = doc(
        "Concurrent IMAP connections in total (both listeners together).", default=1000
    )
    max_connections_per_ip: int = doc(
        "Concurrent IMAP connections from one client address.", default=50
    )
    max_connections_per_network: int = doc(
        "Concurrent IMAP connections from one client network (IPv4 /24, IPv6 /64), checked "
        "before the global cap; 0: no limit.",
        default=100,
    )
    reserved_for_authenticated: int = doc(
        "Of max_connections, slots that only logged-in sessions may hold.", default=200
    )
    max_connections_per_user: int = doc("Concurrent IMAP sessions of one account.", default=30)
    login_timeout_s: int = doc(
        "Deadline in seconds from connect to a successful login; bytes sent meanwhile do not "
        "extend it.",
        default=60,
    )
    idle_timeout_s: int = doc(
        "After login: autologout after this many seconds without a whole command "
        "(RFC 9051 §5.4: at least 30 minutes).",
        default=1800,
    )


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Logins on IMAP and submission (mailstack/base/login.py, mailstack/base/throttle.py)."""

    cache_s: int = doc(
        "Seconds a successful login is remembered so a reconnecting client skips the slow "
        "password hash (keyed by an HMAC of name and password, never the password; dropped "
        "when any account changes); 0 disables.",
        default=300,
    )
    free_failures: int = doc(
        "Failed logins for one account from one network (IPv4 /24, IPv6 /64) before each "
        "further attempt is delayed (1 s, doubling, at most max_delay_s).",
        default=3,
    )
    max_delay_s: int = doc("Longest delay before a throttled login is checked.", default=30)
    lockout_failures: int = doc(
        "Failed logins for one account from one network that refuse that pair until "
        "window_s passes (other networks still log in).",
        default=20,
    )
    network_lockout_failures: int = doc(
        "Failed logins from one network, any account, that refuse the network.", default=100
    )
    account_ceiling: int = doc(
        "Failed logins for one account from everywhere that refuse it everywhere except "
        "networks it logged in from before.",
        default=1000,
    )
    window_s: int = doc("Seconds after the last failure that a counter is forgotten.", default=900)
    verify_threads: int = doc(
        "Threads checking password hashes; 0: half the CPU cores (at least 1), so hashing "
        "never takes every core from mail delivery and IMAP.",
        default=0,
    )
    verify_queue: int = doc(
        "Password checks that may wait for a thread; more are answered 'try again later' "
        "before any hashing.",
        default=32,
    )
    verify_per_network: int = doc(
        "Password checks in progress for one client network at a time; more wait their turn.",
        default=2,
    )


@dataclass(frozen=True, slots=True)
class DnsConfig:
    resolver: str = doc(
        '"host[:port]" of the DNS resolver; empty = the system resolver.', default=""
    )
    timeout_s: float = doc("Seconds a single DNS lookup may take.", default=5.0)
    dnssec: str = doc(
        'Whom to believe about DNSSEC, for DANE (RFC 7672): "off" (no DANE); "trust-ad": the '
        "resolver validates and the path to it is trusted (e.g. unbound on loopback), its AD "
        'bit is believed; "trust-all": every answer counts as validated (test setups with an '
        "authoritative test server only, never in production).",
        default="off",
    )


@dataclass(frozen=True, slots=True)
class DkimConfig:
    selector: str = doc(
        "DKIM selector of the current signing key (dkim/<selector>.<domain>.key).",
        default="mailstack",
    )


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    relay: str = doc('Smarthost "host:port"; empty = deliver direct to MX.', default="")
    mx_port: int = doc("Port for every SMTP connection to an MX, probes included.", default=25)
    mta_sts_port: int = doc(
        "Port for MTA-STS policy fetches (https://mta-sts.<domain>:<port>/.well-known/"
        "mta-sts.txt, RFC 8461); 443 outside tests.",
        default=443,
    )
    ca_file: str = doc(
        "Extra trusted CA bundle (PEM) for verified outbound TLS (MTA-STS, routes) and "
        "MTA-STS policy fetches, added to the system CAs; empty: the system CAs only.",
        default="",
    )
    routes: dict[str, str] = doc(
        'Per recipient domain, "host:port" of a relay that takes its mail instead of the MX, '
        'e.g. {"outlook.com" = "relay.example.net:587"}; STARTTLS with a verified '
        "certificate is required there.",
        default_factory=dict,
    )
    route_credentials: str = doc(
        "Absolute path of a TOML file (mode 0600) with AUTH credentials per route relay: "
        '["relay.example.net:587"] username = "..." password = "..."; empty: no AUTH.',
        default="",
    )


@dataclass(frozen=True, slots=True)
class WebConfig:
    mta_sts_mode: str = doc(
        "MTA-STS policy mode served for every hosted domain: enforce, testing or none "
        "(RFC 8461 section 5).",
        default="testing",
    )
    mta_sts_max_age: int = doc(
        "Seconds senders may cache the MTA-STS policy (RFC 8461 section 3.2).", default=604800
    )
    acme_renew_days: int = doc(
        "`serve` renews an ACME certificate this many days before it expires.", default=30
    )
    acme_check_interval_s: float = doc(
        "Seconds between `serve`'s looks at the ACME certificate's expiry.", default=43200.0
    )
    # The status and self-service pages (mailstack/web/pages.py).
    admins: list[str] = doc(
        "Accounts that see the admin page (status, users, aliases, domains) after logging in "
        'with their own password, e.g. ["postmaster@example.com"]; everyone else sees only '
        "their own account.",
        default_factory=list,
    )
    session_idle_s: int = doc(
        "Seconds without a request after which a web login ends.", default=1800
    )
    session_max_s: int = doc("Seconds after which a web login ends in any case.", default=43200)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str = doc("DEBUG, INFO, WARNING or ERROR.", default="INFO")
    json: bool = doc("One JSON object per log line instead of text.", default=False)


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = doc("This server and the domains it hosts.")
    listen: ListenConfig = doc("Listening sockets.", default_factory=ListenConfig)
    smtp: SmtpConfig = doc("SMTP receiving.", default_factory=SmtpConfig)
    submission: SubmissionConfig = doc(
        "Sending limits on submission.", default_factory=SubmissionConfig
    )
    accounts: AccountsConfig = doc("Accounts.", default_factory=AccountsConfig)
    imap: ImapConfig = doc("IMAP.", default_factory=ImapConfig)
    auth: AuthConfig = doc("Logins (IMAP and submission).", default_factory=AuthConfig)
    dns: DnsConfig = doc("DNS lookups.", default_factory=DnsConfig)
    dkim: DkimConfig = doc("DKIM signing.", default_factory=DkimConfig)
    outbound: OutboundConfig = doc("Outbound delivery.", default_factory=OutboundConfig)
    log: LogConfig = doc("Logging.", default_factory=LogConfig)
    web: WebConfig = doc("The HTTPS side: MTA-STS policy, ACME renewal.", default_factory=WebConfig)

    @property
    def default_quota_bytes(self) -> int:
        return parse_size(self.accounts.default_quota)

    def listeners(self, service: str) -> list[tuple[str, int]]:
        return [parse_hostport(v) for v in getattr(self.listen, service)]


# -- loading -----------------------------------------------------------------------------------

_HINTS = typing.get_type_hints


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s"
    if origin is dict:
        return f"a table of {_type_name(typing.get_args(tp)[1])}s"
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; raise ValueError naming what was expected."""
    origin = typing.get_origin(tp)
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"expected {_type_name(tp)}, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce_item(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:  # an inline table of string keys, e.g. [outbound] routes
        if not isinstance(value, dict):
            raise ValueError(f"expected {_type_name(tp)}, got {type(value).__name__}")
        item = typing.get_args(tp)[1]
        return {k: _coerce_item(v, item, f'{key}."{k}"') for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"expected a table [{key}], got {type(value).__name__}")
        return _build(tp, value, key)
    return _coerce_item(value, tp, key)


def _coerce_item(value: Any, tp: Any, key: str) -> Any:
    ok = (
        (tp is bool and isinstance(value, bool))
        or (tp is int and isinstance(value, int) and not isinstance(value, bool))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigKeyError(
            key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}"
        )
    return float(value) if tp is float else value


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    hints = _HINTS(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            dotted = f"{prefix}.{name}" if prefix else name
            raise ConfigKeyError(dotted, f"unknown key (known here: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if f.name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigKeyError(dotted, "required key is missing")
            continue
        try:
            kwargs[f.name] = _coerce(table[f.name], hints[f.name], dotted)
        except ValueError as exc:
            raise ConfigKeyError(dotted, str(exc)) from None
    return cls(**kwargs)


def _line_of(text: str, key: str) -> int | None:
    """Best-effort line number of a dotted key in TOML text (tomllib does not report them)."""
    parts = re.sub(r"\[\d+\]$", "", key).split(".")
    section, name = ".".join(parts[:-1]), parts[-1]
    current = ""
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if m := re.match(r"^\[\s*([^\]]+?)\s*\]", stripped):
            current = m[1]
            if not name and current == section:
                return n
            if current == key:
                return n
            continue
        if current == section and re.match(rf"^{re.escape(name)}\s*=", stripped):
            return n
    return None


def config_from_dict(
    data: dict[str, Any], *, source: str = "mailstack.toml", text: str = ""
) -> Config:
    try:
        cfg: Config = _build(Config, data, "")
        validate(cfg)
    except ConfigKeyError as exc:
        line = _line_of(text, exc.key) if text else None
        where = f"{source}:{line}" if line else source
        raise ConfigError(
            f"{where}: {exc.key}: {exc.message}",
            hint="fix the key, then run `mailstack config validate`",
        ) from None
    # Domains are kept in their ASCII (IDNA) form everywhere.
    server = dataclasses.replace(
        cfg.server,
        hostname=to_ascii_domain(cfg.server.hostname),
        domains=[to_ascii_domain(d) for d in cfg.server.domains],
    )
    return dataclasses.replace(cfg, server=server)


def load_config(path: Path) -> Config:
    """Read and validate a config file. Raises ConfigError naming file, line and key."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file", hint="create a deployment with `mailstack init` or pass --dir"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return config_from_dict(data, source=str(path), text=text)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def field_docs(cls: Any = Config, prefix: str = "") -> dict[str, str]:
    """Dotted key -> documentation, for every leaf key of the model."""
    out: dict[str, str] = {}
    hints = _HINTS(cls)
    for f in dataclasses.fields(cls):
        dotted = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_docs(hints[f.name], dotted))
        else:
            out[dotted] = f.metadata["doc"]
    return out


def to_toml(cfg: Config) -> str:
    """Serialise the effective config as TOML (for `config show`)."""
    lines: list[str] = []
    for section, table in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    s = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
