"""Values inside mailstack.toml: sizes, host names, "host:port" and resolver addresses.

Parsers and formatters with no knowledge of the config model, used by it
(`mailstack.base.config` re-exports them) and by the code that takes such values elsewhere.
"""

from __future__ import annotations

import functools
import ipaddress
import re

MAX_SMTP_WORKERS = 64
MTA_STS_MODES = ("enforce", "testing", "none")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)i?B?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: str | int) -> int:
    """'10G', '512M', '1024', 0 -> bytes. Raises ValueError on anything else."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 10G, 512M or a number of bytes")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"expected a size such as 10G, 512M or a number of bytes, got {value!r}")
    return int(m[1]) * _SIZE_UNITS[m[2].upper()]


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n and n % _SIZE_UNITS[unit] == 0:
            return f"{n // _SIZE_UNITS[unit]}{unit}"
    return str(n)


def is_fqdn(name: str) -> bool:
    """A fully-qualified host name: at least two labels of letters, digits and hyphens."""
    try:
        ascii_name = name.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        return False
    labels = ascii_name.split(".")
    return len(labels) >= 2 and len(ascii_name) <= 253 and all(_LABEL.match(x) for x in labels)


@functools.lru_cache(maxsize=4096)  # the idna codec costs tens of us; every lookup asks
def to_ascii_domain(name: str) -> str:
    """IDNA-encode a domain to its lower-case ASCII form ('bücher.de' -> 'xn--bcher-kva.de')."""
    return name.rstrip(".").encode("idna").decode("ascii").lower()


def parse_hostport(value: str) -> tuple[str, int]:
    """'0.0.0.0:25', '[::1]:143', 'localhost:2525' -> (host, port). Raises ValueError."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", value)
    if not m:
        raise ValueError(f'expected "host:port" (IPv6 as "[::1]:port"), got {value!r}')
    host = m[1] or m[3]
    port = int(m[2] or m[4])
    if m[1]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, port


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_resolver(value: str) -> tuple[str, int]:
    """'127.0.0.1', '127.0.0.1:5353', '[::1]:53' -> (address, port); the address must be an IP."""
    host, port = parse_hostport(value) if re.search(r":\d+$", value) else (value.strip("[]"), 53)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"resolver must be an IP address, got {host!r}") from None
    return host, port
