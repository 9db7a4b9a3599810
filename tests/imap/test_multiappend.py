"""MULTIAPPEND (RFC 3502), APPENDLIMIT (RFC 7889), STATUS=SIZE (RFC 8438) and ID (RFC 2971)
over real sockets: raw bytes for the edge cases, imapclient for a client's view, Dovecot for
the answers both should give."""

from __future__ import annotations

import datetime
import re
from pathlib import Path

import pytest
from imapclient import IMAPClient

from tests.imap.dovecot_preauth import DovecotMaildir, dovecot_maildir  # noqa: F401
from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MAX_SIZE = 50 * 1024 * 1024  # smtp.max_message_size's default: the literal limit after login


def msg(n: int) -> bytes:
    return b"From: a@example.com\r\nSubject: message %d\r\n\r\nbody %d\r\n" % (n, n)


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


MULTI = (
    b'APPEND INBOX (\\Seen) "01-Feb-2024 10:00:00 +0000" '
    + lit(msg(1))
    + b" "
    + lit(msg(2))
    + b" ($Work \\Flagged) "
    + lit(msg(3))
)


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


def login(server: ImapServerThread, user: str = USER, password: str = PASSWORD) -> RawClient:
    return logged_in(server.imap_port, user=user, password=password)


def answers(client: RawClient) -> list[bytes]:
    """What both servers should say about the MULTIAPPEND above, UIDVALIDITY aside."""
    done = client.tagged(MULTI)
    assert done.startswith(b"OK"), done
    code = re.sub(rb" completed.*| \d+ ", b" V ", done.split(b"] ")[0] + b"]", count=1)
    lines = [code]
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    for line in client.command("FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)")[:-1]:
        flags = re.search(rb"FLAGS \(([^)]*)\)", line)
        assert flags is not None
        ordered = b" ".join(sorted(flags[1].split()))
        lines.append(line.replace(flags[0], b"FLAGS (" + ordered + b")").rstrip())
    lines += client.command("STATUS INBOX (MESSAGES SIZE)")[:-1]
    return lines


@pytest.mark.external
def test_multiappend_matches_dovecot(
    server: ImapServerThread,
    dovecot_maildir: DovecotMaildir,  # noqa: F811
) -> None:
    with dovecot_maildir.session() as theirs:
        expected = answers(theirs)
    assert expected[0] == b"OK [APPENDUID V 1:3]"
    assert expected[-1] == b"* STATUS INBOX (MESSAGES 3 SIZE %d)\r\n" % (3 * len(msg(1)))
    with login(server) as ours:
        got = answers(ours)
    # INTERNALDATE: Dovecot shows the given zone, we show the server's (RFC 9051 allows either);
    # the instants agree. Only the first message had a date.
    assert [re.sub(rb'INTERNALDATE "[^"]*" ', b"", x) for x in got] == [
        re.sub(rb'INTERNALDATE "[^"]*" ', b"", x) for x in expected
    ]
    first = re.search(rb'INTERNALDATE "([^"]*)"', got[1])
    assert first is not None
    when = datetime.datetime.strptime(first[1].decode().strip(), "%d-%b-%Y %H:%M:%S %z")
    assert when == datetime.datetime(2024, 2, 1, 10, tzinfo=datetime.UTC)


