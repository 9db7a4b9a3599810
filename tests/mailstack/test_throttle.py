"""mailstack/base/throttle.py (pure, with a fake clock) and its file, throttle_db.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mailstack.base.connections import network_of
from mailstack.base.throttle import Kind, LoginThrottle, Refused, Reservation
from mailstack.base.throttle_db import ThrottleDb

ALICE = "alice@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()  # wall clock, as the file keeps it

    def __call__(self) -> float:
        return self.now


def reserve(t: LoginThrottle, ip: str, account: str = ALICE) -> Reservation:
    r = t.reserve(account, ip)
    assert isinstance(r, Reservation), r
    return r


def fail(t: LoginThrottle, ip: str, account: str = ALICE, times: int = 1) -> None:
    for _ in range(times):
        t.record_failure(reserve(t, ip, account))


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        pytest.param("192.0.2.77", "192.0.2.0/24", id="ipv4-24"),
        pytest.param("::ffff:192.0.2.77", "192.0.2.0/24", id="mapped-is-ipv4"),
        pytest.param("2001:db8:1:2:3::4", "2001:db8:1:2::/64", id="ipv6-64"),
        pytest.param("fe80::1%eth0", "fe80::/64", id="scoped"),
        pytest.param("127.0.0.1", "127.0.0.0/24", id="loopback-24"),
        pytest.param("127.0.1.1", "127.0.1.0/24", id="other-loopback-24"),
        pytest.param("not-an-ip", "not-an-ip", id="unparsable"),
    ],
)
def test_network_of(ip: str, network: str) -> None:
    assert network_of(ip) == network


def test_delay_grows_per_account_and_network_and_success_resets_it() -> None:
    clock = Clock()
    t = LoginThrottle(free_failures=2, base_delay_s=1, max_delay_s=8, clock=clock)
    delays = []
    for _ in range(7):
        r = reserve(t, "192.0.2.1")
        delays.append(r.delay_s)
        t.record_failure(r)
    assert delays == [0, 0, 1, 2, 4, 8, 8]
    assert reserve(t, "192.0.2.99").delay_s == 8  # same /24: the same client network
    assert reserve(t, "198.51.100.1").delay_s == 0  # another network is not slowed down
    t.record_success(reserve(t, "192.0.2.1"))
    assert reserve(t, "192.0.2.1").delay_s == 0


def test_lockout_is_per_network_the_user_elsewhere_still_gets_in() -> None:
    t = LoginThrottle(lockout_failures=5, clock=Clock())
    fail(t, "203.0.113.9", times=5)
    assert isinstance(t.reserve(ALICE, "203.0.113.200"), Refused)  # the attacker's /24
    assert isinstance(t.reserve(ALICE, "198.51.100.7"), Reservation)  # the user at home
    assert isinstance(t.reserve("bob@example.com", "203.0.113.9"), Reservation)


def test_network_lockout_covers_every_account() -> None:
    t = LoginThrottle(network_lockout_failures=6, clock=Clock())
    for i in range(6):
        fail(t, "203.0.113.9", account=f"user{i}@example.com")  # spraying: one guess each
    assert isinstance(t.reserve("someone@example.com", "203.0.113.10"), Refused)
    assert isinstance(t.reserve("someone@example.com", "198.51.100.7"), Reservation)


def test_account_ceiling_spares_networks_that_logged_in_before() -> None:
    t = LoginThrottle(account_ceiling=10, lockout_failures=5, clock=Clock())
    t.record_success(reserve(t, "198.51.100.7"))  # the user's home network
    for n in range(5):
        fail(t, f"203.0.{n}.1", times=2)  # a botnet: 2 guesses from each of 5 networks
    assert isinstance(t.reserve(ALICE, "192.0.2.1"), Refused)  # a new network: ceiling
    assert isinstance(t.reserve(ALICE, "198.51.100.8"), Reservation)  # home still gets in


def test_in_flight_attempts_count_before_they_are_verified() -> None:
    t = LoginThrottle(lockout_failures=20, clock=Clock())
    outcomes = [t.reserve(ALICE, "192.0.2.1") for _ in range(45)]  # 45 parallel LOGINs
    reserved = [r for r in outcomes if isinstance(r, Reservation)]
    assert len(reserved) == 20 + t.parallel_free  # what a client does in parallel is free
    for r in reserved[:5]:
        t.cancel(r)  # shed before hashing: not counted
    again = [t.reserve(ALICE, "192.0.2.1") for _ in range(9)]
    assert sum(isinstance(r, Reservation) for r in again) == 5


def test_a_clients_parallel_logins_and_an_office_are_not_slowed() -> None:
    """Thunderbird opens 5 connections at start; an office behind one /24 starts 40 people's
    clients at once. Neither is guessing, and neither waits (found by bench/imap_stress.py:
    10 clients of one account saw 30 s LOGINs when every in-flight attempt counted)."""
    t = LoginThrottle(clock=Clock())
    first = [reserve(t, "192.0.2.1") for _ in range(t.parallel_free + t.free_failures)]
    assert [r.delay_s for r in first] == [0.0] * len(first)
    assert reserve(t, "192.0.2.1").delay_s > 0  # beyond that, parallelism is guessing
    office = [reserve(t, "198.51.100.7", f"user{i}@example.com") for i in range(40)]
    assert {r.delay_s for r in office} == {0.0}
    spray = [t.reserve(f"u{i}@example.com", "203.0.113.1") for i in range(200)]
    assert isinstance(spray[-1], Refused)  # but 200 at once from one network is spraying


def test_counters_end_a_window_after_the_last_failure() -> None:
    clock = Clock()
    t = LoginThrottle(lockout_failures=3, window_s=600, clock=clock)
    fail(t, "192.0.2.1", times=3)
    assert isinstance(t.reserve(ALICE, "192.0.2.1"), Refused)
    clock.now += 599
    assert isinstance(t.reserve(ALICE, "192.0.2.1"), Refused)
    clock.now += 2
    r = t.reserve(ALICE, "192.0.2.1")
    assert isinstance(r, Reservation)
    assert r.delay_s == 0


def test_the_file_persists_and_a_clear_reaches_a_running_throttle(tmp_path: Path) -> None:
    path = tmp_path / "throttle.sqlite3"
    serve_db, clock = ThrottleDb(path), Clock()
    t = LoginThrottle(lockout_failures=3, clock=clock)
    serve_db.attach(t)
    serve_db.follow(t)
    fail(t, "192.0.2.1", times=3)
    fail(t, "198.51.100.1", account="bob@example.com", times=3)
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    restarted = LoginThrottle(lockout_failures=3, clock=clock)  # a new serve on the same file
    ThrottleDb(path).follow(restarted)
    assert isinstance(restarted.reserve(ALICE, "192.0.2.1"), Refused)

    cli = ThrottleDb(path)  # another process: `mailstack throttle clear alice@example.com`
    assert cli.clear(account=ALICE) == 2  # the pair and the account record
    assert (Kind.PAIR, ALICE, "192.0.2.0/24") not in cli.load()
    serve_db.follow(t)
    assert isinstance(t.reserve(ALICE, "192.0.2.1"), Reservation)
    assert isinstance(t.reserve("bob@example.com", "198.51.100.1"), Refused)
    assert cli.clear(networks=["198.51.100.0/24"]) == 2  # the pair and the network record
    serve_db.follow(t)
    assert isinstance(t.reserve("bob@example.com", "198.51.100.1"), Reservation)
