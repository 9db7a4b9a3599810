"""Connection limits shared by every listener (SMTP, submission, IMAP). Pure bookkeeping, used
from one event loop only.

A new connection is counted as *pre-auth*; a session that logs in moves to the authenticated
count (`authenticated`). The checks, in order, for a new connection:

1. per client address (`max_per_ip`);
2. per client network (`max_per_network`: IPv4 /24, IPv6 /64, the blocks one site or one
   customer line usually holds: Postfix's anvil and Dovecot count per address only, so one
   host with 250 addresses could take every slot);
3. the global cap, of which `reserved_for_authenticated` slots pre-auth connections never
   take: connections that have not logged in (yet) hold at most `max_total - reserved`,
   so idle unauthenticated ones cannot push the logged-in sessions out of room; a client
   that logs in frees its pre-auth place for the next one.

Every open connection counts against its address and network, logged in or not (one office
behind NAT: raise the limits); the pre-auth count is what the reserve is kept from.
Addresses are normalised first: `::ffff:192.0.2.1` (a v4 client on a dual-stack socket) is
`192.0.2.1`, so it shares its counts with the same client over IPv4.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections import Counter
from dataclasses import dataclass, field

IPV4_NETWORK_BITS = 24
IPV6_NETWORK_BITS = 64


class Refusal(enum.Enum):
    ADDRESS = "too many connections from your address"
    NETWORK = "too many connections from your network"
    TOTAL = "too many connections"


@functools.lru_cache(maxsize=4096)  # pure; asked several times per connection
def plain_ip(ip: str) -> str:
    """'::ffff:192.0.2.1' -> '192.0.2.1'; a scope id is dropped; not an address: as given."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


@functools.lru_cache(maxsize=4096)
def network_of(ip: str) -> str:
    """The /24 or /64 holding `ip` ('192.0.2.7' -> '192.0.2.0/24'); not an address: itself."""
    try:
        addr = ipaddress.ip_address(plain_ip(ip))
    except ValueError:
        return ip
    bits = IPV4_NETWORK_BITS if addr.version == 4 else IPV6_NETWORK_BITS
    return str(ipaddress.ip_network(f"{addr}/{bits}", strict=False))


@dataclass(slots=True)
class Ticket:
    """One admitted connection; hand it back to `release` exactly once."""

    ip: str
    network: str
    is_authenticated: bool = False
    is_released: bool = False


@dataclass(slots=True)
class ConnectionLimiter:
    max_total: int
    max_per_ip: int
    max_per_network: int = 0  # 0: no per-network limit
    reserved_for_authenticated: int = 0
    _per_ip: Counter[str] = field(default_factory=Counter)
    _per_network: Counter[str] = field(default_factory=Counter)
    _preauth: int = 0
    _authenticated: int = 0

    def admit(self, ip: str) -> Ticket | Refusal:
        """Count a new (pre-auth) connection from `ip`, or say which limit it is over."""
        ip = plain_ip(ip)
        network = network_of(ip)
        if self._per_ip[ip] >= self.max_per_ip:
            return Refusal.ADDRESS
        if self.max_per_network and self._per_network[network] >= self.max_per_network:
            return Refusal.NETWORK
        preauth_cap = self.max_total - max(0, self.reserved_for_authenticated)
        if self.total >= self.max_total or self._preauth >= preauth_cap:
            return Refusal.TOTAL
        self._per_ip[ip] += 1
        self._per_network[network] += 1
        self._preauth += 1
        return Ticket(ip, network)

    def authenticated(self, ticket: Ticket) -> None:
        """The connection logged in: it moves from the pre-auth count to the authenticated."""
        if ticket.is_authenticated or ticket.is_released:
            return
        ticket.is_authenticated = True
        self._preauth -= 1
        self._authenticated += 1

    def release(self, ticket: Ticket) -> None:
        if ticket.is_released:
            return
        ticket.is_released = True
        if ticket.is_authenticated:
            self._authenticated -= 1
        else:
            self._preauth -= 1
        for table, key in ((self._per_ip, ticket.ip), (self._per_network, ticket.network)):
            table[key] -= 1
            if table[key] <= 0:
                del table[key]

    @property
    def total(self) -> int:
        return self._preauth + self._authenticated

    @property
    def preauth(self) -> int:
        return self._preauth
