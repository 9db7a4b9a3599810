"""Login throttling shared by IMAP LOGIN/AUTHENTICATE and submission AUTH (issue 10, items 1,
2 and 4). Pure bookkeeping with an injectable clock, tested without sleeping; the SQLite file
that persists it and shows it to `mailstack throttle` is mailstack/base/throttle_db.py.

Keys, all on the *canonical* account name (the caller canonicalises exactly as the account
lookup does, so `Alice@Example.test.` and ` alice@example.test` share one budget) and the client
*network* (IPv4 /24, IPv6 /64: `mailstack.base.connections.network_of`, the blocks the
connection limits count too, as one host or site rarely owns only one address):
- (account, network): from `free_failures` failures on, each attempt waits `base_delay_s *
  2**n` (capped at `max_delay_s`); at `lockout_failures` this pair is refused. Only the
  attacker's network is refused: the real user elsewhere still logs in.
- network: the same curve from `network_free_failures`, refused at `network_lockout_failures`
  (one network guessing across many accounts: password spraying).
- account: refused from every network only at `account_ceiling` failures, far above what a
  person types (a guessing botnet); networks that logged in to the account successfully
  before keep getting in even then.
Counters end `window_s` after their last failure. An attempt counts from the moment it is
reserved (`reserve`), before its password is verified: parallel attempts cannot slip past the
limits (issue 10 item 4). `record_failure`, `record_success` or `cancel` ends a reservation.
Real clients log in in parallel too (Thunderbird opens up to 5 connections at start, an office
behind one address starts everyone's at 9:00): the first `parallel_free` attempts in flight
per (account, network), and `network_parallel_free` per network, are not counted, so only
parallelism beyond what clients do is treated as guessing; an attacker gains at most that many
unslowed guesses per window.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from mailstack.base.connections import network_of


class Kind(StrEnum):
    PAIR = "pair"  # (account, network)
    NETWORK = "network"
    ACCOUNT = "account"
    GOOD = "good"  # (account, network) that logged in successfully: `failures` unused


Key = tuple[Kind, str, str]  # (kind, account or "", network or "")


@dataclass(slots=True)
class Record:
    failures: int = 0
    last: float = 0.0  # wall-clock time of the last failure (or success, for GOOD)
    in_flight: int = 0  # reserved, not yet decided (never persisted)


@dataclass(frozen=True, slots=True)
class Refused:
    """The attempt is not verified at all: `reason` for the log, never for the client."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reservation:
    account: str
    network: str
    delay_s: float  # wait this long before verifying


# Called with each key whose record changed (None: the record is gone), to persist it.
OnChange = Callable[[Key, Record | None], None]
# Called by `prune` with the cut-offs (failures last before the first, successes before the
# second are forgotten), so the file forgets them too in two statements.
OnPrune = Callable[[float, float], None]
_GOOD_REFRESH_S = 3600.0  # a known network's success time is rewritten at most hourly


