"""Secrets and trust material that `[outbound]` names by path, read and checked in one place.

    read_route_credentials(path) -> {"relay.example.net:587": RouteCredentials(...)}
    check_ca_file(path)          -> raises ValueError unless it is a usable PEM bundle

The route credentials file keeps passwords out of `mailstack.toml` (which `config show`
prints and which is group-readable): a TOML file, one table per relay "host:port",

    ["relay.example.net:587"]
    username = "smtp-user"
    password = "..."

owned by the user `serve` runs as and not readable by group or others (like ssh's keys, a
looser mode is refused rather than used). Both are read again for each attempt that needs
them, so a changed password needs no restart.
"""

from __future__ import annotations

import os
import ssl
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class RouteCredentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never a password in a log line or a traceback
        return f"RouteCredentials(username={self.username!r}, password='***')"


def read_route_credentials(path: str) -> dict[str, RouteCredentials]:
    """Parse the credentials file; ValueError saying what is wrong (never its contents)."""
    file = Path(path)
    if not file.is_absolute():
        raise ValueError(f"{path!r} must be an absolute path")
    try:
        fd = os.open(file, os.O_RDONLY)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ValueError(
                f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 it"
            )
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML: {exc}") from None
    out: dict[str, RouteCredentials] = {}
    for relay, table in data.items():
        if not isinstance(table, dict):
            raise ValueError(f"{path}: {relay!r} must be a table with username and password")
        extra = set(table) - {"username", "password"}
        if extra:
            raise ValueError(f"{path}: [{relay!r}]: unknown key {sorted(extra)[0]!r}")
        values = [table.get(k) for k in ("username", "password")]
        if not all(isinstance(v, str) and v for v in values):
            raise ValueError(f"{path}: [{relay!r}]: username and password must be non-empty")
        out[relay] = RouteCredentials(str(values[0]), str(values[1]))
    return out


def check_ca_file(path: str) -> None:
    """ValueError unless `path` holds at least one PEM certificate that OpenSSL loads."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        ctx.load_verify_locations(cafile=path)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{path}: not a PEM certificate bundle: {exc}") from None
    if not ctx.get_ca_certs():
        raise ValueError(f"{path}: holds no CA certificate")
