"""The semantic checks of the config model beyond types: `validate(cfg)`.

`mailstack.base.config` builds the typed `Config` from TOML, then calls `validate`, which
raises `ConfigKeyError` naming the dotted key so the message can carry the file's line.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import TYPE_CHECKING

from mailstack.base.config_values import (
    MAX_SMTP_WORKERS,
    MTA_STS_MODES,
    is_fqdn,
    parse_hostport,
    parse_resolver,
    parse_size,
)
from mailstack.base.credentials import check_ca_file, read_route_credentials

if TYPE_CHECKING:
    from mailstack.base.config import Config, OutboundConfig


class ConfigKeyError(Exception):
    """A config key with a bad value: `key` dotted, `message` for the admin."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def validate(cfg: Config) -> None:
    """Semantic checks beyond types; raise ConfigKeyError naming the key."""
    if not is_fqdn(cfg.server.hostname):
        raise ConfigKeyError(
            "server.hostname",
            f"{cfg.server.hostname!r} is not a fully-qualified host name such as mail.example.com",
        )
    if not cfg.server.domains:
        raise ConfigKeyError("server.domains", "at least one mail domain is required")
    for i, d in enumerate(cfg.server.domains):
        if not is_fqdn(d):
            raise ConfigKeyError(f"server.domains[{i}]", f"{d!r} is not a valid domain name")
    for key, version in (("ipv4", 4), ("ipv6", 6)):
        value = getattr(cfg.server, key)
        if value:
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                ip = None
            if ip is None or ip.version != version:
                raise ConfigKeyError(f"server.{key}", f"{value!r} is not an IPv{version} address")
    for service in ("smtp", "submission", "submissions", "imap", "imaps", "https", "http"):
        for i, v in enumerate(getattr(cfg.listen, service)):
            try:
                parse_hostport(v)
            except ValueError as exc:
                raise ConfigKeyError(f"listen.{service}[{i}]", str(exc)) from None
    positive = {
        "smtp.max_message_size": cfg.smtp.max_message_size,
        "smtp.max_recipients": cfg.smtp.max_recipients,
        "smtp.max_connections": cfg.smtp.max_connections,
        "smtp.max_connections_per_ip": cfg.smtp.max_connections_per_ip,
        "smtp.max_errors": cfg.smtp.max_errors,
        "smtp.command_timeout_s": cfg.smtp.command_timeout_s,
        "smtp.data_timeout_s": cfg.smtp.data_timeout_s,
        "smtp.max_received_headers": cfg.smtp.max_received_headers,
        "imap.max_connections_per_ip": cfg.imap.max_connections_per_ip,
        "imap.max_connections_per_user": cfg.imap.max_connections_per_user,
        "imap.idle_timeout_s": cfg.imap.idle_timeout_s,
        "dns.timeout_s": cfg.dns.timeout_s,
        "auth.free_failures": cfg.auth.free_failures,
        "auth.max_delay_s": cfg.auth.max_delay_s,
        "auth.lockout_failures": cfg.auth.lockout_failures,
        "auth.network_lockout_failures": cfg.auth.network_lockout_failures,
        "auth.account_ceiling": cfg.auth.account_ceiling,
        "auth.window_s": cfg.auth.window_s,
        "auth.verify_queue": cfg.auth.verify_queue,
        "auth.verify_per_network": cfg.auth.verify_per_network,
        "web.mta_sts_max_age": cfg.web.mta_sts_max_age,
        "web.acme_renew_days": cfg.web.acme_renew_days,
        "web.acme_check_interval_s": cfg.web.acme_check_interval_s,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigKeyError(key, f"must be greater than 0, got {value}")
    for f in dataclasses.fields(cfg.submission):
        if getattr(cfg.submission, f.name) < 0:
            value = getattr(cfg.submission, f.name)
            raise ConfigKeyError(
                f"submission.{f.name}", f"must be 0 (no limit) or more, got {value}"
            )
    for key in ("cache_s", "verify_threads"):
        if getattr(cfg.auth, key) < 0:
            raise ConfigKeyError(f"auth.{key}", f"must be 0 or more, got {getattr(cfg.auth, key)}")
    if not -1 <= cfg.smtp.workers <= MAX_SMTP_WORKERS:
        raise ConfigKeyError(
            "smtp.workers",
            f"must be -1 (one per core), 0 (none) or up to {MAX_SMTP_WORKERS}, "
            f"got {cfg.smtp.workers}",
        )
    if not 1 <= cfg.outbound.mx_port <= 65535:
        raise ConfigKeyError("outbound.mx_port", f"port {cfg.outbound.mx_port} is out of range")
    for key, value in (("dns.resolver", cfg.dns.resolver), ("outbound.relay", cfg.outbound.relay)):
        if value:
            try:
                parse_resolver(value) if key == "dns.resolver" else parse_hostport(value)
            except ValueError as exc:
                raise ConfigKeyError(key, str(exc)) from None
    _validate_outbound(cfg.outbound)
    if cfg.dns.dnssec not in ("off", "trust-ad", "trust-all"):
        raise ConfigKeyError(
            "dns.dnssec", f'expected "off", "trust-ad" or "trust-all", got {cfg.dns.dnssec!r}'
        )
    try:
        parse_size(cfg.accounts.default_quota)
    except ValueError as exc:
        raise ConfigKeyError("accounts.default_quota", str(exc)) from None
    if cfg.log.level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigKeyError(
            "log.level", f"expected DEBUG, INFO, WARNING or ERROR, got {cfg.log.level!r}"
        )
    if cfg.web.mta_sts_max_age > 31557600:  # RFC 8461 §3.2: at most a year
        raise ConfigKeyError("web.mta_sts_max_age", "must be at most 31557600 (RFC 8461 §3.2)")
    if cfg.web.mta_sts_mode not in MTA_STS_MODES:
        raise ConfigKeyError(
            "web.mta_sts_mode", f"expected enforce, testing or none, got {cfg.web.mta_sts_mode!r}"
        )
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}", cfg.dkim.selector):
        raise ConfigKeyError("dkim.selector", f"{cfg.dkim.selector!r} is not a valid DNS label")
    for i, admin in enumerate(cfg.web.admins):
        local, at, domain = admin.rpartition("@")
        if not (local and at and is_fqdn(domain)):
            raise ConfigKeyError(f"web.admins[{i}]", f"{admin!r} is not an account address")
    for key in ("session_idle_s", "session_max_s"):
        if getattr(cfg.web, key) <= 0:
            raise ConfigKeyError(
                f"web.{key}", f"must be greater than 0, got {getattr(cfg.web, key)}"
            )


