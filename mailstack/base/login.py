"""The one login path: IMAP LOGIN and AUTHENTICATE PLAIN, SMTP AUTH PLAIN and LOGIN all call
`Logins.login(name, password, peer_ip)`.

In this order, each step for a reason:
1. Canonicalise the name exactly as the account lookup does (`normalize_address`: spaces,
   trailing dot, case, IDNA), so that every spelling of an account shares one throttle budget
   (issue 10 item 1). A name that is no address is throttled on its folded string.
2. Reserve a throttle slot (mailstack/base/throttle.py): refused attempts are never verified,
   and an attempt counts before its verification, so parallel guesses cannot pass the limits.
3. Wait the throttle's delay (on the loop: costs nothing but a timer).
4. The auth cache: a success within `auth.cache_s` for the same name and password answers
   without hashing. Its key is an HMAC of name and password under a random per-process key, so
   neither the cache nor a memory dump holds a password or a hash that can be tested offline
   faster than argon2. Failures are never cached: every wrong guess costs a verification and
   counts in the throttle. Every entry goes when users.sqlite3 changes (`PRAGMA data_version`:
   `user passwd`, `user del`, disabling), and a success whose verification overlapped a change
   is not cached.
5. Verify in a bounded pool of our own threads (`auth.verify_threads`, by default half the
   cores), never the loop's default executor that the store uses: a flood of bad logins then
   cannot starve delivery and IMAP (issue 10 item 6). At most `auth.verify_per_network` checks
   per client network run or wait in the pool at once; a few more wait on the loop; beyond
   that, and when `auth.verify_queue` checks already wait, the attempt is shed before any
   hashing ("try again later") and not counted as a failure.
6. Record the outcome in the throttle and log one line (never the password).

SCRAM-SHA-256 (`ScramLogin`, IMAP AUTHENTICATE and SMTP AUTH) takes steps 1, 2, 3 and 6 the
same way, through the same two methods (`_reserve`, `_conclude`): the reservation is taken at
the client's first message and ended by its proof. Steps 4 and 5 do not apply: every proof
answers a fresh nonce (nothing to cache), and checking one is two HMACs (the client did the
expensive PBKDF2), so it needs no verifier pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mailstack.base import scram
from mailstack.base.config import AuthConfig
from mailstack.base.connections import network_of
from mailstack.base.errors import UsageError
from mailstack.base.throttle import LoginThrottle, Refused, Reservation
from mailstack.base.throttle_db import ThrottleDb
from mailstack.base.users import Accounts, normalize_address

_log = logging.getLogger(__name__)

MAX_NAME_CHARS = 320  # RFC 5321 §4.5.3.1: 64 local + @ + 255 domain; longer names are hashed
WAITING_PER_NETWORK = 8  # attempts from one network waiting for its verification slots
CACHE_MAX = 10_000  # cached successes; a full cache is emptied (only costs rehashing)


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"  # wrong name or password, or a disabled account
    THROTTLED = "throttled"  # refused by the throttle, not verified
    BUSY = "busy"  # shed by the verifier pool, not verified


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: Outcome
    address: str | None = None  # the canonical address, when OK


def canonical_name(name: str) -> str:
    """The throttle's and the lookup's name for what a client typed: `normalize_address`'s
    answer, or for a name that is no address its stripped, folded string."""
    try:
        canonical = normalize_address(name)
    except UsageError:
        canonical = name.strip().rstrip(".").casefold()
    if len(canonical) > MAX_NAME_CHARS:  # bounded keys in memory and in throttle.sqlite3
        canonical = "#" + hashlib.sha256(canonical.encode("utf-8", "replace")).hexdigest()
    return canonical


class _BusyError(Exception):
    """The verifier pool is full: shed the attempt before hashing."""


class Logins:
    """Shared by every listener of one `serve` (ServerContext.logins). Used on one event loop."""

    def __init__(
        self,
        accounts: Accounts,
        settings: AuthConfig,
        throttle: LoginThrottle,
        *,
        db: ThrottleDb | None = None,
    ) -> None:
        self.accounts = accounts
        self.settings = settings
        self.throttle = throttle
        self.db = db
        threads = settings.verify_threads or max(1, (os.cpu_count() or 2) // 2)
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="verify")
        self._submitted = 0  # verifications in the pool, running or queued
        self._per_network: dict[str, int] = {}  # of those, per client network
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        self._cache: dict[bytes, tuple[str, float]] = {}
        self._cache_key = secrets.token_bytes(32)
        self._cache_version: int | None = None
        # Verifications running, by cache key: the same name and password arriving again
        # meanwhile (a client opening 16 connections at once) wait for that one's answer
        # instead of hashing again. Keyed like the cache, so only identical pairs share.
        self._running: dict[bytes, asyncio.Future[str | None]] = {}
        # Observed, for tests and `throttle list`: verifications started, most at once per net.
        self.verified = 0
        self.peak_per_network = 0

    async def login(
        self, name: str, password: str, peer_ip: str, *, log: Any = _log
    ) -> LoginResult:
        """Check one login attempt; `log` is the connection's logger (its id on the line)."""
        account = canonical_name(name)
        decision = self._reserve(account, peer_ip, log)
        if decision is None:
            return LoginResult(Outcome.THROTTLED)
        try:
            address, cached = await self._check(account, password, decision)
        except _BusyError:
            self.throttle.cancel(decision)
            log.warning("login shed for %r from %s: verifier pool full", account, peer_ip)
            return LoginResult(Outcome.BUSY)
        except BaseException:  # the client went away (cancelled) or a database error
            self.throttle.cancel(decision)
            raise
        return self._conclude(decision, address, peer_ip, log, " (cached)" if cached else "")

    def _reserve(self, account: str, peer_ip: str, log: Any) -> Reservation | None:
        """Step 2: a throttle slot for this attempt, or None (logged) when it is refused."""
        if self.db is not None:
            self.db.follow(self.throttle)  # a `mailstack throttle clear` takes effect now
        decision = self.throttle.reserve(account, peer_ip)
        if isinstance(decision, Refused):
            log.warning("login refused for %r from %s: %s", account, peer_ip, decision.reason)
            return None
        return decision

    def _conclude(
        self, decision: Reservation, address: str | None, peer_ip: str, log: Any, how: str
    ) -> LoginResult:
        """Step 6: the outcome into the throttle, one log line."""
        if address is None:
            self.throttle.record_failure(decision)
            log.info("login failed for %r from %s%s", decision.account, peer_ip, how)
            return LoginResult(Outcome.FAILED)
        self.throttle.record_success(decision)
        log.info("login %s from %s%s", address, peer_ip, how)
        return LoginResult(Outcome.OK, address)

    async def _check(
        self, account: str, password: str, decision: Reservation
    ) -> tuple[str | None, bool]:
        """The canonical address if the password is right, and whether the cache said so."""
        # A cached success answers before the delay: the throttle has already refused a pair
        # that is locked out (the cache must not become an oracle that bypasses it), and a
        # hit only ever ends a guessing run, so skipping the wait helps no attacker, while a
        # client reconnecting, or opening five connections at once, never waits.
        if (cached := self._cached(account, password)) is not None:
            return cached, True
        if decision.delay_s:
            await asyncio.sleep(decision.delay_s)  # slows guessing; the loop serves others
        key = self._cache_entry(account, password)
        version = self._accounts_version()
        if (cached := self._cached(account, password)) is not None:
            return cached, True  # verified by a parallel login while this one waited
        if key is not None and (running := self._running.get(key)) is not None:
            with contextlib.suppress(_BusyError):
                if (shared := await asyncio.shield(running)) is not None:
                    return shared, True  # the same pair was being verified: it is right
            # A failure is never shared: every wrong guess costs its own verification.
        verification = asyncio.ensure_future(self._verify(account, password, decision.network))
        if key is not None:
            self._running[key] = verification
            verification.add_done_callback(functools.partial(self._ran, key))
        address = await asyncio.shield(verification)
        if address is not None and key is not None and self._accounts_version() == version:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = (address, time.monotonic() + self.settings.cache_s)
        return address, False

    def _ran(self, key: bytes, verification: asyncio.Future[str | None]) -> None:
        if self._running.get(key) is verification:
            del self._running[key]

    # -- the auth cache ------------------------------------------------------------------------
    def _cached(self, account: str, password: str) -> str | None:
        """The address if this name and password were verified within cache_s."""
        key = self._cache_entry(account, password)
        self._accounts_version()  # an account change empties the cache first
        if key is None or (hit := self._cache.get(key)) is None:
            return None
        address, expires = hit
        if time.monotonic() < expires:
            return address
        self._cache.pop(key, None)
        return None

    def _cache_entry(self, account: str, password: str) -> bytes | None:
        if self.settings.cache_s <= 0:
            return None
        data = account.encode("utf-8", "replace") + b"\0" + password.encode("utf-8", "replace")
        return hmac.digest(self._cache_key, data, "sha256")

    def _accounts_version(self) -> int:
        """users.sqlite3's data_version; a change empties the cache (cheap: shared memory)."""
        version = self.accounts.data_version()
        if version != self._cache_version:
            self._cache.clear()
            self._cache_version = version
        return version

    # -- the verifier pool ---------------------------------------------------------------------
    def _is_full(self) -> bool:
        return self._submitted >= self.threads + self.settings.verify_queue

    async def _verify(self, account: str, password: str, network: str) -> str | None:
        if self._is_full():
            raise _BusyError
        await self._acquire(network)
        if self._is_full():  # filled while we waited our network's turn
            self._release(network)
            raise _BusyError
        loop = asyncio.get_running_loop()
        self._submitted += 1
        self.verified += 1
        done: Future[str | None] = self._pool.submit(self.accounts.authenticate, account, password)
        # Slots are freed when the thread is done, not when an impatient caller is cancelled.
        done.add_done_callback(lambda _: _call_soon(loop, self._finished, network))
        return await asyncio.wrap_future(done)

    def _finished(self, network: str) -> None:
        self._submitted -= 1
        self._release(network)

    async def _acquire(self, network: str) -> None:
        """Take one of the network's verification slots, waiting (boundedly) for one."""
        held = self._per_network.get(network, 0)
        if held < self.settings.verify_per_network:
            self._per_network[network] = held + 1
            self.peak_per_network = max(self.peak_per_network, held + 1)
            return
        queue = self._waiting.setdefault(network, deque())
        if len(queue) >= WAITING_PER_NETWORK:
            raise _BusyError
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await turn  # `_release` hands its slot over by resolving this
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(network)  # handed over just now: pass it on
            elif turn in queue:
                queue.remove(turn)
            raise

    def _release(self, network: str) -> None:
        queue = self._waiting.get(network)
        while queue:
            turn = queue.popleft()
            if not turn.done():
                turn.set_result(None)  # the slot moves to the waiter: the count stays
                return
        self._waiting.pop(network, None)
        held = self._per_network.get(network, 0) - 1
        if held > 0:
            self._per_network[network] = held
        else:
            self._per_network.pop(network, None)

    def in_flight(self, peer_ip: str) -> int:
        """Verifications running or queued for this client's network."""
        return self._per_network.get(network_of(peer_ip), 0)


