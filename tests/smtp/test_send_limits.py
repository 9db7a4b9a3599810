"""Sending limits on submission (smtp/sendlimits.py): the pure decision, the shared SQLite
file (atomic across processes, surviving a restart) and the replies over real sockets.

Loopback gives the wire tests one client network (127.0.0.0/24); what several networks do
to each other is tested on the file itself, which is what the sessions consult.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mailstack.smtp.sendlimits import TRUSTED_AFTER_S, Counted, SendLog, Usage, check_usage
from mailstack.smtp.submission import SubmissionService

from mailstack.base.config import SubmissionConfig, to_toml
from tests.conftest import run_cli
from tests.smtp.test_submission import ALICE, BOB, PASSWORD, Submission, message, thread
from tests.support.smtpserver import build_context

LIMITS = SubmissionConfig(
    messages_per_hour=3,
    recipients_per_hour=5,
    recipients_per_message=2,
    account_messages_per_hour=4,
    network_messages_per_hour=6,
)


# -- the decision ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "recipients", "key"),
    [
        pytest.param(Usage(), 1, None, id="fresh"),
        pytest.param(Usage(), 3, "recipients_per_message", id="too-many-recipients"),
        pytest.param(Usage(pair_messages=2), 1, None, id="last-message"),
        pytest.param(Usage(pair_messages=3), 1, "messages_per_hour", id="pair-messages"),
        pytest.param(Usage(pair_recipients=4), 2, "recipients_per_hour", id="pair-recipients"),
        pytest.param(Usage(account_messages=4), 1, "account_messages_per_hour", id="account"),
        pytest.param(Usage(network_messages=6), 1, "network_messages_per_hour", id="network"),
        pytest.param(
            Usage(account_messages=40, network_messages=60, is_trusted=True),
            1,
            None,
            id="trusted-pair-exempt-from-ceilings",
        ),
        pytest.param(
            Usage(pair_messages=3, is_trusted=True), 1, "messages_per_hour", id="trusted-pair-own"
        ),
    ],
)
def test_check_usage(usage: Usage, recipients: int, key: str | None) -> None:
    reply = check_usage(usage, LIMITS, recipients)
    if key is None:
        assert reply is None
    else:
        assert reply is not None
        assert (reply.code, reply.enhanced) == (550, "5.7.1")
        assert f"(submission.{key})" in reply.text


def test_zero_turns_a_limit_off() -> None:
    off = SubmissionConfig(0, 0, 0, 0, 0)
    assert check_usage(Usage(10**6, 10**6, 10**6, 10**6), off, 10**4) is None


# -- the file ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_thief_on_new_networks_cannot_lock_out_the_user_at_home(tmp_path: Path) -> None:
    clock = Clock()
    log = SendLog(tmp_path / "s.sqlite3", clock=clock)
    home, thief1, thief2, thief3 = (
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::/64",
    )
    assert isinstance(log.reserve(ALICE, home, 1, LIMITS), Counted)  # the user's own network
    clock.now += TRUSTED_AFTER_S + 1  # a day later the pair is known
    for network in (thief1, thief2):  # the stolen password, from new networks
        for _ in range(2):
            assert isinstance(log.reserve(ALICE, network, 1, LIMITS), Counted)
    refused = log.reserve(ALICE, thief3, 1, LIMITS)  # the account's ceiling (4 per hour)
    assert not isinstance(refused, Counted)
    assert "account_messages_per_hour" in refused.text
    for _ in range(3):  # home is exempt from the ceiling, within its own budget
        assert isinstance(log.reserve(ALICE, home, 1, LIMITS), Counted)
    assert "(submission.messages_per_hour)" in str(log.reserve(ALICE, home, 1, LIMITS))
    clock.now += 3660  # an hour (counted to the minute) later, everything may send again
    assert isinstance(log.reserve(ALICE, thief3, 1, LIMITS), Counted)


def test_busy_network_does_not_lock_out_its_known_user(tmp_path: Path) -> None:
    clock = Clock()
    log = SendLog(tmp_path / "s.sqlite3", clock=clock)
    office = "192.0.2.0/24"
    assert isinstance(log.reserve(ALICE, office, 1, LIMITS), Counted)
    clock.now += TRUSTED_AFTER_S + 1
    for i in range(6):  # six other (stolen or new) accounts fill the network's hour
        assert isinstance(log.reserve(f"u{i}@example.com", office, 1, LIMITS), Counted)
    refused = log.reserve("new@example.com", office, 1, LIMITS)
    assert "network_messages_per_hour" in str(refused)
    assert isinstance(log.reserve(ALICE, office, 1, LIMITS), Counted)  # known here: exempt


def test_release_gives_the_budget_back(tmp_path: Path) -> None:
    log = SendLog(tmp_path / "s.sqlite3")
    ids = [log.reserve(ALICE, "n", 1, LIMITS) for _ in range(3)]
    assert all(isinstance(i, Counted) for i in ids)
    assert not isinstance(log.reserve(ALICE, "n", 1, LIMITS), Counted)
    assert isinstance(ids[0], Counted)
    log.release(ids[0])
    assert isinstance(log.reserve(ALICE, "n", 1, LIMITS), Counted)
    assert (tmp_path / "s.sqlite3").stat().st_mode & 0o777 == 0o600


def test_a_message_counts_for_an_hour_to_the_minute(tmp_path: Path) -> None:
    clock = Clock()
    log = SendLog(tmp_path / "s.sqlite3", clock=clock)
    start = clock.now = 1_800_000_030.0  # half a minute into a minute
    assert isinstance(log.reserve(ALICE, "n", 2, LIMITS), Counted)
    for later, counted in ((3599, 1), (3600, 1), (3629, 1), (3630, 0)):
        clock.now = start + later  # never less than an hour; at most the minute more
        usage = log.usage(ALICE, "n")
        assert (usage.pair_messages, usage.pair_recipients) == (counted, 2 * counted), later


def test_a_file_with_a_row_per_message_keeps_its_last_hour(tmp_path: Path) -> None:
    # sendlimits.sqlite3 as written before the per-minute counts.
    path = tmp_path / "s.sqlite3"
    now = time.time()
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE sent (id INTEGER PRIMARY KEY, account TEXT NOT NULL,"
            " network TEXT NOT NULL, at REAL NOT NULL, recipients INTEGER NOT NULL)"
        )
        rows = [(ALICE, "n", now - 60 * i, 3) for i in range(3)]
        rows.append((ALICE, "n", now - 7200, 1))  # older than the hour: gone
        db.executemany("INSERT INTO sent (account, network, at, recipients) VALUES (?,?,?,?)", rows)
    db.close()
    usage = SendLog(path).usage(ALICE, "n")
    assert (usage.pair_messages, usage.pair_recipients) == (3, 9)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name='sent'").fetchall() == []
    db.close()


RACER = """
import sys, time
from pathlib import Path
from mailstack.base.config import SubmissionConfig
from mailstack.smtp.sendlimits import Counted, SendLog
log = SendLog(Path(sys.argv[1]))
limits = SubmissionConfig(messages_per_hour=100, account_messages_per_hour=0)
log.usage("x", "y")  # connected; now wait for the others
while not Path(sys.argv[2]).exists():
    time.sleep(0.001)
