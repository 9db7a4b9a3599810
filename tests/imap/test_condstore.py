"""CONDSTORE and QRESYNC (RFC 7162) over real loopback sockets: raw bytes and imapclient,
against a real deployment (tests/support/imapserver.py)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import imapclient
import pytest
from mailstack.delivery.index_db import INDEX_FILE
from mailstack.delivery.store import INBOX

from mailstack.base.flags import FlagMode
from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

MESSAGE = b"From: bob@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def server(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(dep) as server:
        yield server


def login(server: ImapServerThread) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def deliver(dep: ImapDeployment, n: int) -> list[int]:
    return [dep.store.deliver([(USER, INBOX)], MESSAGE)[0].uid for _ in range(n)]


def highest(lines: list[bytes]) -> int:
    (value,) = [int(m[1]) for line in lines if (m := re.search(rb"HIGHESTMODSEQ (\d+)", line))]
    return value


def fetched(lines: list[bytes]) -> dict[int, tuple[bytes, int]]:
    """UID -> (FLAGS list, MODSEQ) from untagged FETCH lines."""
    out = {}
    for line in lines:
        m = re.match(rb"\* \d+ FETCH \(.*?UID (\d+)", line)
        if m:
            flags = re.search(rb"FLAGS \(([^)]*)\)", line)
            modseq = re.search(rb"MODSEQ \((\d+)\)", line)
            assert modseq is not None, line
            out[int(m[1])] = (flags[1] if flags else b"", int(modseq[1]))
    return out


def vanished(lines: list[bytes], *, earlier: bool) -> str | None:
    prefix = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    found = [line[len(prefix) :].strip().decode() for line in lines if line.startswith(prefix)]
    if not earlier:
        found = [f for f in found if not f.startswith("(EARLIER)")]
    assert len(found) <= 1, lines
    return found[0] if found else None


def test_capabilities_and_enable(server: ImapServerThread) -> None:
    with login(server) as client:
        caps = client.command("CAPABILITY")[0].split()
        assert b"CONDSTORE" in caps and b"QRESYNC" in caps
        assert client.command("ENABLE QRESYNC CONDSTORE")[0] == b"* ENABLED QRESYNC CONDSTORE\r\n"
        assert client.command("ENABLE QRESYNC")[0] == b"* ENABLED\r\n"  # already on


def test_condstore_fetch_changedsince_and_status(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    uids = deliver(dep, 3)
    with login(server) as client:
        status = client.command("STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        status_top = int(re.search(rb"HIGHESTMODSEQ (\d+)", status[0])[1])  # type: ignore[index]
        lines = client.command("SELECT INBOX (CONDSTORE)")
        assert b"OK [READ-WRITE]" in lines[-1]
        top = highest(lines)
        assert top == status_top > 0
        all_items = fetched(client.command("UID FETCH 1:* (FLAGS MODSEQ)"))
        assert set(all_items) == set(uids)
        assert max(m for _, m in all_items.values()) == top
        # Another session changes one message; the resync fetches exactly that one.
        with login(server) as other:
            other.command("SELECT INBOX")
            assert other.tagged(f"UID STORE {uids[1]} +FLAGS (\\Flagged)").startswith(b"OK")
        lines = client.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top})")
        changed = fetched([x for x in lines if b"FETCH" in x and b"t" not in x[:2]])
        assert set(changed) == {uids[1]}
        assert b"\\Flagged" in changed[uids[1]][0]
        assert changed[uids[1]][1] > top
        assert client.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {changed[uids[1]][1]})") == [
            b"t" + str(client.n).encode() + b" OK FETCH completed\r\n"
        ]


def test_changedsince_in_a_bigger_folder_answers_the_changed_in_range(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    # A few changes among many messages: the changed ones are found through the store's
    # MODSEQ index (session_fetch._changed_since), and only those the command names count.
    uids = deliver(dep, 40)
    with login(server) as client:
        top = highest(client.command("SELECT INBOX (CONDSTORE)"))
        with login(server) as other:
            other.command("SELECT INBOX")
            for i in (3, 20, 35):
                assert other.tagged(f"UID STORE {uids[i]} +FLAGS (\\Flagged)").startswith(b"OK")
            assert other.tagged(f"UID STORE {uids[38]} +FLAGS (\\Deleted)").startswith(b"OK")
            assert other.tagged("EXPUNGE").startswith(b"OK")
        client.command("NOOP")  # the other session's changes, reported unasked
        lines = client.command(f"UID FETCH {uids[10]}:* (FLAGS) (CHANGEDSINCE {top})")
        assert set(fetched(lines)) == {uids[20], uids[35]}
        lines = client.command(f"FETCH 1:30 (UID FLAGS) (CHANGEDSINCE {top})")
        numbers = [int(m[1]) for x in lines if (m := re.match(rb"\* (\d+) FETCH", x))]
        assert numbers == [4, 21]  # sequence numbers as this session knows them
        assert set(fetched(lines)) == {uids[3], uids[20]}
        lines = client.command(f"FETCH 4,5,36 (UID FLAGS) (CHANGEDSINCE {top})")
        assert set(fetched(lines)) == {uids[3], uids[35]}


def test_store_unchangedsince_reports_modified(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    uids = deliver(dep, 3)
    with login(server) as client:
        top = highest(client.command("SELECT INBOX (CONDSTORE)"))
        assert client.tagged(f"UID STORE {uids[0]} +FLAGS.SILENT (\\Seen)").startswith(b"OK")
        lines = client.command(f"UID STORE 1:* (UNCHANGEDSINCE {top}) +FLAGS.SILENT (\\Deleted)")
        assert re.match(rb"t\d+ OK \[MODIFIED %d\]" % uids[0], lines[-1]), lines
        # RFC 7162 §3.1.3: .SILENT still reports the new MODSEQs (no FLAGS).
        done = fetched(lines[:-1])
        assert set(done) == set(uids[1:])
        assert all(flags == b"" and modseq > top for flags, modseq in done.values())
        flags = fetched(client.command("UID FETCH 1:* (FLAGS MODSEQ)"))
        assert b"\\Deleted" not in flags[uids[0]][0]
        assert all(b"\\Deleted" in flags[u][0] for u in uids[1:])
        # STORE by sequence number reports numbers; UNCHANGEDSINCE 0 fails for everything.
        lines = client.command("STORE 1:2 (UNCHANGEDSINCE 0) +FLAGS (\\Answered)")
        assert lines[-1].startswith(b"t%d OK [MODIFIED 1:2]" % client.n), lines


def test_search_modseq(server: ImapServerThread, dep: ImapDeployment) -> None:
    uids = deliver(dep, 3)
    with login(server) as client:
        top = highest(client.command("SELECT INBOX"))
        client.command(f"UID STORE {uids[2]} +FLAGS (\\Seen)")
        lines = client.command(f"UID SEARCH MODSEQ {top + 1}")
        # The first CONDSTORE-enabling command tells the HIGHESTMODSEQ (RFC 7162 §3.1).
        assert highest(lines) > top  # after this session's own STORE
        m = re.match(rb"\* SEARCH (\d+) \(MODSEQ (\d+)\)", lines[1])
        assert m is not None, lines
        assert int(m[1]) == uids[2] and int(m[2]) > top
        lines = client.command(f'SEARCH RETURN (COUNT) MODSEQ "/flags/\\\\Seen" all {top + 1}')
        assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) COUNT 1 MODSEQ \d+', lines[0]), lines
        assert client.command(f"SEARCH MODSEQ {int(m[2]) + 1}")[0] == b"* SEARCH\r\n"


def test_qresync_select_and_vanished(server: ImapServerThread, dep: ImapDeployment) -> None:
    uids = deliver(dep, 6)
    with login(server) as client:
        # Without ENABLE QRESYNC the parameter is refused (RFC 7162 §3.2.5).
        assert client.tagged("SELECT INBOX (QRESYNC (1 1))").startswith(b"BAD")
        client.command("ENABLE QRESYNC")
        lines = client.command("SELECT INBOX")
        top = highest(lines)
        validity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines))[1])  # type: ignore[index]
        # Changes by another session while this client is away: a flag, two expunges.
        with login(server) as other:
            other.command("ENABLE QRESYNC")
            other.command("SELECT INBOX")
            other.command(f"UID STORE {uids[1]},{uids[4]} +FLAGS (\\Deleted)")
            other.command(f"UID STORE {uids[3]} +FLAGS (\\Answered)")
            lines = other.command("EXPUNGE")
            # Unsolicited VANISHED instead of EXPUNGE once QRESYNC is on (RFC 7162 §3.2.10).
            assert vanished(lines, earlier=False) == f"{uids[1]},{uids[4]}"
            assert not any(b"EXPUNGE\r\n" in x and x.startswith(b"* ") for x in lines)
        client.command("UNSELECT")
        lines = client.command(f"SELECT INBOX (QRESYNC ({validity} {top}))")
        assert vanished(lines, earlier=True) == f"{uids[1]},{uids[4]}"
        assert set(fetched(lines)) == {uids[3]}
        assert highest(lines) > top
        # Known UIDs narrow the report; a wrong UIDVALIDITY gets no resync data.
        client.command("UNSELECT")
        lines = client.command(f"EXAMINE INBOX (QRESYNC ({validity} {top} {uids[3]}:{uids[5]}))")
        assert vanished(lines, earlier=True) == str(uids[4])
        client.command("UNSELECT")
        lines = client.command(f"SELECT INBOX (QRESYNC ({validity + 1} {top}))")
        assert vanished(lines, earlier=True) is None and fetched(lines) == {}
        # UID FETCH ... (CHANGEDSINCE m VANISHED)
        lines = client.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {top} VANISHED)")
        assert vanished(lines, earlier=True) == f"{uids[1]},{uids[4]}"
        assert set(fetched(lines)) == {uids[3]}


def test_qresync_after_the_index_was_deleted_reports_every_missing_uid(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    uids = deliver(dep, 4)
    with login(server) as client:
        client.command("ENABLE QRESYNC")
        lines = client.command("SELECT INBOX")
        top = highest(lines)
        validity = int(re.search(rb"UIDVALIDITY (\d+)", b"".join(lines))[1])  # type: ignore[index]
        client.command("UNSELECT")
    for suffix in ("", "-wal", "-shm"):
        (dep.paths.maildir(USER) / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    dep.store.store_flags(USER, INBOX, [uids[0]], ["\\Deleted"], FlagMode.ADD)
    dep.store.expunge(USER, INBOX)
    with login(server) as client:
        client.command("ENABLE QRESYNC")
        lines = client.command(f"SELECT INBOX (QRESYNC ({validity} {top}))")
        # The log restarted with the index: every UID not there is reported (1 was never
        # seen by the client either; RFC 7162 lets the server include such UIDs).
        assert uids[0] == 1
        assert vanished(lines, earlier=True) == "1"
        assert highest(lines) > top
        # The rebuilt index gave every message a MODSEQ above what the client saw.
        assert set(fetched(lines)) == set(uids[1:])


def test_bad_condstore_syntax_is_bad(server: ImapServerThread, dep: ImapDeployment) -> None:
    deliver(dep, 1)
    with login(server) as client:
        client.command("SELECT INBOX")
        for command in (
            "FETCH 1 (FLAGS) (CHANGEDSINCE)",
            "FETCH 1 (FLAGS) (CHANGEDSINCE -1)",
            "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # VANISHED needs UID FETCH
            "UID FETCH 1 (FLAGS) (VANISHED)",  # and CHANGEDSINCE
            "FETCH 1 (FLAGS) (CHANGEDSINCE 9223372036854775808)",  # above 2^63-1
            "STORE 1 (UNCHANGEDSINCE x) +FLAGS (\\Seen)",
            "SEARCH MODSEQ",
            'SEARCH MODSEQ "/flags/\\\\Seen" bogus 5',
            "SELECT INBOX (QRESYNC (0 5))",
            "SELECT INBOX (BOGUS)",
            "UID FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # QRESYNC is not enabled
        ):
            assert client.tagged(command).startswith(b"BAD"), command


def test_imapclient_condstore(server: ImapServerThread, dep: ImapDeployment) -> None:
    uids = deliver(dep, 2)
    client = imapclient.IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
    client.login(USER, PASSWORD)
    assert client.has_capability("CONDSTORE")
    info = client.select_folder("INBOX")
    top = info[b"HIGHESTMODSEQ"]
    client.add_flags([uids[0]], ["\\Seen"])
    changed = client.fetch(uids, ["FLAGS"], modifiers=[f"CHANGEDSINCE {top}"])
    assert set(changed) == {uids[0]}
    assert changed[uids[0]][b"MODSEQ"][0] > top
    client.logout()
