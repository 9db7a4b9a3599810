"""Accounts, aliases and hosted domains in `DIR/users.sqlite3`, and the lookups SMTP/IMAP need.

Addresses are case-insensitive: we store the local part lower-cased and the domain in IDNA ASCII
form. `alice+tag@example.com` resolves to `alice@example.com` (plus-addressing) unless an exact
user or alias exists. A catch-all alias is written `@example.com`. Passwords are argon2id hashes
(argon2-cffi defaults, RFC 9106's second recommended profile); a bcrypt hash imported from
another server (`$2b$...`) is verified too and rehashed to argon2id on the next login.
Beside the hash, `scram` holds the account's SCRAM-SHA-256 keys (mailstack/base/scram.py:
salt, iterations, StoredKey, ServerKey; never the password), written wherever a password is
set. Accounts whose password was set before SCRAM existed have none until their next password
change or successful PLAIN/LOGIN, which derives them (SCRAM fails for them until then).

Every call reads the database, so account changes made by the CLI take effect on a running
`serve` at once. Connections are per thread (the store and argon2 run in worker threads).
SQLite in WAL mode lets the CLI write while the server reads.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import argon2

from mailstack.base import scram
from mailstack.base.config import to_ascii_domain
from mailstack.base.errors import ExistsError, NotFoundError, UsageError
from mailstack.base.sqlite_files import open_shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    name TEXT PRIMARY KEY,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    quota_bytes INTEGER NOT NULL DEFAULT 0,
    enabled INTEGER NOT NULL DEFAULT 1,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (address, target)
);
"""
# Added after the first release: ALTERed into databases made before it (Accounts.__init__).
_SCRAM_COLUMN = "scram TEXT"  # RFC 5803 text of the SCRAM-SHA-256 keys; NULL: none yet

_HASHER = argon2.PasswordHasher()  # argon2id, t=3, m=64 MiB, p=4
# Verified when the user does not exist, so that a wrong user costs as much as a wrong password.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))
_MAX_ALIAS_DEPTH = 10