def test_multiappend_is_all_or_nothing(dep: ImapDeployment, server: ImapServerThread) -> None:
    dep.accounts.set_quota(OTHER_USER, 2 * len(msg(1)) + 10)  # room for two of the three
    with login(server, OTHER_USER, OTHER_PASSWORD) as client:
        assert client.tagged(MULTI).startswith(b"NO [OVERQUOTA]")
        assert client.tagged(b"APPEND Nowhere " + lit(msg(1)) + b" " + lit(msg(2))).startswith(
            b"NO [TRYCREATE]"
        )
        bad_flag = b"APPEND INBOX " + lit(msg(1)) + b" (\\Bogus) " + lit(msg(2))
        assert client.tagged(bad_flag).startswith(b"BAD")
        bad_syntax = b"APPEND INBOX " + lit(msg(1)) + b" junk"
        assert client.tagged(bad_syntax).startswith(b"BAD")
        # The second literal is refused before it is sent (RFC 7888 §4): nothing is stored.
        client.send(b"big APPEND INBOX " + lit(msg(1)) + b" {%d}\r\n" % (MAX_SIZE + 1))
        assert client.line().startswith(b"big NO [TOOBIG]")
        assert client.command("STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"
        assert client.tagged(b"APPEND INBOX " + lit(msg(1)) + b" " + lit(msg(2))).startswith(
            b"OK [APPENDUID "
        )
        assert client.command("STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 2)\r\n"
    assert [m.uid for m in dep.store.snapshot(OTHER_USER, "INBOX").messages] == [1, 2]


def test_multiappend_with_imapclient_and_synchronizing_literals(server: ImapServerThread) -> None:
    with IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, use_uid=True) as client:
        client.login(USER, PASSWORD)
        client._imap.literal_plus = False
        result = client.multiappend("Drafts", [msg(1), {"msg": msg(2), "flags": [b"\\Draft"]}])
        status, [text] = result
        assert status == "OK"
        assert re.match(rb"\[APPENDUID \d+ 1:2\]", text), result
        client.select_folder("Drafts")
        fetched = client.fetch([1, 2], ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
        assert [set(fetched[uid][b"FLAGS"]) for uid in (1, 2)] == [
            {b"\\Recent"},
            {b"\\Draft", b"\\Recent"},
        ]
        assert fetched[2][b"BODY[HEADER.FIELDS (SUBJECT)]"].startswith(b"Subject: message 2")


def test_appendlimit_before_and_after_login(dep: ImapDeployment, server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert b"APPENDLIMIT" not in client.greeting
        assert b"MULTIAPPEND" in client.greeting
        assert b"STATUS=SIZE" in client.greeting
        logged = client.tagged(f'LOGIN {USER} "{PASSWORD}"')
        assert b" APPENDLIMIT=%d]" % MAX_SIZE in logged
        status = client.command("STATUS INBOX (APPENDLIMIT)")[0]
        assert status == b"* STATUS INBOX (APPENDLIMIT %d)\r\n" % MAX_SIZE
    dep.accounts.set_quota(OTHER_USER, 1000)  # a quota makes the limit vary: per mailbox
    with login(server, OTHER_USER, OTHER_PASSWORD) as client:
        caps = client.command("CAPABILITY")[0]
        assert re.search(rb" APPENDLIMIT( |\r)", caps), caps
        assert client.tagged(b"APPEND Sent " + lit(msg(1))).startswith(b"OK")
        left = 1000 - len(msg(1))  # the store counts LF endings, as maildirsize does
        lines = client.command('LIST "" Sent RETURN (STATUS (APPENDLIMIT MESSAGES))')
        assert lines[1] == b"* STATUS Sent (APPENDLIMIT %d MESSAGES 1)\r\n" % (
            left + msg(1).count(b"\r\n")
        )


def test_id_in_any_state(server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", server.imap_port) as client:
        for command in ("ID NIL", 'ID ("name" "test" "version" NIL)'):
            lines = client.command(command)
            assert re.fullmatch(
                rb'\* ID \("name" "mailstack" "version" "[^"]+" "vendor" "mailstack"\)\r\n',
                lines[0],
            ), lines
            assert lines[1].split(b" ")[1] == b"OK"
        too_many = " ".join(f'"f{i}" "v"' for i in range(31))
        assert client.tagged(f"ID ({too_many})").startswith(b"BAD")  # RFC 2971 §3.3: 30 at most
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.command("ID NIL")[-1].split(b" ")[1] == b"OK"