print(sum(isinstance(log.reserve("alice@example.com", "n", 1, limits), Counted) for _ in range(40)))
"""


def test_processes_share_one_budget_and_never_overshoot(tmp_path: Path) -> None:
    """Six processes (as SMTP workers would be) race for 100 messages: exactly 100 go out."""
    path, go = tmp_path / "s.sqlite3", tmp_path / "go"
    SendLog(path).usage("x", "y")  # create the file before the race
    racers = [
        subprocess.Popen(
            [sys.executable, "-P", "-c", RACER, str(path), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    time.sleep(0.5)  # let them start and connect (no harm if one is late)
    go.touch()
    granted = [int(p.communicate(timeout=120)[0]) for p in racers]
    assert sum(granted) == 100, granted


# -- over the wire -----------------------------------------------------------------------------


class limited:  # noqa: N801 - used like a function
    """The submission listeners with LIMITS (tests/smtp/test_submission.py's `running`)."""

    def __init__(self, root: Path, limits: SubmissionConfig = LIMITS) -> None:
        self.root, self.limits = root, limits

    async def __aenter__(self) -> Submission:
        base, _ca = build_context(self.root, queue=True)
        config = dataclasses.replace(base.config, submission=self.limits)
        ctx = dataclasses.replace(base, config=config)
        ctx.events.bind(asyncio.get_running_loop())
        services = (
            SubmissionService(ctx, implicit_tls=False),
            SubmissionService(ctx, implicit_tls=True),
        )
        starttls = await services[0].listen("127.0.0.1", 0)
        implicit = await services[1].listen("127.0.0.1", 0)
        self.h = Submission(ctx, starttls, implicit, [], services)
        return self.h

    async def __aexit__(self, *exc: object) -> None:
        for client in self.h.clients:
            client.close()
        for server in (self.h.starttls, self.h.implicit):
            server.close()
        self.h.ctx.stopping.set()
        for service in self.h.services:
            service.send_log.close()
        self.h.ctx.accounts.close()


@pytest.fixture
async def sub(tmp_path: Path) -> AsyncIterator[Submission]:
    async with limited(tmp_path / "state") as harness:
        yield harness


def _send_all(sub: Submission, count: int, rcpts: list[str]) -> list[tuple[int, bytes]]:
    """`count` messages in one session (both listeners alternate); the MAIL replies."""
    out = []
    for i in range(count):
        smtp = sub.smtps() if i % 2 else sub.smtp()
        if not i % 2:
            smtp.starttls(context=sub.tls())
        smtp.login(ALICE, PASSWORD)
        smtp.ehlo_or_helo_if_needed()
        code, text = smtp.mail(ALICE)
        out.append((code, text))
        if code == 250:
            for r in rcpts:
                assert smtp.rcpt(r)[0] == 250
            assert smtp.data(message(to=", ".join(rcpts)))[0] == 250
        smtp.quit()
    return out


async def test_messages_per_hour_refused_at_mail_and_after_restart(tmp_path: Path) -> None:
    root = tmp_path / "state"
    async with limited(root) as sub:
        replies = await thread(lambda: _send_all(sub, 4, [BOB]))
    assert [c for c, _ in replies] == [250, 250, 250, 550]
    assert replies[3][1] == (
        b"5.7.1 Sending limit reached: 3 messages per hour from this account and network"
        b" (submission.messages_per_hour)"
    )
    assert len(sub.messages(BOB)) == 3
    async with limited(root) as again:  # a restart buys no fresh budget
        assert (await thread(lambda: _send_all(again, 1, [BOB])))[0][0] == 550


async def test_recipients_per_message_and_per_hour_at_rcpt(sub: Submission) -> None:
    def client() -> list[int]:
        smtp = sub.smtp()
        smtp.starttls(context=sub.tls())
        smtp.login(ALICE, PASSWORD)
        codes = []
        smtp.mail(ALICE)
        for rcpt in (BOB, "x@remote.test", "y@remote.test"):
            code, text = smtp.rcpt(rcpt)
            codes.append(code)
        assert text == (
            b"5.7.1 Sending limit reached: 2 recipients per message"
            b" (submission.recipients_per_message)"
        )
        assert smtp.data(message())[0] == 250  # the two accepted ones go
        smtp.mail(ALICE)  # 2 of 5 recipients used this hour
        codes += [smtp.rcpt(r)[0] for r in (BOB, "z@remote.test")]
        assert smtp.data(message())[0] == 250
        smtp.mail(ALICE)  # 4 of 5: one more recipient fits, the second would not
        codes += [smtp.rcpt(r)[0] for r in (BOB, "w@remote.test")]
        smtp.quit()
        return codes

    assert await thread(client) == [250, 250, 550, 250, 250, 250, 550]


async def test_queue_list_shows_the_submitting_user(sub: Submission) -> None:
    def client() -> None:
        smtp = sub.smtps()
        smtp.login(ALICE, PASSWORD)
        smtp.sendmail(ALICE, ["far@remote.test"], message(to="far@remote.test"))
        smtp.quit()

    await thread(client)
    (entry,) = sub.queue.list()
    assert entry.user == ALICE
    sub.ctx.paths.config.write_text(to_toml(sub.ctx.config))
    listed = await thread(lambda: run_cli(sub.ctx.paths.root, "queue", "list", "--json"))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)[0]["user"] == ALICE
    table = await thread(lambda: run_cli(sub.ctx.paths.root, "queue", "list"))
    assert "user" in table.stdout
    assert ALICE in table.stdout