@dataclass(frozen=True, slots=True)
class User:
    address: str
    quota_bytes: int
    enabled: bool
    created: float


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where mail for one recipient goes: local mailboxes and (later) external forwards."""

    mailboxes: tuple[str, ...]
    forwards: tuple[str, ...] = ()

    @property
    def is_known(self) -> bool:
        return bool(self.mailboxes or self.forwards)


# RFC 5322 §3.2.3 atext, plus RFC 6532 §3.2's UTF-8 beyond ASCII (printable, not a surrogate:
# bytes that were not UTF-8 arrive as surrogates from a surrogateescape decode).
_ATEXT = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
)


def _is_atext(c: str) -> bool:
    return c in _ATEXT or (c > "\x7f" and c.isprintable() and not "\ud800" <= c <= "\udfff")


def normalize_address(address: str) -> str:
    """'Alice@Bücher.DE' -> 'alice@xn--bcher-kva.de'; '@Example.com' (catch-all) keeps its '@'.

    The local part must be a dot-atom (RFC 5321 §4.1.2 Dot-string; UTF-8 allowed, RFC 6531):
    quoted local parts cannot name an account here. Raises UsageError for anything else.
    """
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at or not domain or any(c in address for c in ' \t\r\n<>,;"\\'):
        raise UsageError(f"{address!r} is not an email address (expected local@domain)")
    try:
        domain = to_ascii_domain(domain)
    except UnicodeError:
        raise UsageError(f"{address!r}: the domain is not a valid domain name") from None
    if not domain or ".." in domain or domain.startswith("."):
        raise UsageError(f"{address!r}: the domain is not a valid domain name")
    if len(local) > 64 or ".." in local or local.startswith(".") or local.endswith("."):
        raise UsageError(f"{address!r}: the local part is not valid")
    if not all(_is_atext(c) or c == "." for c in local):
        bad = next(c for c in local if not (_is_atext(c) or c == "."))
        raise UsageError(f"{address!r}: the local part may not contain {bad!r}")
    return f"{local.lower()}@{domain}"


def split_plus(address: str) -> str | None:
    """'alice+tag@x' -> 'alice@x'; None when there is no '+' detail."""
    local, _, domain = address.rpartition("@")
    base, plus, _ = local.partition("+")
    return f"{base}@{domain}" if plus and base else None


def generate_password() -> str:
    """A random password for `user add` without one: 20 URL-safe characters (~120 bits)."""
    return secrets.token_urlsafe(15)


def _setup(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")


class Accounts:
    """The account database. Safe to share between threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._conn().executescript(_SCHEMA)  # executescript manages its own transaction
        self._add_scram_column()

    def _add_scram_column(self) -> None:
        def has_it(db: sqlite3.Connection) -> bool:
            return "scram" in {row[1] for row in db.execute("PRAGMA table_info(users)")}

        if has_it(self._conn()):  # the usual case: no write, no lock (read-only users too)
            return
        with self._tx() as db:  # IMMEDIATE: two processes opening an old file add it once
            if not has_it(db):
                db.execute(f"ALTER TABLE users ADD COLUMN {_SCRAM_COLUMN}")

    # -- plumbing ------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = open_shared(self.path, _setup, timeout_s=10)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def data_version(self) -> int:
        """Differs from the last answer in this thread whenever anyone else (a CLI call, another
        thread or process) committed a change meanwhile: what lookup caches compare. Cheap: the
        WAL index in shared memory, no file read."""
        return int(self._conn().execute("PRAGMA data_version").fetchone()[0])

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- domains -------------------------------------------------------------------------------
    def add_domain(self, domain: str, *, exist_ok: bool = False) -> str:
        name = to_ascii_domain(domain)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM domains WHERE name=?", (name,)).fetchone():
                if exist_ok:
                    return name
                raise ExistsError(f"domain {name} is already hosted here")
            db.execute("INSERT INTO domains VALUES (?, ?)", (name, time.time()))
        return name

    def delete_domain(self, domain: str) -> str:
        """Stop hosting `domain`; refused while users or aliases (a catch-all too) are in it,
        so no mail address silently stops working."""
        name = to_ascii_domain(domain)
        with self._tx() as db:
            if not db.execute("SELECT 1 FROM domains WHERE name=?", (name,)).fetchone():
                raise NotFoundError(
                    f"domain {name} is not hosted here", hint="see `mailstack domain list`"
                )
            users = db.execute("SELECT COUNT(*) FROM users WHERE domain=?", (name,)).fetchone()[0]
            aliases = sum(
                1
                for (address,) in db.execute("SELECT DISTINCT address FROM aliases")
                if address.rpartition("@")[2] == name
            )
            if users or aliases:
                raise ExistsError(
                    f"domain {name} still has {users} user(s) and {aliases} alias(es)",
                    hint="delete them first (mailstack user del, mailstack alias del)",
                )
            db.execute("DELETE FROM domains WHERE name=?", (name,))
        return name

    def domains(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT name FROM domains ORDER BY name")]

    def is_local_domain(self, domain: str) -> bool:
        try:
            name = to_ascii_domain(domain)
        except UnicodeError:
            return False
        row = self._conn().execute("SELECT 1 FROM domains WHERE name=?", (name,)).fetchone()
        return row is not None

    # -- users ---------------------------------------------------------------------------------
    def add_user(self, address: str, password: str, *, quota_bytes: int = 0) -> User:
        addr = normalize_address(address)
        domain = addr.rpartition("@")[2]
        if not addr.partition("@")[0]:
            raise UsageError(f"{address!r}: an account needs a local part")
        if not self.is_local_domain(domain):
            raise NotFoundError(
                f"domain {domain} is not hosted here",
                hint=f"run `mailstack domain add {domain}` first",
            )
        pw_hash = _HASHER.hash(password)
        scram_keys = _scram_text(password)
        with self._tx() as db:
            if db.execute("SELECT 1 FROM users WHERE address=?", (addr,)).fetchone():
                raise ExistsError(f"user {addr} already exists")
            if db.execute("SELECT 1 FROM aliases WHERE address=?", (addr,)).fetchone():
                raise ExistsError(f"{addr} is an alias", hint=f"mailstack alias del {addr}")
            created = time.time()
            db.execute(
                "INSERT INTO users (address, domain, password_hash, quota_bytes, enabled, created,"
                " scram) VALUES (?, ?, ?, ?, 1, ?, ?)",
                (addr, domain, pw_hash, quota_bytes, created, scram_keys),
            )
        return User(addr, quota_bytes, True, created)

    def get_user(self, address: str) -> User | None:
        try:
            addr = normalize_address(address)
        except UsageError:
            return None
        row = (
            self._conn()
            .execute(
                "SELECT address, quota_bytes, enabled, created FROM users WHERE address=?", (addr,)
            )
            .fetchone()
        )
        return User(row[0], row[1], bool(row[2]), row[3]) if row else None

    def require_user(self, address: str) -> User:
        user = self.get_user(address)
        if user is None:
            raise NotFoundError(f"no such user: {address}", hint="see `mailstack user list`")
        return user

    def users(self) -> list[User]:
        rows = self._conn().execute(
            "SELECT address, quota_bytes, enabled, created FROM users ORDER BY domain, address"
        )
        return [User(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    def set_password(self, address: str, password: str) -> None:
        user = self.require_user(address)
        with self._tx() as db:
            db.execute(
                "UPDATE users SET password_hash=?, scram=? WHERE address=?",
                (_HASHER.hash(password), _scram_text(password), user.address),
            )

    def set_quota(self, address: str, quota_bytes: int) -> None:
        user = self.require_user(address)
        with self._tx() as db:
            db.execute(
                "UPDATE users SET quota_bytes=? WHERE address=?", (quota_bytes, user.address)
            )

    def set_enabled(self, address: str, enabled: bool) -> None:
        user = self.require_user(address)
        with self._tx() as db:
            db.execute("UPDATE users SET enabled=? WHERE address=?", (int(enabled), user.address))

    def delete_user(self, address: str) -> None:
        user = self.require_user(address)
        with self._tx() as db:
            db.execute("DELETE FROM users WHERE address=?", (user.address,))
            db.execute("DELETE FROM aliases WHERE target=?", (user.address,))

    def quota_bytes(self, address: str) -> int:
        user = self.get_user(address)
        return user.quota_bytes if user else 0

    # -- authentication ------------------------------------------------------------------------
    def authenticate(self, address: str, password: str) -> str | None:
        """The canonical address when the password is right and the account enabled, else None.

        Blocking (argon2 takes ~50 ms by design): call it from a worker thread.
        """
        try:
            addr = normalize_address(address)
        except UsageError:
            addr = ""
        row = (
            self._conn()
            .execute("SELECT password_hash, enabled, scram FROM users WHERE address=?", (addr,))
            .fetchone()
        )
        stored, enabled = (row[0], bool(row[1])) if row else (_DUMMY_HASH, False)
        ok = _verify(stored, password)
        if not (ok and row and enabled):
            return None
        # A password set before SCRAM existed gets its keys now that we know it (only while the
        # row still holds the hash we verified: a parallel `user passwd` wins).
        keys = _scram_text(password) if row[2] is None else None
        if (
            stored.startswith("$argon2") and _HASHER.check_needs_rehash(stored)
        ) or not stored.startswith("$argon2"):
            with self._tx() as db:
                db.execute(
                    "UPDATE users SET password_hash=?, scram=COALESCE(scram, ?) WHERE address=?",
                    (_HASHER.hash(password), keys, addr),
                )
        elif keys is not None:  # the hash stays, so web sessions' credential_stamp stays too
            with self._tx() as db:
                db.execute(
                    "UPDATE users SET scram=?"
                    " WHERE address=? AND scram IS NULL AND password_hash=?",
                    (keys, addr, stored),
                )
        return addr

    def scram_keys(self, address: str) -> scram.ScramKeys | None:
        """The account's SCRAM-SHA-256 keys, or None: no such enabled account, or no keys yet.
        `address` is canonical (the login path's `canonical_name`)."""
        row = (
            self._conn()
            .execute("SELECT scram, enabled FROM users WHERE address=?", (address,))
            .fetchone()
        )
        if row is None or not row[1] or row[0] is None:
            return None
        try:
            return scram.ScramKeys.from_text(row[0])
        except ValueError:
            return None  # damaged by hand: SCRAM fails, PLAIN works, `user passwd` mends it

    def credential_stamp(self, address: str) -> str | None:
        """A short digest of the account's password hash, or None when there is no such enabled
        account. A web session keeps the one of its login and ends when it changes: `user
        passwd` (or a rehash at login) ends every web login of the account, in any process."""
        try:
            addr = normalize_address(address)
        except UsageError:
            return None
        row = (
            self._conn()
            .execute("SELECT password_hash, enabled FROM users WHERE address=?", (addr,))
            .fetchone()
        )
        if row is None or not row[1]:
            return None
        return hashlib.sha256(str(row[0]).encode()).hexdigest()[:32]

    def verify_password(self, address: str, password: str) -> bool:
        """Is `password` the account's password? Changes nothing (no rehash, enabled or not):
        what `user passwd --check` answers, so provisioning changes a password only when it
        differs. Blocking, as authenticate()."""
        user = self.require_user(address)
        row = (
            self._conn()
            .execute("SELECT password_hash FROM users WHERE address=?", (user.address,))
            .fetchone()
        )
        return row is not None and _verify(row[0], password)

    # -- aliases -------------------------------------------------------------------------------
    def add_alias(
        self,
        address: str,
        targets: list[str],
        *,
        allow_external: bool = True,
        allow_unknown: bool = True,
    ) -> list[str]:
        """Add `address` -> targets; '@domain' is a catch-all. Refuses loops and duplicates.

        What an admin types goes through `mailstack alias add`, which is strict: a target in a
        hosted domain must exist (allow_unknown=False: a typo there would bounce), and one
        outside must be asked for (allow_external=False unless --external: a mistyped domain
        would forward mail outside). Returns the alias's whole target list."""
        if address.strip().startswith("@"):
            domain = to_ascii_domain(address.strip()[1:])
            addr = f"@{domain}"
        else:
            addr = normalize_address(address)
            domain = addr.rpartition("@")[2]
        if not self.is_local_domain(domain):
            raise NotFoundError(
                f"domain {domain} is not hosted here",
                hint=f"run `mailstack domain add {domain}` first",
            )
        if not targets:
            raise UsageError("an alias needs at least one target")
        norm_targets = [normalize_address(t) for t in targets]
        if self.get_user(addr) is not None:
            raise ExistsError(f"{addr} is a user; an alias cannot shadow it")
        for t in norm_targets:
            if not self.is_local_domain(t.rpartition("@")[2]):
                if not allow_external:
                    raise UsageError(
                        f"{t} is not in a hosted domain: mail to {addr} would be forwarded outside",
                        hint="check the spelling; to forward outside on purpose, add --external",
                    )
            elif not allow_unknown and not self._names_something(t):
                raise NotFoundError(
                    f"{t} does not exist (no user or alias)",
                    hint=f"add it first: mailstack user add {t}",
                )
        for t in norm_targets:
            if t == addr:
                raise UsageError(f"alias {addr} cannot point to itself")
            if self._reaches(t, addr, depth=0):
                raise UsageError(
                    f"alias {addr} -> {t} would make a loop ({t} leads back to {addr})"
                )
        with self._tx() as db:
            existing = {
                r[0] for r in db.execute("SELECT target FROM aliases WHERE address=?", (addr,))
            }
            new = [t for t in dict.fromkeys(norm_targets) if t not in existing]
            if not new:
                raise ExistsError(f"alias {addr} already has these targets")
            db.executemany("INSERT INTO aliases VALUES (?, ?)", [(addr, t) for t in new])
            return sorted(existing | set(new))

    def _names_something(self, address: str) -> bool:
        """A user or alias by that name (or its address without +detail); a catch-all that
        would swallow it does not count: that is how a typo goes unnoticed."""
        base = split_plus(address)
        return any(
            self.get_user(a) is not None or bool(self._alias_targets(a))
            for a in (address, *([base] if base else []))
        )

    def _reaches(self, start: str, goal: str, depth: int) -> bool:
        if depth > _MAX_ALIAS_DEPTH:
            return True  # too deep to be anything but a loop in practice
        for t in self._alias_targets(start):
            if t == goal or self._reaches(t, goal, depth + 1):
                return True
        return False

    def _alias_targets(self, address: str) -> list[str]:
        return [
            r[0]
            for r in self._conn().execute(
                "SELECT target FROM aliases WHERE address=? ORDER BY target", (address,)
            )
        ]

    def aliases(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for addr, target in self._conn().execute(
            "SELECT address, target FROM aliases ORDER BY address, target"
        ):
            out.setdefault(addr, []).append(target)
        return out

    def delete_alias(self, address: str, targets: Sequence[str] = ()) -> list[str]:
        """Delete the alias, or only the given targets of it; returns the targets left."""
        addr = (
            f"@{to_ascii_domain(address.strip()[1:])}"
            if address.strip().startswith("@")
            else normalize_address(address)
        )
        with self._tx() as db:
            if not targets:
                if db.execute("DELETE FROM aliases WHERE address=?", (addr,)).rowcount == 0:
                    raise NotFoundError(f"no such alias: {addr}", hint="see `mailstack alias list`")
                return []
            for target in dict.fromkeys(normalize_address(t) for t in targets):
                gone = db.execute(
                    "DELETE FROM aliases WHERE address=? AND target=?", (addr, target)
                ).rowcount
                if not gone:
                    raise NotFoundError(
                        f"{addr} has no target {target}", hint="see `mailstack alias list`"
                    )
            return [
                r[0]
                for r in db.execute(
                    "SELECT target FROM aliases WHERE address=? ORDER BY target", (addr,)
                )
            ]

    # -- lookups for SMTP and IMAP -------------------------------------------------------------
    def resolve(self, recipient: str) -> Resolution:
        """Final local mailboxes (and external forwards) for a recipient address.

        Order (as Postfix virtual(5)): exact user, exact alias, the same without +detail,
        then the domain's catch-all. Unknown recipients resolve to nothing.
        """
        try:
            addr = normalize_address(recipient)
        except UsageError:
            return Resolution(())
        mailboxes: list[str] = []
        forwards: list[str] = []
        self._expand(addr, mailboxes, forwards, depth=0, top=True)
        return Resolution(tuple(dict.fromkeys(mailboxes)), tuple(dict.fromkeys(forwards)))

    def _expand(
        self, addr: str, mailboxes: list[str], forwards: list[str], *, depth: int, top: bool
    ) -> None:
        if depth > _MAX_ALIAS_DEPTH:
            return
        domain = addr.rpartition("@")[2]
        candidates = [addr]
        if (base := split_plus(addr)) is not None:
            candidates.append(base)
        for candidate in candidates:
            if self.get_user(candidate) is not None:
                mailboxes.append(candidate)
                return
            if targets := self._alias_targets(candidate):
                for t in targets:
                    self._expand(t, mailboxes, forwards, depth=depth + 1, top=False)
                return
        if not self.is_local_domain(domain):
            if not top:
                forwards.append(addr)
            return
        if top and (targets := self._alias_targets(f"@{domain}")):
            for t in targets:
                self._expand(t, mailboxes, forwards, depth=depth + 1, top=False)

    def owns(self, user: str, address: str) -> bool:
        """May `user` send as `address`? Its own address, its +details, aliases reaching it."""
        try:
            addr = normalize_address(address)
        except UsageError:
            return False
        if addr == user or split_plus(addr) == user:
            return True
        if addr.partition("@")[0] == "" or self.get_user(addr) is not None:
            return False
        return user in self.resolve(addr).mailboxes and bool(
            self._alias_targets(addr) or self._alias_targets(split_plus(addr) or "")
        )


def _scram_text(password: str) -> str | None:
    """What the scram column holds for `password`; None when SASLprep refuses the password
    (RFC 5802 §2.2: it could never be typed into a SCRAM client the same way)."""
    try:
        return scram.make_keys(password).to_text()
    except ValueError:
        return None


def _verify(stored: str, password: str) -> bool:
    try:
        if stored.startswith("$argon2"):
            return _HASHER.verify(stored, password)
        if stored.startswith(("$2a$", "$2b$", "$2y$")):
            return _verify_bcrypt(stored, password)
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False
    return False


def _verify_bcrypt(stored: str, password: str) -> bool:
    try:
        import bcrypt  # optional: only for hashes imported from another server
    except ImportError:
        return False
    return bool(bcrypt.checkpw(password.encode(), stored.encode()))
