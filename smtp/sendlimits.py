"""Sending limits on submission: how much one account may send, so that one stolen password
cannot turn the server into a spam cannon (and its IP into a blocklist entry).

Limits (`[submission]`, 0 turns one off), each over the last hour (a sliding window):

- `messages_per_hour`, `recipients_per_hour`: per account *from one client network* (IPv4
  /24, IPv6 /64: `network_of`, the blocks one site holds). The budget that a thief spends
  from his network is not the one the real user has at home.
- `account_messages_per_hour`: the account from all networks together (a botnet using one
  stolen password from a thousand addresses), and `network_messages_per_hour`: all accounts
  from one network (one bot with a thousand stolen passwords). Neither may lock out the real
  user, so both exempt the (account, network) pairs that have sent mail for more than
  TRUSTED_AFTER_S: the user's own office and home keep sending while the thief's new networks
  are refused. (The same idea as the login throttle's exemption of known-good networks.)
- `recipients_per_message`: checked at RCPT.

The counts live in `DIR/sendlimits.sqlite3` (WAL, as throttle.sqlite3): they survive a
restart (waiting for one buys no fresh budget) and every process that accepts submissions
shares them. They are kept per (account, network, minute), so reading a budget sums at most 61
rows however much was sent (a row per message made each 250 cost time in proportion to the
last hour's mail: 2 ms at 5,000). The hour is counted to the minute: a message counts for 60
to 61 minutes, never less than an hour. `check_usage` is the pure decision; `SendLog` the
file. A message is counted when its DATA is accepted (`reserve`, atomic under BEGIN IMMEDIATE
so that parallel sessions cannot all slip under a limit together) and uncounted if it could not
be made durable (`release`).

Replies: permanent `550 5.7.1` naming the limit and its key, as the big providers answer a
sending quota (a retry within the hour would only fail again; the user sees the reason).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mailstack.smtp.replies import Reply

from mailstack.base.config import SubmissionConfig
from mailstack.base.sqlite_files import open_shared

log = logging.getLogger(__name__)

WINDOW_S = 3600.0  # "per hour"
MINUTE_S = 60
TRUSTED_AFTER_S = 86400.0  # a pair that has sent for a day is the user's own, not a thief's
_FORGET_PAIR_S = 90 * 86400.0  # a network unused this long is no longer known

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent_minute (
    account TEXT NOT NULL,
    network TEXT NOT NULL,
    minute INTEGER NOT NULL,
    messages INTEGER NOT NULL,
    recipients INTEGER NOT NULL,
    PRIMARY KEY (account, network, minute)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sent_minute_network ON sent_minute (network, minute);
CREATE TABLE IF NOT EXISTS known (
    account TEXT NOT NULL,
    network TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (account, network)
);
"""
# Files written before the counts were kept per minute had a row per message: their last
# hour moves into the buckets once (BEGIN IMMEDIATE: one process does it), then the table goes.
_MIGRATE = (
    "INSERT INTO sent_minute SELECT account, network, CAST(at / 60 AS INTEGER), count(*),"
    " sum(recipients) FROM sent WHERE at > ? GROUP BY 1, 2, 3"
)