class ScramLogin:
    """One SCRAM-SHA-256 login (RFC 5802 §5, mailstack/base/scram.py) on the login path:
    `start(client_first)` gives the server-first message (or THROTTLED), `finish(client_final)`
    the result, with the server-final message in `server_final` when OK. `abandon()` (the
    client cancelled or went away) returns the throttle slot uncounted. Used on one loop."""

    def __init__(self, logins: Logins, peer_ip: str, *, log: Any = _log) -> None:
        self._logins = logins
        self._peer_ip = peer_ip
        self._log = log
        self._decision: Reservation | None = None
        self._exchange: scram.ScramExchange | None = None
        self.server_final: bytes | None = None

    async def start(self, client_first: bytes) -> bytes | LoginResult:
        """Raises scram.ScramError for a message we refuse: not a guess, so not counted."""
        exchange = scram.ScramExchange(client_first)
        account = canonical_name(exchange.username)
        decision = self._logins._reserve(account, self._peer_ip, self._log)
        if decision is None:
            return LoginResult(Outcome.THROTTLED)
        self._decision = decision
        try:
            if decision.delay_s:
                await asyncio.sleep(decision.delay_s)  # the same delay as a PLAIN attempt
            keys = await asyncio.to_thread(self._logins.accounts.scram_keys, account)
        except BaseException:
            self.abandon()
            raise
        self._exchange = exchange
        return exchange.server_first(keys or scram.decoy_keys(account, _DECOY_SECRET))

    def finish(self, client_final: bytes) -> LoginResult:
        decision, exchange = self._decision, self._exchange
        if decision is None or exchange is None:
            raise RuntimeError("start() comes first")
        self._decision = self._exchange = None
        self.server_final = exchange.finish(client_final)
        address = decision.account if self.server_final is not None else None
        return self._logins._conclude(
            decision, address, self._peer_ip, self._log, f" ({scram.MECHANISM})"
        )

    def abandon(self) -> None:
        if self._decision is not None:
            self._logins.throttle.cancel(self._decision)
            self._decision = self._exchange = None


# Makes the decoy keys of accounts without SCRAM keys. Per process: a restart changes an unknown
# name's salt, which tells nothing RCPT TO on port 25 does not already tell (550 5.1.1).
_DECOY_SECRET = secrets.token_bytes(32)


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed (serve stopped) meanwhile
        loop.call_soon_threadsafe(fn, *args)


def make_logins(accounts: Accounts, settings: AuthConfig, db: ThrottleDb | None) -> Logins:
    """The login path `serve` uses: the throttle from `[auth]`, persisted in `db` if given."""
    throttle = throttle_from_config(settings)
    if db is not None:
        db.attach(throttle)
    return Logins(accounts, settings, throttle, db=db)


def throttle_from_config(settings: AuthConfig) -> LoginThrottle:
    return LoginThrottle(
        free_failures=settings.free_failures,
        max_delay_s=float(settings.max_delay_s),
        lockout_failures=settings.lockout_failures,
        network_lockout_failures=settings.network_lockout_failures,
        account_ceiling=settings.account_ceiling,
        window_s=float(settings.window_s),
    )
