"""Recent deliveries and rejections: one SQLite file that every serve process writes in
batches (mailstack/web/events.py), shown on the admin page, kept across restarts."""

from __future__ import annotations

import asyncio
import logging
import re
import smtplib
import sqlite3
import time
from pathlib import Path

import pytest

from mailstack.web.events import EventRecorder, latest, record_events, stop_recording
from tests.web.stack import ADMIN, ADMIN_PASSWORD, USER, WebStack, make_deployment
from tests.web.test_pages_http import EVENT, Browser

SMTP_LOG = logging.getLogger("mailstack.smtp.session")


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mailstack")  # events are INFO records


def _transaction(rcpt: str, reply: str) -> None:
    SMTP_LOG.info("from=<%s> rcpts=%s size=%d result=%s", "a@example.org", [rcpt], 10, reply)


def _rows(path: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT kind, text FROM events ORDER BY id").fetchall()


def test_events_are_written_in_batches_not_per_message(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    recorder = record_events(path)
    try:
        recorder.flush_s = 3600.0  # no timer write during the test: only flush() writes
        for n in range(20):
            _transaction(f"u{n}@example.com", "250 2.0.0 queued")
        logging.getLogger("mailstack.imap").info("login: %s", "someone")  # not an event
        assert not path.exists() or _rows(path) == []  # nothing written per message
        recorder.flush()
        rows = _rows(path)
        assert len(rows) == 20
        assert rows[0] == (
            "delivered",
            "from=<a@example.org> rcpts=['u0@example.com'] size=10 result=250 2.0.0 queued",
        )
        _transaction("x@example.com", "550 5.1.1 no such user")
        # The page's reader writes this process's pending events first: none is missing.
        assert [(e.kind, "x@example.com" in e.text) for e in latest(path, 1)] == [
            ("rejected", True)
        ]
    finally:
        stop_recording(recorder)
    assert path.stat().st_mode & 0o077 == 0  # addresses: readable by mailstack only


def test_the_timer_writes_within_its_interval(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    recorder = EventRecorder(path, flush_s=0.05)
    SMTP_LOG.addHandler(recorder)
    try:
        _transaction("a@example.com", "250 ok")
        deadline = time.monotonic() + 10
        while not latest(path):  # (the table may not be there yet: then [])
            assert time.monotonic() < deadline, "the timer never wrote the event"
            time.sleep(0.02)
    finally:
        SMTP_LOG.removeHandler(recorder)
        recorder.close()


def test_two_writers_share_the_file_and_it_stays_bounded(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    # Two recorders stand for two processes (serve and a worker): one file, each its batches.
    first = EventRecorder(path, keep_rows=30)
    second = EventRecorder(path, keep_rows=30)
    try:
        for n in range(25):
            for recorder, who in ((first, "main"), (second, "worker")):
                record = SMTP_LOG.makeRecord(
                    SMTP_LOG.name, logging.INFO, __file__, 1, "%s refused: %s", (who, n), None
                )
                recorder.handle(record)
            if n % 5 == 4:
                first.flush()
                second.flush()
        rows = _rows(path)
        assert len(rows) == 30  # the newest 30 of 50
        assert rows[-1] == ("rejected", "worker refused: 24")
        assert {text.split()[0] for _, text in rows} == {"main", "worker"}
    finally:
        first.close()
        second.close()


def test_old_events_are_dropped_after_their_days(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    recorder = EventRecorder(path, keep_days=1)
    try:
        old = SMTP_LOG.makeRecord(SMTP_LOG.name, logging.INFO, "", 1, "old refused", (), None)
        old.created = time.time() - 2 * 86400
        recorder.handle(old)
        recorder.handle(
            SMTP_LOG.makeRecord(SMTP_LOG.name, logging.INFO, "", 1, "new refused", (), None)
        )
        recorder.flush()
        assert _rows(path) == [("rejected", "new refused")]
    finally:
        recorder.close()


def _send(port: int, rcpt: str) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        try:
            smtp.sendmail("sender@example.org", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused as exc:
            return str(exc)
    return ""


async def _admin_events(stack: WebStack, want: int) -> list[tuple[str, str]]:
    """The admin page's events once at least `want` are listed (workers write within 1 s)."""
    async with Browser(stack) as b:
        status, _, _ = await b.log_in(ADMIN, ADMIN_PASSWORD)
        assert status == 303
        deadline = time.monotonic() + 15
        while True:
            status, text = await b.get("/admin")
            assert status == 200
            events: list[tuple[str, str]] = EVENT.findall(text)
            if len(events) >= want or time.monotonic() > deadline:
                return events
            await asyncio.sleep(0.2)


async def test_a_workers_delivery_and_rejection_show_and_survive_a_restart(
    web_dir: Path,
) -> None:
    make_deployment(web_dir)
    cfg = web_dir / "mailstack.toml"
    cfg.write_text(cfg.read_text().replace("workers = 0", "workers = 1"))
    with WebStack(web_dir) as stack:
        assert any("SMTP worker" in line for line in stack.serve.log), stack.serve.log
        port = stack.port("smtp")
        assert await asyncio.to_thread(_send, port, USER) == ""
        assert "550" in await asyncio.to_thread(_send, port, "nobody@example.com")
        events = await _admin_events(stack, 2)
    assert any(kind == "delivered" and USER in text for kind, text in events), events
    assert any(kind == "rejected" and "nobody@example.com" in text for kind, text in events)
    # The sessions ran in the worker process: its log lines carry its tag.
    worker_lines = [line for line in stack.serve.log if re.search(r"\[w\d+\.", line)]
    assert any("result=250" in line for line in worker_lines), stack.serve.log

    with WebStack(web_dir) as again:  # a new serve: the list comes back from events.sqlite3
        after = await _admin_events(again, 2)
    assert sorted(after) == sorted(events)


def test_a_deleted_file_is_made_again_and_a_broken_one_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.sqlite3"
    recorder = EventRecorder(path)
    try:
        _refuse(recorder, "first")
        recorder.flush()
        for leftover in tmp_path.glob("events.sqlite3*"):  # README: safe to delete
            leftover.unlink()
        _refuse(recorder, "second")
        recorder.flush()
        assert _rows(path) == [("rejected", "second refused")]
        for leftover in tmp_path.glob("events.sqlite3*"):
            leftover.unlink()
        path.write_bytes(b"not a database" * 100)
        for n in range(3):
            _refuse(recorder, f"lost{n}")
            recorder.flush()  # no exception: the mail log goes on, the page lacks these
        warnings = [r for r in caplog.records if "recent events: cannot write" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        recorder.close()


def _refuse(recorder: EventRecorder, who: str) -> None:
    recorder.handle(
        SMTP_LOG.makeRecord(SMTP_LOG.name, logging.INFO, "", 1, f"{who} refused", (), None)
    )
