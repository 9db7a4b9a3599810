"""mailstack/base/sqlite_files.py: processes (or threads) opening one new SQLite file at the
same moment. While one switches a new file to WAL and another creates its tables, SQLite
answers "database is locked" at once, without waiting out the busy timeout. Every SQLite
file mailstack keeps must take that as a reason to try again: not as a failed command, and
not as a corrupt file to set aside (which would throw away the file the others just made).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mailstack.delivery.acl_registry import AclRegistry
from mailstack.delivery.fulltext import FolderText
from mailstack.delivery.index_db import IndexDb
from mailstack.delivery.metadata import Metadata
from mailstack.delivery.tlsrpt import ReportStore, Session
from mailstack.imap.cache import StructureCache
from mailstack.smtp.sendlimits import SendLog

from mailstack.base.paths import StatePaths
from mailstack.base.throttle_db import ThrottleDb
from mailstack.base.users import Accounts
from mailstack.web.session_db import SessionDb

PROCESSES = 4
ROUNDS = 30


def _send_log(where: Path) -> object:
    return SendLog(where / "send.sqlite3").usage("alice@example.com", "127.0.0.0/24")


def _index(where: Path) -> object:
    return IndexDb(where).is_complete_for(1)


def _fulltext(where: Path) -> object:
    index = FolderText(where)
    index.add(1, [(1, "hello world")])
    return index.candidates(1, ["hello"])  # None: the index was given up


def _structure_cache(where: Path) -> object:
    cache = StructureCache(where)
    cache.put_many([("k", 1, "v")])
    return cache.get_many([("k", 1)])  # {}: the cache was given up


def _metadata(where: Path) -> object:
    meta = Metadata(where)
    meta.set("INBOX", {"/private/comment": b"x"})
    return meta.get("INBOX", ["/private/comment"], None)


def _shares(where: Path) -> object:
    return AclRegistry(StatePaths(where)).shared_with("alice@example.com")


def _users(where: Path) -> object:
    return Accounts(where / "users.sqlite3").domains()


def _throttle(where: Path) -> object:
    return ThrottleDb(where / "throttle.sqlite3").load()


def _web_sessions(where: Path) -> object:
    return SessionDb(where / "web.sqlite3").load(0.0, 0.0)


def _tlsrpt(where: Path) -> object:
    store = ReportStore(where / "tlsrpt.sqlite3")
    store.add(Session("example.com", "sts", (), "mx.example.com", "192.0.2.1", None), now=0.0)
    return store.finished_days(10**6)


OPENERS: dict[str, Callable[[Path], object]] = {
    "send log": _send_log,
    "folder index": _index,
    "full-text index": _fulltext,
    "structure cache": _structure_cache,
    "metadata": _metadata,
    "users": _users,
    "shares": _shares,
    "throttle": _throttle,
    "web sessions": _web_sessions,
    "TLS-RPT": _tlsrpt,
}
EXPECTED: dict[str, object] = {
    "full-text index": {1},
    "structure cache": {"k": "v"},
    "metadata": {"/private/comment": b"x"},
}


class _Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING or any(
            word in record.getMessage() for word in ("unusable", "disabled", "rebuild")
        ):
            self.lines.append(record.getMessage())


def _first_look(kind: str, where: str, barrier: Any, results: Any) -> None:
    kept = _Kept()
    logging.getLogger().addHandler(kept)
    logging.getLogger().setLevel(logging.DEBUG)
    barrier.wait()
    try:
        answer = OPENERS[kind](Path(where))
    except Exception as exc:
        results.put(repr(exc))
        return
    if kind in EXPECTED and answer != EXPECTED[kind]:
        results.put(f"answered {answer!r}")
    else:
        results.put("; ".join(kept.lines) or None)


@pytest.mark.parametrize("kind", sorted(OPENERS))
def test_processes_opening_a_new_file_together_all_get_it(kind: str, tmp_path: Path) -> None:
    # Serve's two SMTP workers took a fresh deployment's first submissions at once: one was
    # told "database is locked" and answered 451 at MAIL FROM (the send log). A folder index
    # or cache taking the same answer for corruption set the new file aside.
    ctx = multiprocessing.get_context("fork")
    failures = []
    for round_ in range(ROUNDS):
        where = tmp_path / f"round-{round_}"
        where.mkdir()
        barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
        procs = [
            ctx.Process(target=_first_look, args=(kind, str(where), barrier, results))
            for _ in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        failures += [r for r in (results.get(timeout=30) for _ in procs) if r is not None]
        for p in procs:
            p.join(30)
    assert failures == []
