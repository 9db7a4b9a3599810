"""The one login path: IMAP LOGIN and AUTHENTICATE PLAIN, SMTP AUTH PLAIN and LOGIN all call
`Logins.login(name, password, peer_ip)`.

In this order, each step for a reason:
1. Canonicalise the name exactly as the account lookup does (`normalize_address`: spaces,
   trailing dot, case, IDNA), so that every spelling of an account shares one throttle budget
   (issue 10 item 1). A name that is no address is throttled on its folded string.
2. Reserve a throttle slot (mailstack/base/throttle.py): refused attempts are never verified,
   and an attempt counts before its verification, so parallel guesses cannot pass the limits.
   The same name and password from the same network while one is in flight (a client opening
   16 connections at once) is the same guess: it shares that attempt's slot and verdict
   instead of taking a slot of its own, which would soon delay a client for its parallelism.
3. The auth cache: a success within `auth.cache_s` for the same name and password answers
   without hashing and without the throttle's delay (a locked-out pair was refused in step 2).
   Its key is an HMAC of name and password under a random per-process key, so neither the
   cache nor a memory dump holds a password or a hash that can be tested offline faster than
   argon2. Failures are never cached: every wrong guess costs a verification and counts in
   the throttle. Every entry goes when users.sqlite3 changes (`PRAGMA data_version`: `user
   passwd`, `user del`, disabling), and a success whose verification overlapped a change is
   not cached.
4. Wait the throttle's delay (on the loop: costs nothing but a timer).
5. Verify in a bounded pool of our own threads (`auth.verify_threads`, by default half the
   cores), never the loop's default executor that the store uses: a flood of bad logins then
   cannot starve delivery and IMAP (issue 10 item 6). At most `auth.verify_per_network` checks
   per client network run or wait in the pool at once; a few more wait on the loop; beyond
   that, and when `auth.verify_queue` checks already wait, the attempt is shed before any
   hashing ("try again later").
6. Record the outcome in the throttle and log one line (never the password).

From step 3 on an attempt is decided in a task of its own: a cache hit answers at once and a
miss does not, so a client that could hang up uncounted after a miss would test guesses
against the cache for free. An attempt abandoned during its delay counts as a failure; one
abandoned during its verification gets the verification's verdict. For the same reason an
attempt that step 5 would shed because its own network has too many in line is shed before
the cache is asked (uncounted), and one shed after a cache miss (the whole pool full: a flood
from many networks) counts toward the account's ceiling, which never refuses networks the
account logged in from (`LoginThrottle.record_unanswered`).

SCRAM-SHA-256 (`ScramLogin`, IMAP AUTHENTICATE and SMTP AUTH) takes steps 1, 2, 4 and 6 the
same way, through the same two methods (`_reserve`, `_conclude`): the reservation is taken at
the client's first message and ended by its proof. Steps 3 and 5 do not apply: every proof
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
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

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


class LoginPath(Protocol):
    """What a session needs of the login path: `Logins` in the process that decides logins,
    a proxy to it elsewhere (an SMTP worker: mailstack/workers/logins.py)."""

    async def login(
        self, name: str, password: str, peer_ip: str, *, log: Any = ...
    ) -> LoginResult: ...

    def scram(self, peer_ip: str, *, log: Any = ...) -> ScramAttempt: ...


class ScramAttempt(Protocol):
    """One SCRAM-SHA-256 login in progress (`ScramLogin` describes the steps)."""

    server_final: bytes | None

    async def start(self, client_first: bytes) -> bytes | LoginResult: ...

    async def finish(self, client_final: bytes) -> LoginResult: ...

    def abandon(self) -> None: ...


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


@dataclass(slots=True)
class _Attempt:
    """One reservation being decided, and the clients waiting for its verdict."""

    task: asyncio.Future[LoginResult] = field(init=False)
    waiters: int = 0
    delaying: bool = False  # in the throttle's delay: the last client leaving may cancel it


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
        # Attempts being decided, by an HMAC of network, name and password: the same three
        # arriving again meanwhile share the verdict (`login`).
        self._attempts: dict[bytes, _Attempt] = {}
        # Observed, for tests and `throttle list`: verifications started, attempts that waited
        # out a throttle delay, most verifications at once per network.
        self.verified = 0
        self.delayed = 0
        self.peak_per_network = 0

    async def login(
        self, name: str, password: str, peer_ip: str, *, log: Any = _log
    ) -> LoginResult:
        """Check one login attempt; `log` is the connection's logger (its id on the line)."""
        account = canonical_name(name)
        network = network_of(peer_ip)
        key = self._attempt_key(account, password, network)
        attempt = self._attempts.get(key)
        if attempt is not None:
            # The same name and password from the same network already in flight (a client
            # opening 16 connections at once): the same guess, so one reservation, one
            # verification and one verdict for all of them, counted once.
            result = await self._await(attempt)
            if result.address is not None:
                log.info("login %s from %s (shared)", result.address, peer_ip)
            else:
                log.info("login %s for %r from %s (shared)", result.outcome, account, peer_ip)
            return result
        decision = self._reserve(account, peer_ip, log)
        if decision is None:
            return LoginResult(Outcome.THROTTLED)
        attempt = _Attempt()
        attempt.task = asyncio.ensure_future(
            self._decide(account, password, decision, peer_ip, log, attempt)
        )
        self._attempts[key] = attempt
        attempt.task.add_done_callback(functools.partial(self._ran, key, attempt))
        return await self._await(attempt)

    async def _await(self, attempt: _Attempt) -> LoginResult:
        """Wait for an attempt's verdict. The attempt is not the client's to cancel once the
        cache has seen the password: a client that leaves then is still judged (below)."""
        attempt.waiters += 1
        try:
            return await asyncio.shield(attempt.task)
        except asyncio.CancelledError:
            attempt.waiters -= 1
            if attempt.waiters == 0 and attempt.delaying:
                attempt.task.cancel()  # `_decide` counts it as failed
            raise

    async def _decide(
        self,
        account: str,
        password: str,
        decision: Reservation,
        peer_ip: str,
        log: Any,
        attempt: _Attempt,
    ) -> LoginResult:
        """Steps 3-6 for one reservation, in a task of its own that no client can cancel once
        it has answered anything about the password.

        Why: a cached success answers at once, a wrong password only after the delay or the
        hash. Were an attempt that the client abandoned at that point not counted, a guesser
        would hang up whenever no answer came within milliseconds and so test guesses
        against the cache for free. So after the cache has said no, an attempt ends in a
        verdict: one abandoned during its delay counts as failed, one shed by a full pool
        toward the account's ceiling (the module docstring says why only that).
        """
        if self._line_is_full(decision.network):
            # Shed before the cache is asked: the answer says nothing about the password.
            self.throttle.cancel(decision)
            log.warning("login shed for %r from %s: too many from its network", account, peer_ip)
            return LoginResult(Outcome.BUSY)
        if (cached := self._cached(account, password)) is not None:
            return self._conclude(decision, cached, peer_ip, log, " (cached)")
        try:
            if decision.delay_s:
                self.delayed += 1
                attempt.delaying = True
                log.info(
                    "login for %r from %s waits %.0f s (earlier failures)",
                    account,
                    peer_ip,
                    decision.delay_s,
                )
                try:
                    await asyncio.sleep(decision.delay_s)  # slows guessing; costs a timer
                except asyncio.CancelledError:
                    self._conclude(decision, None, peer_ip, log, " (left during the delay)")
                    raise
                attempt.delaying = False
            version = self._accounts_version()
            address = await self._verify(account, password, decision.network)
        except _BusyError:
            self.throttle.record_unanswered(decision)  # see the docstring: no free answer
            log.warning("login shed for %r from %s: verifier pool full", account, peer_ip)
            return LoginResult(Outcome.BUSY)
        except asyncio.CancelledError:
            raise
        except BaseException:  # a database error: nothing was decided
            self.throttle.cancel(decision)
            raise
        key = self._cache_entry(account, password)
        if address is not None and key is not None and self._accounts_version() == version:
            if len(self._cache) >= CACHE_MAX:
                self._cache.clear()
            self._cache[key] = (address, time.monotonic() + self.settings.cache_s)
        return self._conclude(decision, address, peer_ip, log, "")

    def scram(self, peer_ip: str, *, log: Any = _log) -> ScramLogin:
        return ScramLogin(self, peer_ip, log=log)

    def _ran(self, key: bytes, attempt: _Attempt, _task: object) -> None:
        if self._attempts.get(key) is attempt:
            del self._attempts[key]

    def _attempt_key(self, account: str, password: str, network: str) -> bytes:
        """Names an attempt in flight without holding its password (HMAC, as the cache)."""
        data = "\0".join((network, account, password)).encode("utf-8", "replace")
        return hmac.digest(self._cache_key, data, "sha256")

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
    def _line_is_full(self, network: str) -> bool:
        """`_acquire` would shed an attempt from this network now."""
        return self._per_network.get(network, 0) >= self.settings.verify_per_network and (
            len(self._waiting.get(network, ())) >= WAITING_PER_NETWORK
        )

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

    async def finish(self, client_final: bytes) -> LoginResult:
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
