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
shares them. `check_usage` is the pure decision; `SendLog` the file. A message is counted when
its DATA is accepted (`reserve`, atomic under BEGIN IMMEDIATE so that parallel sessions cannot
all slip under a limit together) and uncounted if it could not be made durable (`release`).

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

log = logging.getLogger(__name__)

WINDOW_S = 3600.0  # "per hour"
TRUSTED_AFTER_S = 86400.0  # a pair that has sent for a day is the user's own, not a thief's
_FORGET_PAIR_S = 90 * 86400.0  # a network unused this long is no longer known

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sent (
    id INTEGER PRIMARY KEY,
    account TEXT NOT NULL,
    network TEXT NOT NULL,
    at REAL NOT NULL,
    recipients INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sent_pair ON sent (account, network, at);
CREATE INDEX IF NOT EXISTS sent_network ON sent (network, at);
CREATE INDEX IF NOT EXISTS sent_at ON sent (at);
CREATE TABLE IF NOT EXISTS known (
    account TEXT NOT NULL,
    network TEXT NOT NULL,
    first REAL NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (account, network)
);
"""


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
            conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # a crash may forget a count, no more
            conn.executescript(_SCHEMA)
            self._local.conn = conn
        return conn

    def usage(self, account: str, network: str) -> Usage:
        return self._usage(self._conn(), account, network, self.clock())

    @staticmethod
    def _usage(db: sqlite3.Connection, account: str, network: str, now: float) -> Usage:
        since = now - WINDOW_S
        pair_messages, pair_recipients = db.execute(
            "SELECT count(*), coalesce(sum(recipients), 0) FROM sent"
            " WHERE account=? AND network=? AND at>?",
            (account, network, since),
        ).fetchone()
        (account_messages,) = db.execute(
            "SELECT count(*) FROM sent WHERE account=? AND at>?", (account, since)
        ).fetchone()
        (network_messages,) = db.execute(
            "SELECT count(*) FROM sent WHERE network=? AND at>?", (network, since)
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
    ) -> int | Reply:
        """Count one message if every limit allows it: its row id (for `release`), or the
        refusal. Atomic: two sessions cannot both take the last unit of a budget."""
        db = self._conn()
        now = self.clock()
        db.execute("BEGIN IMMEDIATE")
        try:
            refusal = check_usage(self._usage(db, account, network, now), limits, recipients)
            if refusal is not None:
                db.execute("ROLLBACK")
                return refusal
            cur = db.execute(
                "INSERT INTO sent (account, network, at, recipients) VALUES (?, ?, ?, ?)",
                (account, network, now, recipients),
            )
            db.execute(
                "INSERT INTO known VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET last=excluded.last",
                (account, network, now, now),
            )
            db.execute("DELETE FROM sent WHERE at<=?", (now - WINDOW_S,))
            db.execute("DELETE FROM known WHERE last<?", (now - _FORGET_PAIR_S,))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        assert cur.lastrowid is not None  # noqa: S101 - an INSERT always has one
        return cur.lastrowid

    def release(self, row_id: int) -> None:
        """Uncount a reserved message that was not accepted after all."""
        self._conn().execute("DELETE FROM sent WHERE id=?", (row_id,))

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
