"""Connection limits of the MX: in total and per client address (RFC 5321 §4.5.3.2 leaves the
numbers to us; the defaults in `SmtpConfig` follow Postfix's `smtpd_client_connection_count_limit`
spirit). Pure bookkeeping, used from the event loop only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from mailstack.smtp import replies
from mailstack.smtp.replies import Reply


@dataclass(slots=True)
class ConnectionLimiter:
    max_total: int
    max_per_ip: int
    _per_ip: Counter[str] = field(default_factory=Counter)
    _total: int = 0

    def admit(self, ip: str) -> Reply | None:
        """Count a new connection; a 421 reply (and no count) when it is over a limit."""
        if self._total >= self.max_total:
            return replies.TOO_MANY_CONNECTIONS
        if self._per_ip[ip] >= self.max_per_ip:
            return replies.TOO_MANY_CONNECTIONS_FROM_IP
        self._total += 1
        self._per_ip[ip] += 1
        return None

    def release(self, ip: str) -> None:
        self._total -= 1
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]

    @property
    def total(self) -> int:
        return self._total
