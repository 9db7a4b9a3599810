"""IMAP4rev2 (RFC 9051) beside IMAP4rev1: advertised always, honoured after ENABLE IMAP4rev2.

The same server answers an IMAP4rev1 session and an IMAP4rev2 one differently: no \\Recent and
no RECENT, ESEARCH for every SEARCH, a LIST response in SELECT and no UNSEEN code, \\NonExistent
for an implied parent, mailbox names in UTF-8 (stored as modified UTF-7, so Dovecot and rev1
clients see them as always).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MESSAGE = b"From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    for _ in range(2):
        dep.store.deliver([(USER, "INBOX")], MESSAGE)
    for sub in ("cur", "new", "tmp"):  # "Lists.Work" without "Lists", as Dovecot may leave it
        (dep.paths.maildir(USER) / ".Lists.Work" / sub).mkdir(parents=True)
    return dep


def session(server: ImapServerThread, *, rev2: bool) -> RawClient:
    return logged_in(server.imap_port, enable="IMAP4rev2" if rev2 else None)


def test_capability_before_and_after_login(server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert b" IMAP4rev1 IMAP4rev2 " in client.greeting
        assert b" IMAP4rev1 IMAP4rev2 " in client.command("CAPABILITY")[0]
        assert b" IMAP4rev1 IMAP4rev2 " in client.tagged(f'LOGIN {USER} "{PASSWORD}"')
        assert b" IMAP4rev1 IMAP4rev2 " in client.command("CAPABILITY")[0]
        # Both are ENABLE-able here (CONDSTORE since the index branch).
        enabled = client.command("ENABLE IMAP4rev2 CONDSTORE")[0]
        assert enabled == b"* ENABLED IMAP4rev2 CONDSTORE\r\n"
        assert client.command("ENABLE IMAP4rev2")[0] == b"* ENABLED\r\n"  # nothing new
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        assert client.tagged("ENABLE IMAP4rev2").startswith(b"BAD")  # RFC 5161 §3.1


def test_select_fetch_and_search(server: ImapServerThread) -> None:
    with session(server, rev2=False) as rev1:
        lines = rev1.command("EXAMINE INBOX")
        assert b"* 2 RECENT\r\n" in lines
        assert any(line.startswith(b"* OK [UNSEEN 1]") for line in lines)
        assert rev1.command("SEARCH ALL")[0] == b"* SEARCH 1 2\r\n"
    with session(server, rev2=True) as rev2:
        lines = rev2.command("SELECT INBOX")
        assert not any(b"RECENT" in line or b"UNSEEN" in line for line in lines), lines
        assert b'* LIST () "." INBOX\r\n' in lines
        assert lines[-1].startswith(b"t3 OK [READ-WRITE]")
        assert rev2.command("FETCH 1:* FLAGS")[:2] == [
            b"* 1 FETCH (FLAGS ())\r\n",
            b"* 2 FETCH (FLAGS ())\r\n",
        ]
        assert rev2.command("SEARCH ALL")[0] == b'* ESEARCH (TAG "t5") ALL 1:2\r\n'
        assert rev2.command("UID SEARCH DELETED")[0] == b'* ESEARCH (TAG "t6") UID\r\n'
        assert rev2.command("SEARCH RETURN (COUNT) ALL")[0] == b'* ESEARCH (TAG "t7") COUNT 2\r\n'
        assert rev2.tagged("STORE 1 +FLAGS (\\Deleted)").startswith(b"OK")
        status = rev2.command("STATUS INBOX (MESSAGES DELETED SIZE)")[0]
        assert status == b"* STATUS INBOX (MESSAGES 2 DELETED 1 SIZE %d)\r\n" % (2 * len(MESSAGE))
        # Mail arriving now is reported by EXISTS alone: no RECENT follows it.
        server.deployment.store.deliver([(USER, "INBOX")], MESSAGE)
        assert rev2.command("NOOP")[:-1] == [b"* 3 EXISTS\r\n"]


def test_list_implied_parent_is_nonexistent(server: ImapServerThread) -> None:
    with session(server, rev2=False) as rev1:
        assert b'* LIST (\\Noselect \\HasChildren) "." Lists\r\n' in rev1.command('LIST "" %')
    with session(server, rev2=True) as rev2:
        assert b'* LIST (\\NonExistent \\HasChildren) "." Lists\r\n' in rev2.command('LIST "" %')


def test_mailbox_names_are_utf8(dep: ImapDeployment, server: ImapServerThread) -> None:
    name = "Entwürfe".encode()
    with session(server, rev2=True) as rev2:
        assert rev2.tagged(b'CREATE "' + name + b'"').startswith(b"OK")
        assert rev2.tagged(b'CREATE "R&D"').startswith(b"OK")
        listed = rev2.command('LIST "" *')
        assert b'* LIST (\\HasNoChildren) "." {9}\r\n' + name + b"\r\n" in listed
        assert b'* LIST (\\HasNoChildren) "." R&D\r\n' in listed
        assert rev2.tagged(b'SELECT "' + name + b'"').startswith(b"OK")
        status = rev2.command(b'STATUS "R&D" (MESSAGES)')[0]
        assert status == b"* STATUS R&D (MESSAGES 0)\r\n"
        assert rev2.tagged(b'APPEND "R&D" {%d+}\r\n' % len(MESSAGE) + MESSAGE).startswith(b"OK")
    # Stored as Dovecot stores them; an IMAP4rev1 session sees modified UTF-7.
    assert (dep.paths.maildir(USER) / ".Entw&APw-rfe" / "cur").is_dir()
    assert (dep.paths.maildir(USER) / ".R&-D" / "cur").is_dir()
    with session(server, rev2=False) as rev1:
        listed = rev1.command('LIST "" *')
        assert b'* LIST (\\HasNoChildren) "." Entw&APw-rfe\r\n' in listed
        assert rev1.command("STATUS R&-D (MESSAGES)")[0] == b"* STATUS R&-D (MESSAGES 1)\r\n"


def test_no_recent_anywhere_after_enable(server: ImapServerThread) -> None:
    # RFC 9051 §2.3.2 and Appendix E: no \Recent; §9 dropped the RECENT status item and the
    # RECENT, NEW and OLD search keys, so they are syntax errors for an IMAP4rev2 session.
    with session(server, rev2=False) as rev1:
        assert rev1.command("STATUS INBOX (RECENT)")[0] == b"* STATUS INBOX (RECENT 2)\r\n"
        assert rev1.tagged("EXAMINE INBOX").startswith(b"OK")
        assert rev1.command("SEARCH NEW")[0] == b"* SEARCH 1 2\r\n"
        assert rev1.command("SEARCH OLD")[0] == b"* SEARCH\r\n"
        assert rev1.command("FETCH 1 FLAGS")[0] == b"* 1 FETCH (FLAGS (\\Recent))\r\n"
    with session(server, rev2=True) as rev2:
        for bad in (
            "STATUS INBOX (MESSAGES RECENT)",
            'LIST "" INBOX RETURN (STATUS (RECENT))',
        ):
            assert rev2.tagged(bad).startswith(b"BAD IMAP4rev2 has no RECENT"), bad
        assert rev2.command('LIST "" INBOX RETURN (STATUS (MESSAGES))')[1] == (
            b"* STATUS INBOX (MESSAGES 2)\r\n"
        )
        lines = rev2.command("SELECT INBOX")
        assert not any(b"RECENT" in line for line in lines), lines
        for bad in ("SEARCH RECENT", "SEARCH NEW", "UID SEARCH OLD", "SEARCH NOT (1 OR 2 NEW)"):
            assert rev2.tagged(bad).startswith(b"BAD IMAP4rev2 has no RECENT"), bad
        assert rev2.tagged("SORT (DATE) UTF-8 RECENT").startswith(b"BAD")
        assert rev2.command("SEARCH UNSEEN")[0] == b'* ESEARCH (TAG "t12") ALL 1:2\r\n'
        assert rev2.command("FETCH 1:* FLAGS")[0] == b"* 1 FETCH (FLAGS ())\r\n"
        # The session goes on after each BAD.
        assert rev2.tagged("NOOP").startswith(b"OK")


def test_rev2_session_leaves_recent_to_rev1_sessions(server: ImapServerThread) -> None:
    # RFC 9051 has no \Recent: a session that cannot report it does not take it away from an
    # IMAP4rev1 session of the same account (RFC 3501 §2.3.2 allows "recent" when unsure).
    with session(server, rev2=True) as rev2:
        assert rev2.tagged("SELECT INBOX").startswith(b"OK")
        server.deployment.store.deliver([(USER, "INBOX")], MESSAGE)
        assert rev2.command("NOOP")[:-1] == [b"* 3 EXISTS\r\n"]
        with session(server, rev2=False) as rev1:
            assert b"* 3 RECENT\r\n" in rev1.command("SELECT INBOX")
        with session(server, rev2=False) as rev1:  # the first rev1 session took them
            assert b"* 0 RECENT\r\n" in rev1.command("SELECT INBOX")