def _validate_outbound(out: OutboundConfig) -> None:
    """The transport-security keys of [outbound] (routes, credentials, CA file)."""
    if not 1 <= out.mta_sts_port <= 65535:
        raise ConfigKeyError("outbound.mta_sts_port", f"port {out.mta_sts_port} is out of range")
    for domain, target in out.routes.items():
        key = f'outbound.routes."{domain}"'
        if not is_fqdn(domain):
            raise ConfigKeyError(key, f"{domain!r} is not a domain name")
        try:
            _, port = parse_hostport(target)
        except ValueError as exc:
            raise ConfigKeyError(key, str(exc)) from None
        if port == 0:
            raise ConfigKeyError(key, "port 0 is not a relay's port")
    if out.ca_file:
        try:
            check_ca_file(out.ca_file)
        except ValueError as exc:
            raise ConfigKeyError("outbound.ca_file", str(exc)) from None
    if out.route_credentials:
        try:
            creds = read_route_credentials(out.route_credentials)
        except ValueError as exc:
            raise ConfigKeyError("outbound.route_credentials", str(exc)) from None
        for relay in creds:
            try:
                parse_hostport(relay)
            except ValueError as exc:
                raise ConfigKeyError("outbound.route_credentials", f"[{relay!r}]: {exc}") from None
