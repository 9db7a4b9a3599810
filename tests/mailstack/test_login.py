"""mailstack/base/login.py on a real account database (SQLite, argon2): names canonicalised
before the throttle, the verifier pool's limits and shedding, and the auth cache's rules."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.base.config import AuthConfig, config_from_dict
from mailstack.base.errors import ConfigError
from mailstack.base.login import Logins, Outcome, canonical_name
from mailstack.base.throttle import Kind, LoginThrottle
from mailstack.base.users import Accounts

ALICE, PASSWORD = "alice@example.test", "correct horse"


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[Accounts]:
    db = Accounts(tmp_path / "users.sqlite3")
    db.add_domain("example.test")
    db.add_domain("b\u00fccher.example")
    db.add_user(ALICE, PASSWORD)
    yield db
    db.close()


def logins(accounts: Accounts, throttle: LoginThrottle | None = None, **auth: int) -> Logins:
    return Logins(accounts, AuthConfig(**auth), throttle or LoginThrottle())


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        pytest.param("alice@example.test", ALICE, id="as-is"),
        pytest.param("alice@example.test.", ALICE, id="trailing-dot"),
        pytest.param(" alice@example.test", ALICE, id="leading-space"),
        pytest.param("ALICE@Example.TEST", ALICE, id="case"),
        pytest.param("Bob@B\u00fccher.Example", "bob@xn--bcher-kva.example", id="idna"),
        pytest.param(" NoBody. ", "nobody", id="not-an-address"),
        pytest.param("x" * 400 + "@example.test", None, id="too-long-is-hashed"),
    ],
)
def test_canonical_name_is_the_lookup_name(typed: str, canonical: str | None) -> None:
    name = canonical_name(typed)
    if canonical is None:
        assert name.startswith("#")
        assert len(name) == 65
    else:
        assert name == canonical


async def test_spellings_share_one_budget_and_log_one_line_without_the_password(
    accounts: Accounts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.base.login")
    path = logins(accounts, LoginThrottle(lockout_failures=2))
    for typed in ("alice@example.test.", " ALICE@example.test"):
        assert (await path.login(typed, "wrong-1234", "192.0.2.1")).outcome is Outcome.FAILED
    result = await path.login("Alice@Example.Test", PASSWORD, "192.0.2.9")
    assert result.outcome is Outcome.THROTTLED
    assert path.verified == 2
    assert [r.getMessage() for r in caplog.records] == [
        f"login failed for '{ALICE}' from 192.0.2.1",
        f"login failed for '{ALICE}' from 192.0.2.1",
        f"login refused for '{ALICE}' from 192.0.2.9: 2 failures for this account from "
        "192.0.2.0/24",
    ]
    assert "wrong-1234" not in caplog.text
    assert PASSWORD not in caplog.text


async def test_excess_attempts_are_shed_before_hashing_and_not_counted(
    accounts: Accounts,
) -> None:
    throttle = LoginThrottle(free_failures=100, lockout_failures=100)
    path = logins(accounts, throttle, verify_threads=1, verify_per_network=1)
    results = await asyncio.gather(
        *(path.login(ALICE, f"guess{i}", "192.0.2.1") for i in range(12))
    )
    outcomes = [r.outcome for r in results]
    # One verifies at a time for the network, 8 wait their turn, the other 3 are shed.
    assert outcomes.count(Outcome.BUSY) == 3
    assert outcomes.count(Outcome.FAILED) == 9
    assert path.verified == 9
    assert path.peak_per_network == 1
    assert throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")].failures == 9
    assert path.in_flight("192.0.2.1") == 0


async def test_a_full_pool_sheds_other_networks_too(accounts: Accounts) -> None:
    throttle = LoginThrottle()
    path = logins(accounts, throttle, verify_threads=1, verify_queue=0)
    first = asyncio.ensure_future(path.login(ALICE, "guess", "192.0.2.1"))
    await asyncio.sleep(0.01)  # the first is in the pool now
    assert (await path.login(ALICE, PASSWORD, "198.51.100.1")).outcome is Outcome.BUSY
    # Shed after the cache said no: counted toward the account's ceiling only, never against
    # the pair or the network, so a flood cannot lock the real user out.
    assert throttle.records[(Kind.ACCOUNT, ALICE, "")].failures == 1
    assert throttle.records[(Kind.PAIR, ALICE, "198.51.100.0/24")].failures == 0
    assert throttle.records[(Kind.NETWORK, "", "198.51.100.0/24")].failures == 0
    assert (await first).outcome is Outcome.FAILED
    assert (await path.login(ALICE, PASSWORD, "198.51.100.1")).outcome is Outcome.OK


async def test_a_client_that_leaves_after_the_cache_said_no_is_still_judged(
    accounts: Accounts,
) -> None:
    # A cached success answers at once: were a guess whose answer did not come at once
    # uncounted when the client hangs up, the cache would test guesses for free.
    throttle = LoginThrottle()
    path = logins(accounts, throttle, verify_per_network=1)
    running = asyncio.ensure_future(path.login(ALICE, "guess", "192.0.2.1"))
    waiting = asyncio.ensure_future(path.login(ALICE, "other guess", "192.0.2.2"))
    await asyncio.sleep(0.01)
    waiting.cancel()  # gone while waiting for the network's slot
    running.cancel()  # gone while its hash is computed
    for task in (running, waiting):
        with pytest.raises(asyncio.CancelledError):
            await task
    pair = (Kind.PAIR, ALICE, "192.0.2.0/24")
    for _ in range(200):  # both are verified and counted without their clients
        if throttle.records[pair].failures == 2:
            break
        await asyncio.sleep(0.05)
    assert (throttle.records[pair].failures, throttle.records[pair].in_flight) == (2, 0)
    assert path.verified == 2
    assert path.in_flight("192.0.2.1") == 0
    assert (await path.login(ALICE, PASSWORD, "192.0.2.3")).outcome is Outcome.OK


async def test_a_client_that_leaves_during_the_delay_counts_as_failed(
    accounts: Accounts,
) -> None:
    throttle = LoginThrottle(free_failures=1, base_delay_s=30, lockout_failures=10)
    path = logins(accounts, throttle)
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.OK  # cached
    await path.login(ALICE, "typo", "192.0.2.1")  # the next misses wait 30 s
    guess = asyncio.ensure_future(path.login(ALICE, "guess", "192.0.2.1"))
    await asyncio.sleep(0.05)
    assert not guess.done()  # no answer at once: not the cached password
    guess.cancel()  # ... so a guesser hangs up
    with pytest.raises(asyncio.CancelledError):
        await guess
    await asyncio.sleep(0)
    pair = throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")]
    assert (pair.failures, pair.in_flight) == (2, 0)
    assert path.verified == 2  # counted without hashing
    assert path.delayed == 1


async def test_the_cache_answers_repeats_but_never_a_throttled_pair(
    accounts: Accounts,
) -> None:
    path = logins(accounts, LoginThrottle(lockout_failures=3))
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).address == ALICE
    assert (await path.login("alice@example.test.", PASSWORD, "192.0.2.1")).address == ALICE
    assert path.verified == 1  # the second came from the cache
    assert all(PASSWORD.encode() not in key for key in path._cache)
    for _ in range(3):
        await path.login(ALICE, "wrong", "192.0.2.1")
    # A cached success must not open a pair the throttle refuses.
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.THROTTLED
    assert path.verified == 4  # failures are verified every time: they are never cached


async def test_a_cached_login_does_not_wait_for_the_throttles_delay(accounts: Accounts) -> None:
    throttle = LoginThrottle(free_failures=0, base_delay_s=30, lockout_failures=10)
    path = logins(accounts, throttle)
    await path.login(ALICE, "typo", "192.0.2.1")  # one mistake: the next attempts wait 30 s
    assert throttle.reserve(ALICE, "192.0.2.1").delay_s == 30  # type: ignore[union-attr]
    path.throttle = LoginThrottle()  # a fresh budget to verify once without waiting
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.OK
    path.throttle = throttle
    result = await asyncio.wait_for(path.login(ALICE, PASSWORD, "192.0.2.1"), timeout=10)
    assert result.outcome is Outcome.OK  # from the cache, without the 30 s wait
    wrong = asyncio.ensure_future(path.login(ALICE, "wrong", "192.0.2.1"))
    await asyncio.sleep(0.2)
    assert not wrong.done()  # a wrong password still waits its 30 s
    wrong.cancel()


async def test_the_cache_forgets_when_the_account_database_changes(accounts: Accounts) -> None:
    path = logins(accounts)
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.OK
    await asyncio.to_thread(accounts.set_password, ALICE, "new password")  # another connection
    assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.FAILED
    assert (await path.login(ALICE, "new password", "192.0.2.1")).outcome is Outcome.OK
    await asyncio.to_thread(accounts.set_enabled, ALICE, False)
    assert (await path.login(ALICE, "new password", "192.0.2.1")).outcome is Outcome.FAILED


async def test_cache_s_0_disables_the_cache(accounts: Accounts) -> None:
    path = logins(accounts, cache_s=0)
    for _ in range(2):
        assert (await path.login(ALICE, PASSWORD, "192.0.2.1")).outcome is Outcome.OK
    assert path.verified == 2


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        pytest.param("cache_s", -1, "auth.cache_s: must be 0 or more", id="cache-negative"),
        pytest.param("lockout_failures", 0, "auth.lockout_failures: must be greater", id="zero"),
        pytest.param("verify_queue", "8", "auth.verify_queue: expected integer", id="type"),
        pytest.param("cache_seconds", 1, "auth.cache_seconds: unknown key", id="unknown"),
    ],
)
def test_auth_keys_are_validated_by_name(key: str, value: object, message: str) -> None:
    data = {"server": {"hostname": "mail.example.test", "domains": ["example.test"]}}
    with pytest.raises(ConfigError, match=message):
        config_from_dict({**data, "auth": {key: value}})


async def test_parallel_logins_of_one_pair_share_one_verification(accounts: Accounts) -> None:
    # A mail client opening 16 connections at once: one argon2id check, not 16 in a row, and
    # one attempt in flight for the throttle: the client is not delayed for its parallelism.
    throttle = LoginThrottle()
    path = logins(accounts, throttle)
    results = await asyncio.gather(*(path.login(ALICE, PASSWORD, "192.0.2.1") for _ in range(16)))
    assert {r.outcome for r in results} == {Outcome.OK}
    assert path.verified == 1
    assert path.delayed == 0
    # The same wrong password 3 times at once is one guess: verified and counted once.
    wrong = await asyncio.gather(*(path.login(ALICE, "wrong", "192.0.2.1") for _ in range(3)))
    assert {r.outcome for r in wrong} == {Outcome.FAILED}
    assert path.verified == 2
    assert throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")].failures == 1
    # Different guesses at once are each verified and counted.
    guesses = await asyncio.gather(*(path.login(ALICE, f"g{i}", "192.0.2.1") for i in range(2)))
    assert {r.outcome for r in guesses} == {Outcome.FAILED}
    assert path.verified == 4
    assert throttle.records[(Kind.PAIR, ALICE, "192.0.2.0/24")].failures == 3


async def test_the_same_password_from_another_network_is_its_own_attempt(
    accounts: Accounts,
) -> None:
    throttle = LoginThrottle(lockout_failures=1)
    path = logins(accounts, throttle)
    await path.login(ALICE, "wrong", "198.51.100.1")  # that pair is locked out now
    first = asyncio.ensure_future(path.login(ALICE, PASSWORD, "192.0.2.1"))
    await asyncio.sleep(0)
    # Sharing the first one's verdict would let a locked-out network in.
    assert (await path.login(ALICE, PASSWORD, "198.51.100.1")).outcome is Outcome.THROTTLED
    assert (await first).outcome is Outcome.OK
