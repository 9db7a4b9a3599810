"""CONTEXT=SEARCH (RFC 5267 §4) over raw bytes: SEARCH RETURN (UPDATE) answers as usual and
then tells ADDTO/REMOVEFROM as messages arrive, change flags and are expunged (REMOVEFROM
before the EXPUNGE, ADDTO after the EXISTS), by UID or by number, during IDLE too, until
CANCELUPDATE or another SELECT; NOUPDATE past the limit, BAD on a reused tag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mailstack.delivery.store import INBOX
from mailstack.imap import session_context

from tests.imap.rawclient import RawClient
from tests.imap.servers import connect
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MESSAGE = b"From: a@example.com\r\nSubject: %d\r\n\r\nbody\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    for n in range(1, 4):
        dep.store.append(USER, INBOX, MESSAGE % n)
    return dep


def selected(server: ImapServerThread) -> RawClient:
    client = connect(server.imap_port, timeout_s=5.0)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    return client


def run(client: RawClient, line: bytes) -> list[bytes]:
    """Send a command with our own tag; its untagged lines and the tagged one."""
    client.send(line + b"\r\n")
    return client.until_tagged(line.split(b" ", 1)[0])


def untagged(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if line.startswith(b"* ")]


def test_uid_update_follows_arrivals_flags_and_expunges(server: ImapServerThread) -> None:
    client = selected(server)
    lines = run(client, b"u1 UID SEARCH RETURN (UPDATE ALL) UNSEEN")
    assert lines == [b'* ESEARCH (TAG "u1") UID ALL 1:3\r\n', b"u1 OK SEARCH completed\r\n"]
    other = selected(server)
    assert other.tagged(b"APPEND INBOX {%d+}\r\n" % len(MESSAGE % 4) + MESSAGE % 4).startswith(
        b"OK"
    )
    got = [x for x in untagged(run(client, b"n1 NOOP")) if b"RECENT" not in x]
    assert got == [b"* 4 EXISTS\r\n", b'* ESEARCH (TAG "u1") UID ADDTO (0 4)\r\n']
    assert other.tagged("STORE 2 +FLAGS (\\Seen)").startswith(b"OK")
    got = untagged(run(client, b"n2 NOOP"))
    assert got[-1] == b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 2)\r\n'
    assert got[0].startswith(b"* 2 FETCH")
    # Still unseen when \Deleted: no change; then expunged: REMOVEFROM comes first.
    assert other.tagged("STORE 3 +FLAGS (\\Deleted)").startswith(b"OK")
    assert not [x for x in untagged(run(client, b"n3 NOOP")) if b"ESEARCH" in x]
    assert other.tagged("EXPUNGE").startswith(b"OK")
    got = untagged(run(client, b"n4 NOOP"))
    assert got[:2] == [b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 3)\r\n', b"* 3 EXPUNGE\r\n"]


def test_numbered_update_uses_the_numbers_before_the_expunge(server: ImapServerThread) -> None:
    client = selected(server)
    lines = run(client, b"s1 SEARCH RETURN (UPDATE COUNT) ALL")
    assert lines[0] == b'* ESEARCH (TAG "s1") COUNT 3\r\n'
    other = selected(server)
    assert other.tagged("STORE 1 +FLAGS (\\Deleted)").startswith(b"OK")
    assert other.tagged("EXPUNGE").startswith(b"OK")
    got = untagged(run(client, b"n1 NOOP"))
    assert got[:2] == [b'* ESEARCH (TAG "s1") REMOVEFROM (0 1)\r\n', b"* 1 EXPUNGE\r\n"]
    assert other.tagged(b"APPEND INBOX {%d+}\r\n" % len(MESSAGE % 5) + MESSAGE % 5).startswith(
        b"OK"
    )
    got = untagged(run(client, b"n2 NOOP"))
    assert got[0] == b"* 3 EXISTS\r\n"
    assert got[-1] == b'* ESEARCH (TAG "s1") ADDTO (0 3)\r\n'


def test_update_during_idle(server: ImapServerThread, dep: ImapDeployment) -> None:
    client = selected(server)
    run(client, b"u1 UID SEARCH RETURN (UPDATE MIN) SUBJECT 7")
    client.send(b"i1 IDLE\r\n")
    assert client.line() == b"+ idling\r\n"
    dep.store.append(USER, INBOX, MESSAGE % 7)  # the store publishes: IDLE wakes
    while not (line := client.line()).startswith(b"* ESEARCH"):
        pass
    assert line == b'* ESEARCH (TAG "u1") UID ADDTO (0 4)\r\n'
    client.send(b"DONE\r\n")
    assert client.until_tagged(b"i1")[-1].startswith(b"i1 OK")


def test_cancelupdate_and_reselect_end_updates(server: ImapServerThread) -> None:
    client = selected(server)
    # UPDATE alone: the correlator only, no result (as Dovecot answers).
    assert run(client, b"u1 UID SEARCH RETURN (UPDATE) ALL")[0] == b'* ESEARCH (TAG "u1") UID\r\n'
    run(client, b"u2 SEARCH RETURN (UPDATE) ALL")
    assert run(client, b'c1 CANCELUPDATE "u1"')[-1] == b"c1 OK CANCELUPDATE completed\r\n"
    assert run(client, b'c2 CANCELUPDATE "u1"')[-1].startswith(b"c2 NO ")  # no longer live
    other = selected(server)
    assert other.tagged(b"APPEND INBOX {%d+}\r\n" % len(MESSAGE % 8) + MESSAGE % 8).startswith(
        b"OK"
    )
    updates = [x for x in run(client, b"n1 NOOP") if b"ESEARCH" in x]
    assert updates == [b'* ESEARCH (TAG "u2") ADDTO (0 4)\r\n']
    assert client.tagged("SELECT INBOX").startswith(b"OK")  # §4.3: the context ends with it
    assert other.tagged(b"APPEND INBOX {%d+}\r\n" % len(MESSAGE % 9) + MESSAGE % 9).startswith(
        b"OK"
    )
    assert not [x for x in run(client, b"n2 NOOP") if b"ESEARCH" in x]


def test_reused_tag_and_too_many_contexts(
    server: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_context, "MAX_CONTEXTS", 2)
    client = selected(server)
    run(client, b"u1 SEARCH RETURN (UPDATE) ALL")
    assert run(client, b"u1 SEARCH RETURN (UPDATE) ALL")[-1].startswith(b"u1 BAD")
    run(client, b"u2 SEARCH RETURN (UPDATE) ALL")
    lines = run(client, b"u3 SEARCH RETURN (UPDATE COUNT) ALL")
    assert lines == [
        b'* ESEARCH (TAG "u3") COUNT 3\r\n',
        b'* NO [NOUPDATE "u3"] too many update contexts\r\n',
        b"u3 OK SEARCH completed\r\n",
    ]


@pytest.mark.parametrize(
    "line",
    [b"b1 CANCELUPDATE", b"b1 CANCELUPDATE u1", b'b1 CANCELUPDATE "u1" u2'],
)
def test_bad_cancelupdate(server: ImapServerThread, line: bytes) -> None:
    client = selected(server)
    assert run(client, line)[-1].startswith(b"b1 BAD")


def test_cancelupdate_needs_a_selected_mailbox(server: ImapServerThread) -> None:
    client = connect(server.imap_port, timeout_s=5.0)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert re.match(rb"BAD", client.tagged('CANCELUPDATE "x"'))
