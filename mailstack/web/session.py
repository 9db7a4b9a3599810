"""Server-side login sessions for the web pages, and their CSRF tokens.

The browser holds only a random token (cookie `__Host-mailstack`: Secure, HttpOnly,
SameSite=Strict, Path=/; the `__Host-` prefix makes browsers refuse it from plain HTTP or for
another domain, RFC 6265bis §4.1.3.2). The store keys sessions by the token's SHA-256, so what
is in memory cannot be replayed as a cookie. A session ends `idle_s` after its last request or
`max_age_s` after login, whichever comes first; logging in replaces the session and its token
(no session fixation), and a password change ends the account's other sessions.

With a `SessionDb` (mailstack/web/session_db.py), logged-in sessions are also kept on disk and
loaded again at start, so a restart of `serve` logs no one out; each keeps the account's
credential stamp of its login, which the pages compare on every request (a `user passwd` from
the CLI ends the login). Times are wall-clock seconds, comparable across restarts.

CSRF: the synchronizer-token pattern (OWASP): each session has a random token that every form
carries in a hidden field; a POST whose field does not match is refused (403). Visitors who are
not logged in get a session too (without an address), so the login form is protected as well.
Bookkeeping with an injectable clock; the only I/O is the optional SessionDb's.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mailstack.web.session_db import TOUCH_S, SessionDb

COOKIE = "__Host-mailstack"
ANONYMOUS_S = 1800.0  # a login form left open this long needs a reload
MAX_SESSIONS = 10_000  # bounds memory; the oldest visitors without a login go first


@dataclass(slots=True)
class Session:
    csrf: str
    address: str | None  # None: not logged in
    is_admin: bool
    created: float
    last_seen: float
    flash: list[str] = field(default_factory=list)  # one-time messages for the next page
    stamp: str = ""  # the account's credential stamp at login (Accounts.credential_stamp)
    stored_seen: float = 0.0  # last_seen as the SessionDb has it


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def is_valid_csrf(session: Session, token: str | None) -> bool:
    return token is not None and hmac.compare_digest(
        session.csrf.encode(), token.encode("utf-8", "replace")
    )


@dataclass
class SessionStore:
    idle_s: float
    max_age_s: float
    max_sessions: int = MAX_SESSIONS
    clock: Callable[[], float] = time.time  # wall clock: stored times outlive the process
    db: SessionDb | None = None
    _sessions: dict[bytes, Session] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.db is None:
            return
        now = self.clock()
        for key, csrf, address, is_admin, created, seen, stamp in self.db.load(
            now - self.max_age_s, now - self.idle_s
        ):
            self._sessions[key] = Session(
                csrf, address, is_admin, created, seen, stamp=stamp, stored_seen=seen
            )

    def new(
        self, address: str | None = None, *, is_admin: bool = False, stamp: str = ""
    ) -> tuple[str, Session]:
        """A fresh session and the token for its cookie."""
        if len(self._sessions) >= self.max_sessions:
            self._make_room()
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), address, is_admin, now, now, stamp=stamp)
        key = _key(token)
        self._sessions[key] = session
        if self.db is not None and address is not None:
            session.stored_seen = now
            self.db.save((key, session.csrf, address, is_admin, now, now, stamp))
        return token, session

    def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (its idle clock restarts), or None."""
        if not token:
            return None
        key = _key(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if self._is_expired(session, now):
            self._forget([key])
            return None
        session.last_seen = now
        if self.db is not None and session.address and now - session.stored_seen > TOUCH_S:
            session.stored_seen = now
            self.db.touch(key, now)
        return session

    def log_in(
        self, token: str | None, address: str, *, is_admin: bool, stamp: str = ""
    ) -> tuple[str, Session]:
        """Replace the visitor's session by a logged-in one with a new token and CSRF token."""
        self.drop(token)
        return self.new(address, is_admin=is_admin, stamp=stamp)

    def restamp(self, token: str | None, stamp: str) -> None:
        """The session's own password change: it lives on with the new credential stamp."""
        key = _key(token) if token else b""
        if (session := self._sessions.get(key)) is not None:
            session.stamp = stamp
            if self.db is not None:
                self.db.restamp(key, stamp)

    def drop(self, token: str | None) -> None:
        if token:
            self._forget([_key(token)])

    def drop_account(self, address: str, *, keep: str | None = None) -> int:
        """End every session of `address` except the one of token `keep`; how many ended."""
        kept = _key(keep) if keep else None
        doomed = [k for k, s in self._sessions.items() if s.address == address and k != kept]
        self._forget(doomed)
        return len(doomed)

    def _forget(self, keys: list[bytes]) -> None:
        stored = [k for k in keys if (s := self._sessions.pop(k, None)) and s.address]
        if self.db is not None and stored:
            self.db.delete(stored)

    def __len__(self) -> int:
        return len(self._sessions)

    def _is_expired(self, session: Session, now: float) -> bool:
        idle = self.idle_s if session.address else min(self.idle_s, ANONYMOUS_S)
        return now - session.last_seen > idle or now - session.created > self.max_age_s

    def _make_room(self) -> None:
        now = self.clock()
        self._forget([k for k, s in self._sessions.items() if self._is_expired(s, now)])
        if len(self._sessions) < self.max_sessions:
            return
        # Full of live sessions: visitors who never logged in make room first (a flood of
        # login-page loads must not log real users out), then the least recently used.
        victim = min(
            self._sessions,
            key=lambda k: (self._sessions[k].address is not None, self._sessions[k].last_seen),
        )
        self._forget([victim])
