"""Aliases that forward outside: the MX hands those targets to the outbound queue.

Local copies and the queued copy are all or nothing: without a queue such a recipient is
deferred (451), never accepted with a target silently dropped.
"""

from __future__ import annotations

import asyncio
import smtplib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from tests.support.smtpserver import SmtpHarness, running_smtp

T = TypeVar("T")
MESSAGE = b"From: sender@example.net\r\nSubject: fwd\r\n\r\nplease pass this on\r\n"


async def in_thread(fn: Callable[[], T]) -> T:
    """Run a blocking client outside the default pool (the server's lookups use that one)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:  # handed to the awaiting test
            loop.call_soon_threadsafe(future.set_exception, exc)
        else:
            loop.call_soon_threadsafe(future.set_result, result)

    threading.Thread(target=run, daemon=True).start()
    return await future


def send(h: SmtpHarness, rcpts: list[str]) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(h.host, h.port, timeout=30) as client:
        return client.sendmail("sender@example.net", rcpts, MESSAGE)


async def test_forwarding_alias_is_queued_and_local_targets_delivered(tmp_path: Path) -> None:
    async with running_smtp(tmp_path / "state", queue=True) as h:
        h.ctx.accounts.add_alias("fwd@example.com", ["alice@example.com", "friend@elsewhere.test"])
        assert h.ctx.queue is not None

        def send_one() -> tuple[int, bytes]:
            with smtplib.SMTP(h.host, h.port, timeout=30) as client:
                client.ehlo()
                client.mail("sender@example.net")
                assert client.rcpt("fwd@example.com")[0] == 250
                return client.data(MESSAGE)

        code, text = await in_thread(send_one)
        assert code == 250
        (local,) = h.messages("alice@example.com")
        assert b"please pass this on" in local
        (entry,) = h.ctx.queue.list()
        # The reply names the queue entry, as `mailstack queue list` shows it.
        assert text == f"2.0.0 OK: queued as {entry.id}".encode()
        # The envelope sender in SRS form at our domain (so SPF passes at the next hop).
        assert entry.mail_from.startswith("SRS0=")
        assert entry.mail_from.endswith("=example.net=sender@example.com")
        assert [r.address for r in entry.recipients] == ["friend@elsewhere.test"]
        queued = (h.ctx.paths.queue_dir / "msg" / entry.id).read_bytes()
        assert queued.startswith(b"Received: from ")  # our trace line first
        assert b"by mail.example.com (mailstack) with ESMTP" in queued
        assert queued.endswith(b"please pass this on\r\n")
        assert not queued.startswith(b"DKIM-Signature:")  # not ours to sign


async def test_without_a_queue_forwarding_recipients_are_deferred(tmp_path: Path) -> None:
    async with running_smtp(tmp_path / "state") as h:
        h.ctx.accounts.add_alias("fwd@example.com", ["alice@example.com", "friend@elsewhere.test"])
        assert h.ctx.queue is None

        def attempt() -> int:
            with smtplib.SMTP(h.host, h.port, timeout=30) as client:
                client.ehlo("client.example.net")
                client.mail("sender@example.net")
                return client.rcpt("fwd@example.com")[0]

        assert await in_thread(attempt) == 451
        assert h.messages("alice@example.com") == []
