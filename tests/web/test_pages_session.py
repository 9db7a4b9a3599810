"""The session store's rules, with a clock of our own (mailstack/web/session.py)."""

from __future__ import annotations

import pytest

from mailstack.web.session import ANONYMOUS_S, SessionStore, is_valid_csrf


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def store(clock: Clock, **kw: float) -> SessionStore:
    return SessionStore(
        idle_s=kw.get("idle_s", 600),
        max_age_s=kw.get("max_age_s", 3600),
        max_sessions=int(kw.get("max_sessions", 100)),
        clock=clock,
    )


def test_a_session_ends_after_its_idle_time_and_its_maximum_age(clock: Clock) -> None:
    sessions = store(clock)
    token, _ = sessions.new("alice@example.com")
    clock.now += 599
    assert sessions.get(token) is not None  # each request restarts the idle clock
    clock.now += 599
    assert sessions.get(token) is not None
    clock.now += 601
    assert sessions.get(token) is None
    token, _ = sessions.new("alice@example.com")
    for _ in range(7):  # active all along, but 3600 s after login it ends anyway
        clock.now += 500
        assert sessions.get(token) is not None
    clock.now += 500
    assert sessions.get(token) is None


def test_a_visitor_who_never_logged_in_is_forgotten_sooner(clock: Clock) -> None:
    sessions = store(clock, idle_s=7200, max_age_s=86400)
    visitor, _ = sessions.new()
    user, _ = sessions.new("alice@example.com")
    clock.now += ANONYMOUS_S + 1
    assert sessions.get(visitor) is None
    assert sessions.get(user) is not None


def test_logging_in_replaces_token_and_csrf_token(clock: Clock) -> None:
    sessions = store(clock)
    before, anonymous = sessions.new()
    after, logged_in = sessions.log_in(before, "alice@example.com", is_admin=False)
    assert after != before
    assert logged_in.csrf != anonymous.csrf
    assert sessions.get(before) is None  # a token planted before login is worth nothing
    assert sessions.get(after) is logged_in
    assert sessions.get("forged") is None
    assert sessions.get("") is None


def test_the_csrf_token_must_match_exactly(clock: Clock) -> None:
    _, session = store(clock).new()
    assert is_valid_csrf(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "x", "\udcff"):
        assert not is_valid_csrf(session, wrong)


def test_a_password_change_ends_the_accounts_other_sessions(clock: Clock) -> None:
    sessions = store(clock)
    mine, _ = sessions.new("alice@example.com")
    other, _ = sessions.new("alice@example.com")
    bob, _ = sessions.new("bob@example.com")
    assert sessions.drop_account("alice@example.com", keep=mine) == 1
    assert sessions.get(mine) is not None
    assert sessions.get(other) is None
    assert sessions.get(bob) is not None


def test_a_flood_of_visitors_does_not_log_users_out(clock: Clock) -> None:
    sessions = store(clock, max_sessions=10)
    users = [sessions.new(f"u{i}@example.com")[0] for i in range(5)]
    for _ in range(100):
        clock.now += 1
        sessions.new()
    assert len(sessions) == 10
    assert all(sessions.get(t) is not None for t in users)