@dataclass(slots=True)
class LoginThrottle:
    free_failures: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0
    lockout_failures: int = 20  # per (account, network); the old global lockout's number
    network_free_failures: int = 10
    network_lockout_failures: int = 100
    account_ceiling: int = 1000
    window_s: float = 900.0  # 15 minutes, fail2ban's usual findtime
    good_s: float = 30 * 86400.0  # how long a successful network stays known for the ceiling
    parallel_free: int = 5  # attempts in flight per (account, network) not counted
    network_parallel_free: int = 50  # and per network (an office's clients starting at once)
    clock: Callable[[], float] = time.time  # wall clock: records outlive a restart
    on_change: OnChange | None = None
    on_prune: OnPrune | None = None
    records: dict[Key, Record] = field(default_factory=dict)

    # -- decisions -----------------------------------------------------------------------------
    def reserve(self, account: str, ip: str) -> Reservation | Refused:
        """Decide on one attempt now; if allowed, it counts as a failure until decided."""
        network = network_of(ip)
        pair = self._get((Kind.PAIR, account, network))
        net = self._get((Kind.NETWORK, "", network))
        acct = self._get((Kind.ACCOUNT, account, ""))
        n_pair = pair.failures + max(0, pair.in_flight - self.parallel_free)
        n_net = net.failures + max(0, net.in_flight - self.network_parallel_free)
        if n_pair >= self.lockout_failures:
            return Refused(f"{n_pair} failures for this account from {network}")
        if n_net >= self.network_lockout_failures:
            return Refused(f"{n_net} failures from {network}")
        if acct.failures + acct.in_flight >= self.account_ceiling and not self.is_known_good(
            account, network
        ):
            return Refused(f"{acct.failures} failures for this account from everywhere")
        delay = max(
            self._curve(n_pair, self.free_failures),
            self._curve(n_net, self.network_free_failures),
        )
        for rec in (pair, net, acct):
            rec.in_flight += 1
        return Reservation(account, network, delay)

    def _curve(self, failures: int, free: int) -> float:
        n = failures - free
        return 0.0 if n < 0 else min(self.max_delay_s, self.base_delay_s * 2 ** min(n, 64))

    def is_known_good(self, account: str, network: str) -> bool:
        rec = self.records.get((Kind.GOOD, account, network))
        return rec is not None and self.clock() - rec.last <= self.good_s

    # -- outcomes ------------------------------------------------------------------------------
    def record_failure(self, r: Reservation) -> None:
        now = self.clock()
        for key in self._keys(r):
            rec = self._get(key)
            rec.in_flight = max(0, rec.in_flight - 1)
            rec.failures += 1
            rec.last = now
            self._changed(key, rec)
        if len(self.records) > 100_000:  # bound memory under a wide attack
            self.prune()

    def record_success(self, r: Reservation) -> None:
        """The pair starts afresh; the network's and the account's failures stay (a spraying
        attacker must not reset them by logging in to an account of its own)."""
        pair, net, acct = self._keys(r)
        self._release(net)
        self._release(acct)
        rec = self.records.pop(pair, None)
        if rec is not None and rec.in_flight > 1:  # others from there are still in flight
            self.records[pair] = Record(0, 0.0, rec.in_flight - 1)
        if rec is not None and rec.failures:
            self._changed(pair, None)
        now, good = self.clock(), (Kind.GOOD, r.account, r.network)
        known = self.records.get(good)
        if known is None or now - known.last > _GOOD_REFRESH_S:  # not a write per login
            self.records[good] = Record(0, now)
            self._changed(good, self.records[good])

    def record_unanswered(self, r: Reservation) -> None:
        """Shed after the auth cache said no (mailstack/base/login.py): a guess that got an
        answer, though no verdict. It counts toward the account's ceiling only, which spares
        networks the account logged in from: a flood that fills the verifier pool then neither
        lets guesses test the cache for free nor locks out the user whose login it shed."""
        pair, net, acct = self._keys(r)
        self._release(pair)
        self._release(net)
        rec = self._get(acct)
        rec.in_flight = max(0, rec.in_flight - 1)
        rec.failures += 1
        rec.last = self.clock()
        self._changed(acct, rec)

    def cancel(self, r: Reservation) -> None:
        """Not verified after all (shed by a full verifier pool): nothing is counted."""
        for key in self._keys(r):
            self._release(key)

    # -- plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _keys(r: Reservation) -> tuple[Key, Key, Key]:
        return (
            (Kind.PAIR, r.account, r.network),
            (Kind.NETWORK, "", r.network),
            (Kind.ACCOUNT, r.account, ""),
        )

    def _get(self, key: Key) -> Record:
        rec = self.records.get(key)
        if rec is None:
            rec = self.records[key] = Record()
        elif rec.failures and self.clock() - rec.last > self.window_s:
            rec.failures = 0  # the window passed: a fresh budget (in-flight ones still count)
        return rec

    def _release(self, key: Key) -> None:
        rec = self.records.get(key)
        if rec is not None:
            rec.in_flight = max(0, rec.in_flight - 1)

    def _changed(self, key: Key, rec: Record | None) -> None:
        if self.on_change is not None:
            self.on_change(key, rec)

    def prune(self) -> None:
        """Forget records whose window passed and that nothing holds."""
        now = self.clock()
        for key, rec in list(self.records.items()):
            span = self.good_s if key[0] is Kind.GOOD else self.window_s
            if rec.in_flight == 0 and now - rec.last > span:
                del self.records[key]
        if self.on_prune is not None:
            self.on_prune(now - self.window_s, now - self.good_s)

    def replace_failures(self, rows: dict[Key, tuple[int, float]]) -> None:
        """Take persisted failures as the truth (after `mailstack throttle clear`), keeping
        the attempts in flight in this process."""
        for key, rec in list(self.records.items()):
            if key not in rows:
                if rec.in_flight:
                    rec.failures, rec.last = 0, 0.0
                else:
                    del self.records[key]
        for key, (failures, last) in rows.items():
            rec = self.records.setdefault(key, Record())
            rec.failures, rec.last = failures, last

    def delay_for(self, kind: Kind, failures: int) -> float:
        """The delay a record of `kind` with `failures` imposes (for `mailstack throttle list`)."""
        if kind is Kind.PAIR:
            return self._curve(failures, self.free_failures)
        if kind is Kind.NETWORK:
            return self._curve(failures, self.network_free_failures)
        return 0.0

    def is_refusing(self, kind: Kind, failures: int) -> bool:
        limit = {
            Kind.PAIR: self.lockout_failures,
            Kind.NETWORK: self.network_lockout_failures,
            Kind.ACCOUNT: self.account_ceiling,
        }.get(kind)
        return limit is not None and failures >= limit
