"""CONTEXT=SORT (RFC 5267 §4) over raw bytes: SORT RETURN (UPDATE) answers as ESORT does and
then tells, as messages arrive, change flags and are expunged, where each one enters or
leaves the sorted result: `ADDTO (position set ...)` and `REMOVEFROM (position set ...)`,
pairs applied in the order given (§4.3.2's example adds three messages at position 1 each).
CONTEXT=SEARCH's own rules (REMOVEFROM before EXPUNGE, ADDTO after EXISTS, CANCELUPDATE,
NOUPDATE) are tests/imap/test_context_search.py's; the first answer is compared with
Dovecot's, which parses SORT RETURN (UPDATE) but does not advertise CONTEXT=SORT."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailstack.delivery.store import INBOX
from mailstack.imap import session_context

from tests.imap.rawclient import RawClient
from tests.imap.servers import connect
from tests.imap.test_fetch import run_dovecot
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MESSAGE = b"From: a@example.com\r\nSubject: %s\r\n\r\nbody\r\n"
FIRST = [MESSAGE % s for s in (b"c", b"a", b"e")]  # UIDs 1, 2, 3: sorted 2, 1, 3


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    for raw in FIRST:
        dep.store.append(USER, INBOX, raw)
    return dep


def selected(server: ImapServerThread) -> RawClient:
    client = connect(server.imap_port, timeout_s=5.0)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    return client


def run(client: RawClient, line: bytes) -> list[bytes]:
    client.send(line + b"\r\n")
    return client.until_tagged(line.split(b" ", 1)[0])


def updates(client: RawClient, tag: bytes) -> list[bytes]:
    return [x for x in run(client, tag + b" NOOP") if x.startswith(b'* ESEARCH (TAG "u1")')]


def append(client: RawClient, subject: bytes) -> None:
    raw = MESSAGE % subject
    assert client.tagged(b"APPEND INBOX {%d+}\r\n" % len(raw) + raw).startswith(b"OK")


def test_capability(server: ImapServerThread) -> None:
    client = connect(server.imap_port, timeout_s=5.0)
    # Before LOGIN and after it, as every extension of the selected state here.
    assert b" CONTEXT=SORT " in client.greeting
    assert b" CONTEXT=SORT " in client.command("CAPABILITY")[0]
    assert b" CONTEXT=SORT " in client.tagged(f'LOGIN {USER} "{PASSWORD}"')
    assert b" CONTEXT=SORT " in client.command("CAPABILITY")[0]


def test_uid_sort_update_tells_positions(server: ImapServerThread) -> None:
    client = selected(server)
    lines = run(client, b"u1 UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 UNSEEN")
    assert lines == [b'* ESEARCH (TAG "u1") UID ALL 2,1,3\r\n', b"u1 OK UID SORT completed\r\n"]
    other = selected(server)
    append(other, b"b")  # UID 4 between "a" and "c"
    assert updates(client, b"n1") == [b'* ESEARCH (TAG "u1") UID ADDTO (2 4)\r\n']
    # Two at once: each pair applies to the result the previous pairs left.
    append(other, b"d")  # UID 5
    append(other, b"0")  # UID 6: first
    append(other, b"a")  # UID 7: after UID 2, its equal (ties in mailbox order)
    assert updates(client, b"n2") == [b'* ESEARCH (TAG "u1") UID ADDTO (1 6 3 7 6 5)\r\n']
    # Now 6 2 7 4 1 5 3. Seen: UID 1 leaves from position 5.
    assert other.tagged("UID STORE 1 +FLAGS (\\Seen)").startswith(b"OK")
    assert updates(client, b"n3") == [b'* ESEARCH (TAG "u1") UID REMOVEFROM (5 1)\r\n']
    # Unseen again: back in at 5; flags that do not change the match say nothing.
    assert other.tagged("UID STORE 1 -FLAGS (\\Seen)").startswith(b"OK")
    assert other.tagged("UID STORE 2 +FLAGS (\\Flagged)").startswith(b"OK")
    assert updates(client, b"n4") == [b'* ESEARCH (TAG "u1") UID ADDTO (5 1)\r\n']
    # Expunged: REMOVEFROM (highest position first, so each stays valid) before EXPUNGE.
    assert other.tagged("UID STORE 3,6 +FLAGS (\\Deleted)").startswith(b"OK")
    assert other.tagged("EXPUNGE").startswith(b"OK")
    got = [x for x in run(client, b"n5 NOOP") if b"EXPUNGE" in x or b"ESEARCH" in x]
    assert got[0] == b'* ESEARCH (TAG "u1") UID REMOVEFROM (7 3 1 6)\r\n'
    assert got[1:] == [b"* 6 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
    # What the updates built is what a new SORT says.
    assert run(client, b"s1 UID SORT (SUBJECT) UTF-8 UNSEEN")[0] == b"* SORT 2 7 4 1 5\r\n"


def test_numbered_sort_update_reverse(server: ImapServerThread) -> None:
    client = selected(server)
    lines = run(client, b"u1 SORT RETURN (UPDATE COUNT) (REVERSE SUBJECT) UTF-8 ALL")
    assert lines[0] == b'* ESEARCH (TAG "u1") COUNT 3\r\n'
    other = selected(server)
    assert other.tagged("STORE 2 +FLAGS (\\Deleted)").startswith(b"OK")  # "a": last
    assert other.tagged("EXPUNGE").startswith(b"OK")
    got = [x for x in run(client, b"n1 NOOP") if b"EXPUNGE" in x or b"ESEARCH" in x]
    assert got == [b'* ESEARCH (TAG "u1") REMOVEFROM (3 2)\r\n', b"* 2 EXPUNGE\r\n"]
    append(other, b"d")  # message 3 now: e d c
    got = [x for x in run(client, b"n2 NOOP") if b"EXISTS" in x or b"ESEARCH" in x]
    assert got == [b"* 3 EXISTS\r\n", b'* ESEARCH (TAG "u1") ADDTO (2 3)\r\n']
    assert run(client, b'c1 CANCELUPDATE "u1"')[-1].startswith(b"c1 OK")
    append(other, b"f")
    assert updates(client, b"n3") == []


@pytest.mark.external
def test_first_answer_as_dovecot(server: ImapServerThread) -> None:
    line = b"u1 UID SORT RETURN (UPDATE ALL) (SUBJECT) UTF-8 ALL"
    ours = run(selected(server), line)[0]
    theirs = run_dovecot(FIRST, line + b"\r\n")
    assert ours in theirs.splitlines(keepends=True)


def test_reused_tag_limit_and_bad_forms(
    server: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_context, "MAX_CONTEXTS", 2)
    client = selected(server)
    run(client, b"u1 SEARCH RETURN (UPDATE) ALL")
    # One namespace of tags for both kinds (§4.3): a live SEARCH context's tag is BAD here.
    assert run(client, b"u1 SORT RETURN (UPDATE) (DATE) UTF-8 ALL")[-1].startswith(b"u1 BAD")
    run(client, b"u2 SORT RETURN (UPDATE) (DATE) UTF-8 ALL")
    lines = run(client, b"u3 SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL")
    assert lines == [
        b'* ESEARCH (TAG "u3") COUNT 3\r\n',
        b'* NO [NOUPDATE "u3"] too many update contexts\r\n',
        b"u3 OK SORT completed\r\n",
    ]
    for bad in (
        b"b1 SORT RETURN (UPDATE SAVE) (DATE) UTF-8 ALL",  # SAVE has no order (§3)
        b"b2 SORT RETURN (UPDATE UPDATE) (DATE) UTF-8 ALL",
        b"b3 SORT RETURN (UPDATE) UTF-8 ALL",  # no sort criteria
    ):
        assert run(client, bad)[-1].startswith(bad[:3] + b"BAD"), bad
    # A plain SORT (no RETURN) starts no context: nothing comes of a new message.
    assert run(client, b'c1 CANCELUPDATE "u1" "u2"')[-1].startswith(b"c1 OK")
    run(client, b"s1 SORT (DATE) UTF-8 ALL")
    append(selected(server), b"z")
    assert not [x for x in run(client, b"n1 NOOP") if b"ESEARCH" in x]
