"""The on-disk structure cache (imap/cache.py) as the IMAP server uses it.

A server restart is a new process as far as the cache is concerned (a new `ServerContext`,
so new `StructureCache` objects and an empty session memory): what survives it came from
`mailstack.cache.sqlite3`. Message reads are counted by instrumenting the store's read path.
"""

from __future__ import annotations

import functools
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX, MessageBatch, R
from mailstack.imap.cache import CACHE_FILE, StructureCache

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

MESSAGES = [
    (
        b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: number %d\r\n"
        b"Date: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <%d@example.org>\r\n\r\n"
        b"Body of message %d.\r\n"
    )
    % (i, i, i)
    for i in range(1, 6)
] + [
    b"From: Carol <carol@example.net>\r\nTo: alice@example.com\r\nSubject: report\r\n"
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"--XX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nsee attachment\r\n"
    b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\nAAEC\r\n--XX--\r\n"
]


class CountingStore(MaildirStore):
    """The real store, counting how often a message file is read (whole or header)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lock = threading.Lock()
        self.reads = 0
        self.header_reads = 0
        self.header_calls = 0

    def read_message(self, user: str, folder: str, uid: int) -> bytes:
        with self.lock:
            self.reads += 1
        return super().read_message(user, folder, uid)

    def read_messages(
        self, user: str, folder: str, uids: Sequence[int]
    ) -> Iterator[tuple[int, bytes]]:
        for item in super().read_messages(user, folder, uids):
            with self.lock:
                self.reads += 1
            yield item

    def read_headers(self, user: str, folder: str, uids: Sequence[int]) -> dict[int, bytes]:
        found = super().read_headers(user, folder, uids)
        with self.lock:
            self.header_reads += len(found)
            self.header_calls += 1
        return found

    def map_messages(
        self,
        user: str,
        folder: str,
        uids: Sequence[int],
        work: Callable[[MessageBatch], R],
        *,
        whole: bool,
    ) -> Iterator[R]:
        counted = functools.partial(_counted, work)  # picklable: it may run in a worker
        if not whole:
            with self.lock:
                self.header_calls += 1  # the store resolves the files under one lock
        for n, result in super().map_messages(user, folder, uids, counted, whole=whole):
            with self.lock:
                if whole:
                    self.reads += n
                else:
                    self.header_reads += n
            yield result


def _counted(work: Callable[[MessageBatch], R], batch: MessageBatch) -> tuple[int, R]:
    return len(batch), work(batch)


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store = CountingStore(dep.paths, dep.events, hostname="mail.example.com")
    for message in MESSAGES:
        dep.store.deliver([(USER, INBOX)], message)
    return dep


@pytest.fixture
def counting(dep: ImapDeployment) -> CountingStore:
    assert isinstance(dep.store, CountingStore)
    return dep.store


def session(server: ImapServerThread) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    return client


def fetch_all(server: ImapServerThread, items: str = "ENVELOPE BODYSTRUCTURE") -> bytes:
    with session(server) as client:
        client.send(f"f1 FETCH 1:* ({items})\r\n".encode())
        lines = client.until_tagged(b"f1")
    assert lines[-1].startswith(b"f1 OK"), lines
    return b"".join(lines[:-1])


@pytest.fixture
def reference(tmp_path: Path) -> Iterator[bytes]:
    """The FETCH answer computed from the message files alone (a deployment never cached)."""
    dep = make_deployment(tmp_path / "reference")
    for message in MESSAGES:
        dep.store.deliver([(USER, INBOX)], message)
    with running_server(dep) as server:
        yield fetch_all(server, "ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE")


ITEMS = "ENVELOPE BODYSTRUCTURE BODY RFC822.SIZE"


def test_second_process_fetches_structure_without_opening_messages(
    dep: ImapDeployment, counting: CountingStore, reference: bytes
) -> None:
    with running_server(dep) as server:
        first = fetch_all(server, ITEMS)
    assert counting.reads == len(MESSAGES)  # parsed once each, cold
    cache = dep.paths.maildir(USER) / CACHE_FILE
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    with running_server(dep) as server:  # a restart: nothing in memory
        second = fetch_all(server, ITEMS)
        assert fetch_all(server, "FLAGS RFC822.SIZE")
    assert counting.reads == len(MESSAGES)
    assert first == second == reference


def test_body_sections_still_read_the_message(dep: ImapDeployment, counting: CountingStore) -> None:
    with running_server(dep) as server:
        fetch_all(server)
        out = fetch_all(server, "BODY.PEEK[HEADER.FIELDS (SUBJECT X-MAILER)]")
    assert counting.reads == 2 * len(MESSAGES)
    assert b"Subject: number 3" in out


def test_corrupt_cache_file_is_rebuilt(
    dep: ImapDeployment, counting: CountingStore, reference: bytes
) -> None:
    with running_server(dep) as server:
        fetch_all(server, ITEMS)
    cache = dep.paths.maildir(USER) / CACHE_FILE
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    cache.write_bytes(b"this is not a database" * 100)
    with running_server(dep) as server:
        assert fetch_all(server, ITEMS) == reference
    assert counting.reads == 2 * len(MESSAGES)  # everything re-parsed ...
    with running_server(dep) as server:
        assert fetch_all(server, ITEMS) == reference
    assert counting.reads == 2 * len(MESSAGES)  # ... and cached again


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("UPDATE structure SET value = 'not json' WHERE rowid = 2", id="undecodable"),
        pytest.param("UPDATE structure SET size = size + 1 WHERE rowid = 2", id="size-mismatch"),
        pytest.param("UPDATE structure SET value = '[1, 2]' WHERE rowid = 2", id="wrong-shape"),
    ],
)
def test_stale_or_damaged_entry_is_recomputed(
    dep: ImapDeployment, counting: CountingStore, reference: bytes, damage: str
) -> None:
    with running_server(dep) as server:
        fetch_all(server, ITEMS)
    with sqlite3.connect(dep.paths.maildir(USER) / CACHE_FILE) as db:
        assert db.execute(damage).rowcount == 1
    db.close()
    with running_server(dep) as server:
        assert fetch_all(server, ITEMS) == reference
    assert counting.reads == len(MESSAGES) + 1
    with running_server(dep) as server:
        assert fetch_all(server, ITEMS) == reference
    assert counting.reads == len(MESSAGES) + 1  # the recomputed entry was stored again


def test_flag_renames_and_moves_keep_the_entry(
    dep: ImapDeployment, counting: CountingStore
) -> None:
    with running_server(dep) as server:
        fetch_all(server)
        with session(server) as client:
            assert client.tagged("STORE 1:* +FLAGS (\\Flagged $Label1)").startswith(b"OK")
            assert client.tagged("MOVE 1:2 Archive").startswith(b"OK")
            assert client.tagged("SELECT Archive").startswith(b"OK")
            client.send(b"f2 FETCH 1:* (ENVELOPE BODYSTRUCTURE)\r\n")
            out = b"".join(client.until_tagged(b"f2"))
    assert b"number 1" in out and b"number 2" in out
    assert counting.reads == len(MESSAGES)


def test_expunged_messages_leave_the_cache(dep: ImapDeployment) -> None:
    with running_server(dep) as server:
        fetch_all(server)
        with session(server) as client:
            assert client.tagged("STORE 1:3 +FLAGS (\\Deleted)").startswith(b"OK")
            assert client.tagged("EXPUNGE").startswith(b"OK")
    with running_server(dep) as server:
        fetch_all(server, "FLAGS")  # the first SELECT in a process prunes
    with sqlite3.connect(dep.paths.maildir(USER) / CACHE_FILE) as db:
        # A message's rows: its structure and `<base name>:size` (imap/downgrade_size.py).
        keys = {k.partition(":")[0] for (k,) in db.execute("SELECT key FROM structure")}
    db.close()
    live = {m.key for m in dep.store.snapshot(USER, INBOX).messages}
    assert keys == live
    assert len(live) == len(MESSAGES) - 3


def test_cache_without_a_maildir_is_a_no_op(tmp_path: Path) -> None:
    cache = StructureCache(tmp_path / "gone")
    cache.put_many([("k", 1, "v")])
    assert cache.get_many([("k", 1)]) == {}
    assert cache.prune([]) == 0
    cache.close()


# -- SEARCH reads only what its keys need -------------------------------------------------------

BIG = (
    b"From: Dave <dave@example.org>\r\nTo: alice@example.com\r\nSubject: big one\r\n"
    b"Date: Wed, 7 Feb 2024 09:00:00 +0000\r\n\r\n"
    + b"filler line of body text\r\n" * 20000
    + b"needle at the very end\r\n"
)


def search(server: ImapServerThread, criteria: str) -> list[int]:
    with session(server) as client:
        lines = client.command(f"UID SEARCH {criteria}")
    assert lines[-1].split(b" ")[1] == b"OK", lines
    found = [line for line in lines if line.startswith(b"* SEARCH")]
    return [int(n) for n in found[0].split()[2:]]


def test_header_search_reads_headers_only(dep: ImapDeployment, counting: CountingStore) -> None:
    dep.store.deliver([(USER, INBOX)], BIG)
    uids = [m.uid for m in dep.store.snapshot(USER, INBOX).messages]
    with running_server(dep) as server:
        assert search(server, 'SUBJECT "big one"') == [uids[-1]]
        assert search(server, "FROM carol") == [uids[5]]
        assert search(server, "HEADER Message-ID <3@example.org>") == [uids[2]]
        # Carol's report has no Date: it counts as sent on its internal date (today).
        assert search(server, "SENTSINCE 6-Feb-2024") == [uids[5], uids[-1]]
        assert counting.reads == 0
        # The first search stores the fields (imap/header_index.py); the others read none.
        assert counting.header_reads == len(uids)
        assert counting.header_calls == 1  # one folder lock for the batch, not per message
        assert search(server, "BODY needle") == [uids[-1]]
        assert counting.reads == len(uids)
        # A key needing both reads the message once, not the header besides.
        before = counting.header_reads
        assert search(server, 'SUBJECT number BODY "message 4"') == [uids[3]]
        assert counting.header_reads - before <= len(uids)


def test_read_header_stops_at_the_blank_line(dep: ImapDeployment) -> None:
    dep.store.deliver([(USER, INBOX)], BIG)
    dep.store.deliver([(USER, INBOX)], b"Subject: no body\r\nX-A: b")
    messages = dep.store.snapshot(USER, INBOX).messages
    header = dep.store.read_header(USER, INBOX, messages[-2].uid)
    assert header.startswith(b"From: Dave") and header.endswith(b"+0000\n\n")
    assert b"filler" not in header
    assert dep.store.read_header(USER, INBOX, messages[-1].uid) == b"Subject: no body\nX-A: b"
    assert dep.store.read_header(USER, INBOX, messages[0].uid).endswith(b"\n\n")