@dataclass(frozen=True, slots=True)
class Counted:
    """One message counted by `SendLog.reserve`: what `release` needs to uncount it."""

    account: str
    network: str
    minute: int
    recipients: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What an (account, network) pair and its wider groups sent in the last hour."""

    pair_messages: int = 0
    pair_recipients: int = 0
    account_messages: int = 0
    network_messages: int = 0
    is_trusted: bool = False  # the account has sent from this network for over a day


def limit_reply(what: str, limit: int, key: str) -> Reply:
    return Reply(550, "5.7.1", f"Sending limit reached: {limit} {what} (submission.{key})")


def check_usage(usage: Usage, limits: SubmissionConfig, recipients: int) -> Reply | None:
    """Pure: may one more message to `recipients` recipients go out? None, or the refusal."""
    if limits.recipients_per_message and recipients > limits.recipients_per_message:
        return recipients_per_message_reply(limits)
    checks = [
        (usage.pair_messages + 1, limits.messages_per_hour, "messages_per_hour", "messages"),
        (
            usage.pair_recipients + recipients,
            limits.recipients_per_hour,
            "recipients_per_hour",
            "recipients",
        ),
    ]
    if not usage.is_trusted:
        checks += [
            (
                usage.account_messages + 1,
                limits.account_messages_per_hour,
                "account_messages_per_hour",
                "messages per hour from this account",
            ),
            (
                usage.network_messages + 1,
                limits.network_messages_per_hour,
                "network_messages_per_hour",
                "messages per hour from your network",
            ),
        ]
    for wanted, limit, key, what in checks:
        if limit and wanted > limit:
            if what in ("messages", "recipients"):
                what = f"{what} per hour from this account and network"
            return limit_reply(what, limit, key)
    return None


def recipients_per_message_reply(limits: SubmissionConfig) -> Reply:
    return limit_reply(
        "recipients per message", limits.recipients_per_message, "recipients_per_message"
    )


def _first_minute(now: float) -> int:
    """The oldest minute bucket of the hour before `now` (the one `now - WINDOW_S` is in)."""
    return int((now - WINDOW_S) // MINUTE_S)


def _migrate(conn: sqlite3.Connection, now: float) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='sent'").fetchone():
            conn.execute(_MIGRATE, (now - WINDOW_S,))
            conn.execute("DROP TABLE sent")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SendLog:
    """The file of recent sends; blocking (callers use asyncio.to_thread). Connections are
    per thread, as the thread pool of `asyncio.to_thread` calls it from several."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._local = threading.local()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():  # who sent how much from where: not for everyone
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            conn = open_shared(self.path, self._setup, timeout_s=5.0)
            self._local.conn = conn
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")  # a crash may forget a count, no more
        conn.executescript(_SCHEMA)
        _migrate(conn, self.clock())

    def usage(self, account: str, network: str) -> Usage:
        return self._usage(self._conn(), account, network, self.clock())

    @staticmethod
    def _usage(db: sqlite3.Connection, account: str, network: str, now: float) -> Usage:
        since = _first_minute(now)
        pair_messages, pair_recipients = db.execute(
            "SELECT coalesce(sum(messages), 0), coalesce(sum(recipients), 0) FROM sent_minute"
            " WHERE account=? AND network=? AND minute>=?",
            (account, network, since),
        ).fetchone()
        (account_messages,) = db.execute(
            "SELECT coalesce(sum(messages), 0) FROM sent_minute WHERE account=? AND minute>=?",
            (account, since),
        ).fetchone()
        (network_messages,) = db.execute(
            "SELECT coalesce(sum(messages), 0) FROM sent_minute WHERE network=? AND minute>=?",
            (network, since),
        ).fetchone()
        row = db.execute(
            "SELECT first FROM known WHERE account=? AND network=?", (account, network)
        ).fetchone()
        return Usage(
            pair_messages=int(pair_messages),
            pair_recipients=int(pair_recipients),
            account_messages=int(account_messages),
            network_messages=int(network_messages),
            is_trusted=row is not None and float(row[0]) <= now - TRUSTED_AFTER_S,
        )

    def reserve(
        self, account: str, network: str, recipients: int, limits: SubmissionConfig
    ) -> Counted | Reply:
        """Count one message if every limit allows it (`release` uncounts it), or the
        refusal. Atomic: two sessions cannot both take the last unit of a budget."""
        db = self._conn()
        now = self.clock()
        minute = int(now // MINUTE_S)
        db.execute("BEGIN IMMEDIATE")
        try:
            refusal = check_usage(self._usage(db, account, network, now), limits, recipients)
            if refusal is not None:
                db.execute("ROLLBACK")
                return refusal
            db.execute(
                "INSERT INTO sent_minute VALUES (?, ?, ?, 1, ?) ON CONFLICT DO UPDATE SET"
                " messages=messages+1, recipients=recipients+excluded.recipients",
                (account, network, minute, recipients),
            )
            db.execute(
                "INSERT INTO known VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET last=excluded.last",
                (account, network, now, now),
            )
            if minute != getattr(self._local, "pruned", None):  # once a minute per thread
                db.execute("DELETE FROM sent_minute WHERE minute<?", (_first_minute(now),))
                db.execute("DELETE FROM known WHERE last<?", (now - _FORGET_PAIR_S,))
                self._local.pruned = minute
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return Counted(account, network, minute, recipients)

    def release(self, counted: Counted) -> None:
        """Uncount a reserved message that was not accepted after all."""
        self._conn().execute(
            "UPDATE sent_minute SET messages=max(0, messages-1),"
            " recipients=max(0, recipients-?) WHERE account=? AND network=? AND minute=?",
            (counted.recipients, counted.account, counted.network, counted.minute),
        )

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
