"""`mailstack queue list|flush|delete` as real subprocesses, and a running `serve` seeing them."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mailstack.delivery.queue import OutboundQueue

from mailstack.base.config import load_config
from mailstack.base.paths import StatePaths
from tests.conftest import run_cli
from tests.delivery.test_remote import Double, dns_server, double
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.external
_fixtures = (dns_server, double)  # used by name

MESSAGE = b"From: alice@example.com\r\nTo: x@a.test\r\nSubject: hi\r\n\r\nhello\r\n"


def point_at(root: Path, dns_port: int, mx_port: int) -> None:
    """Route the deployment's outbound mail through nsd and the test's remote."""
    path = StatePaths(root).config
    text = path.read_text()
    text = text.replace('resolver = ""', f'resolver = "127.0.0.1:{dns_port}"')
    text = text.replace("mx_port = 25", f"mx_port = {mx_port}")
    path.write_text(text)


def logged(serve: ServeProcess, *needles: str) -> None:
    """Wait until serve has logged every needle, in any order (wait_for keeps what it read)."""
    for needle in needles:
        if not any(needle in line for line in serve.log):
            serve.wait_for(needle)


def queue_of(root: Path) -> OutboundQueue:
    paths = StatePaths(root)
    return OutboundQueue(load_config(paths.config), paths)


def test_list_and_delete(deployment_dir: Path) -> None:
    root = deployment_dir
    empty = run_cli(root, "queue", "list", "--json")
    assert (empty.returncode, json.loads(empty.stdout)) == (0, [])
    queue = queue_of(root)
    first = queue.enqueue("alice@example.com", ["x@a.test", "y@b.test"], MESSAGE)
    second = queue.enqueue("", ["z@a.test"], MESSAGE)

    listed = run_cli(root, "queue", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    assert [e["id"] for e in data] == [first, second]
    assert data[0]["mail_from"] == "alice@example.com"
    assert [(r["address"], r["status"], r["attempts"]) for r in data[0]["recipients"]] == [
        ("x@a.test", "pending", 0),
        ("y@b.test", "pending", 0),
    ]

    table = run_cli(root, "queue", "list")
    assert table.returncode == 0
    assert first in table.stdout and "y@b.test" in table.stdout and "<>" in table.stdout

    flushed = run_cli(root, "queue", "flush")
    assert (flushed.returncode, flushed.stdout.strip()) == (0, "3 pending recipient(s) due now")

    deleted = run_cli(root, "queue", "delete", first)
    assert (deleted.returncode, deleted.stdout.strip()) == (0, f"deleted {first}")
    assert [e.id for e in queue.list()] == [second]
    assert not (root / "queue" / "msg" / first).exists()

    again = run_cli(root, "queue", "delete", first)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [f"error: no queued message with id '{first}'"]
    bogus = run_cli(root, "queue", "delete", "../users.sqlite3")
    assert bogus.returncode == 1
    assert len(bogus.stderr.strip().splitlines()) == 1
    assert run_cli(root, "queue", "delete").returncode == 2  # usage: missing ID


async def test_running_serve_delivers_and_sees_flush(
    deployment_dir: Path, dns_server: tuple[str, int], double: Double
) -> None:
    root = deployment_dir
    point_at(root, dns_server[1], double.port)
    queue = queue_of(root)
    qid = queue.enqueue("alice@example.com", ["flaky@b.test", "ok@a.test"], MESSAGE)
    serve = ServeProcess(root)
    try:
        await asyncio.to_thread(serve.start)
        await double.wait_for("ok@a.test")
        # The serve's runner recorded both results (a retry of the 451 is a minute away).
        await asyncio.to_thread(
            logged,
            serve,
            f"{qid}: ok@a.test delivered",
            f"{qid}: flaky@b.test deferred (attempt 1)",
        )
        (entry,) = queue.list()
        assert [r.status for r in entry.recipients] == ["pending", "delivered"]
        double.flaky = False
        flushed = await asyncio.to_thread(run_cli, root, "queue", "flush")
        assert flushed.returncode == 0, flushed.stderr
        (got,) = await double.wait_for("flaky@b.test")
        assert got.content.startswith(b"DKIM-Signature:")
        await asyncio.to_thread(logged, serve, f"{qid}: flaky@b.test delivered")
    finally:
        status = await asyncio.to_thread(serve.stop)
    assert status == 0
    assert queue.list() == []
    assert len(double.to("ok@a.test")) == 1
