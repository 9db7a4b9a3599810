"""Login throttling shared by IMAP LOGIN/AUTHENTICATE and submission AUTH.

Each failure from a client address, and each failure against an account, adds to a counter
that decays over `window_s`. From the `free_failures`-th failure on, the next attempt is delayed
by `base_delay_s * 2**n` (capped at `max_delay_s`); at `lockout_failures` the address (or the
account, from any address) is refused outright until the window passes. Per-account lockout
stops distributed guessing; per-address delay stops one noisy client. Pure bookkeeping with an
injectable clock, so it is tested without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(slots=True)
class _Record:
    failures: int = 0
    last: float = 0.0


@dataclass(slots=True)
class LoginThrottle:
    free_failures: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    lockout_failures: int = 20
    window_s: float = 900.0  # 15 minutes, fail2ban's usual findtime
    clock: Callable[[], float] = time.monotonic
    _by_ip: dict[str, _Record] = field(default_factory=dict)
    _by_user: dict[str, _Record] = field(default_factory=dict)

    def _get(self, table: dict[str, _Record], key: str) -> _Record:
        now = self.clock()
        rec = table.get(key)
        if rec is None or now - rec.last > self.window_s:
            rec = table[key] = _Record(0, now)
        return rec

    def is_locked_out(self, ip: str, user: str) -> bool:
        """True while the address or the account has too many recent failures."""
        return (
            self._get(self._by_ip, ip).failures >= self.lockout_failures
            or self._get(self._by_user, user.lower()).failures >= self.lockout_failures
        )

    def delay_s(self, ip: str) -> float:
        """How long to wait before answering this address's next login attempt."""
        n = self._get(self._by_ip, ip).failures - self.free_failures
        return 0.0 if n < 0 else min(self.max_delay_s, self.base_delay_s * 2**n)

    def record_failure(self, ip: str, user: str) -> None:
        now = self.clock()
        for table, key in ((self._by_ip, ip), (self._by_user, user.lower())):
            rec = self._get(table, key)
            rec.failures += 1
            rec.last = now
        if len(self._by_ip) > 100_000:  # bound memory under a wide attack: drop stale entries
            self._prune(now)

    def record_success(self, ip: str, user: str) -> None:
        self._by_ip.pop(ip, None)
        self._by_user.pop(user.lower(), None)

    def _prune(self, now: float) -> None:
        for table in (self._by_ip, self._by_user):
            for key in [k for k, r in table.items() if now - r.last > self.window_s]:
                del table[key]
