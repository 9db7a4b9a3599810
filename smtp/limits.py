"""Connection limits of the SMTP listeners: `mailstack.base.connections` with SMTP replies.

RFC 5321 §4.5.3.2 leaves the numbers to us; the defaults in `SmtpConfig` follow Postfix's
`smtpd_client_connection_count_limit` spirit, plus a per-network limit (IPv4 /24, IPv6 /64)
checked before the global cap, so a few hosts cannot take every slot. On submission, only
sessions that authenticated may use the last `reserved_for_authenticated` slots.
A refusal is `421 4.7.0` before the greeting (RFC 5321 §3.1 allows 421 in place of 220).
"""

from __future__ import annotations

from mailstack.smtp import replies
from mailstack.smtp.replies import Reply

from mailstack.base.config import SmtpConfig
from mailstack.base.connections import ConnectionLimiter as _Counts
from mailstack.base.connections import Refusal, Ticket, plain_ip

TOO_MANY_CONNECTIONS_FROM_NETWORK = Reply(
    421, "4.7.0", "Too many connections from your network, try again later"
)
_REPLIES = {
    Refusal.TOTAL: replies.TOO_MANY_CONNECTIONS,
    Refusal.ADDRESS: replies.TOO_MANY_CONNECTIONS_FROM_IP,
    Refusal.NETWORK: TOO_MANY_CONNECTIONS_FROM_NETWORK,
}

__all__ = ["ConnectionLimiter", "Ticket", "smtp_limiter"]


class ConnectionLimiter:
    """One listener's counts (the MX's are the main process's when workers serve it)."""

    def __init__(
        self,
        max_total: int,
        max_per_ip: int,
        max_per_network: int = 0,
        reserved_for_authenticated: int = 0,
    ) -> None:
        self._counts = _Counts(max_total, max_per_ip, max_per_network, reserved_for_authenticated)
        self._by_ip: dict[str, list[Ticket]] = {}  # for admit/release by address

    def admit_connection(self, ip: str) -> Ticket | Reply:
        """Count a new connection, or the 421 reply that refuses it."""
        result = self._counts.admit(ip)
        return _REPLIES[result] if isinstance(result, Refusal) else result

    def authenticated(self, ticket: Ticket) -> None:
        self._counts.authenticated(ticket)

    def release_connection(self, ticket: Ticket) -> None:
        self._counts.release(ticket)

    # The MX's hand-off to worker processes counts by address (no login happens on port 25).
    def admit(self, ip: str) -> Reply | None:
        result = self.admit_connection(ip)
        if isinstance(result, Reply):
            return result
        self._by_ip.setdefault(result.ip, []).append(result)
        return None

    def release(self, ip: str) -> None:
        tickets = self._by_ip.get(plain_ip(ip))
        if tickets:
            self._counts.release(tickets.pop())
            if not tickets:
                del self._by_ip[plain_ip(ip)]

    @property
    def total(self) -> int:
        return self._counts.total


def smtp_limiter(config: SmtpConfig, *, authenticated_reserve: bool = False) -> ConnectionLimiter:
    """A listener's limiter from `[smtp]`; the reserve applies where clients log in."""
    return ConnectionLimiter(
        config.max_connections,
        config.max_connections_per_ip,
        config.max_connections_per_network,
        config.reserved_for_authenticated if authenticated_reserve else 0,
    )
