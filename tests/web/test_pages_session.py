"""The session store's rules, with a clock of our own (mailstack/web/session.py), and the
logins it keeps in SQLite across restarts (mailstack/web/session_db.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mailstack.web.session import ANONYMOUS_S, SessionStore, is_valid_csrf
from mailstack.web.session_db import SessionDb


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


def test_logins_are_kept_on_disk_under_their_tokens_hash(clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "web-sessions.sqlite3"
    sessions = SessionStore(idle_s=600, max_age_s=3600, clock=clock, db=SessionDb(path))
    visitor, _ = sessions.new()
    token, alice = sessions.new("alice@example.com", stamp="s1")
    gone, _ = sessions.new("bob@example.com", stamp="s2")
    sessions.drop(gone)
    assert sessions.db is not None
    sessions.db.close()
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("web-sessions.sqlite3*"))
    assert token.encode() not in stored  # what a cookie carries is not in the file
    assert hashlib.sha256(token.encode()).digest() in stored
    assert path.stat().st_mode & 0o077 == 0

    clock.now += 300  # a new serve: the login is back, with its CSRF token and stamp
    again = SessionStore(idle_s=600, max_age_s=3600, clock=clock, db=SessionDb(path))
    back = again.get(token)
    assert back is not None
    assert (back.address, back.csrf, back.stamp) == ("alice@example.com", alice.csrf, "s1")
    assert again.get(visitor) is None  # a visitor's session is not worth a write
    assert again.get(gone) is None  # logged out before the restart: stays out
    assert len(again) == 1


def test_stored_logins_expire_and_restamp_across_restarts(clock: Clock, tmp_path: Path) -> None:
    path = tmp_path / "web-sessions.sqlite3"
    first = SessionStore(idle_s=600, max_age_s=3600, clock=clock, db=SessionDb(path))
    idle, _ = first.new("alice@example.com", stamp="a")
    busy, _ = first.new("bob@example.com", stamp="b")
    for _ in range(5):  # bob keeps clicking: the stored last-seen follows (every TOUCH_S)
        clock.now += 200
        assert first.get(busy) is not None
    first.restamp(busy, "b2")
    second = SessionStore(idle_s=600, max_age_s=3600, clock=clock, db=SessionDb(path))
    assert second.get(idle) is None  # idle for 1000 s > 600 s
    session = second.get(busy)
    assert session is not None
    assert session.stamp == "b2"
    clock.now += 3600  # past the maximum age, whatever the activity
    third = SessionStore(idle_s=36000, max_age_s=3600, clock=clock, db=SessionDb(path))
    assert len(third) == 0
