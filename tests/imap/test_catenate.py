"""CATENATE (RFC 4469) over raw sockets: APPEND joins TEXT literals and IMAP URLs (RFC 5092)
to messages the user can read, with MULTIAPPEND, [BADURL] and [TOOBIG] (nothing stored then),
and the ACL rights of shared folders (a folder without `r` is a BADURL)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from mailstack.delivery import acl
from mailstack.imap import commands as c
from mailstack.imap.catenate import BadUrlError, ImapUrl, parse_url
from mailstack.imap.parser import ParseError, parse_command

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

HEADER = (
    b"From: a@example.com\r\nSubject: original\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
)
BODY = b"--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n--b\r\n\r\npart two\r\n--b--\r\n"
LIMIT = 1000  # smtp.max_message_size of this deployment: two copies of the message exceed it


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    smtp = dataclasses.replace(dep.config.smtp, max_message_size=LIMIT)
    dep = dataclasses.replace(dep, config=dataclasses.replace(dep.config, smtp=smtp))
    dep.store.deliver(
        [(USER, "INBOX")], HEADER + BODY + b"x" * (LIMIT // 2 + 10 - len(HEADER + BODY))
    )
    for folder, rights in (("Readable", "lr"), ("Listed", "l")):
        dep.store.create_folder(USER, folder)
        dep.store.deliver([(USER, folder)], HEADER + BODY)
        acl.set_rights(
            acl.folder_dir(dep.paths.maildir(USER), folder), f"user={OTHER_USER}", rights
        )
    return dep


def login(server: ImapServerThread, user: str = USER, password: str = PASSWORD) -> RawClient:
    return logged_in(server.imap_port, user=user, password=password)


def text(data: bytes) -> bytes:
    return b"TEXT {%d+}\r\n" % len(data) + data


def uid_validity(client: RawClient, folder: str) -> int:
    line = client.command(f"STATUS {folder} (UIDVALIDITY)")[0]
    m = re.search(rb"UIDVALIDITY (\d+)", line)
    assert m is not None, line
    return int(m[1])


def fetch_body(client: RawClient, folder: str, uid: int) -> bytes:
    assert client.tagged(f"EXAMINE {folder}").startswith(b"OK")
    line = client.command(f"UID FETCH {uid} BODY.PEEK[]")[0]
    if (quoted := re.search(rb'BODY\[\] "(.*)"\)\r\n$', line)) is not None:
        return quoted[1]
    head, _, rest = line.partition(b"}\r\n")
    return rest[: int(head.rsplit(b"{", 1)[1])]


def test_text_and_urls_joined(server: ImapServerThread) -> None:
    with login(server) as client:
        assert b" CATENATE " in client.command("CAPABILITY")[0]
        uv = uid_validity(client, "INBOX")
        url = f"/INBOX;UIDVALIDITY={uv}/;UID=1/;SECTION=HEADER".encode()
        intro = b"\r\nnew text first\r\n"
        ok = client.tagged(
            b"APPEND Drafts (\\Draft) CATENATE (URL "
            + url
            + b" "
            + text(intro)
            + b" URL imap://alice@mail.example.com/INBOX/;UID=1/;SECTION=1)"
        )
        assert ok.startswith(b"OK [APPENDUID "), ok
        assert fetch_body(client, "Drafts", 1) == HEADER + intro + b"part one"
        # Relative to the selected mailbox, with PARTIAL (RFC 5092 §3.5).
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        ok = client.tagged(b'APPEND Drafts CATENATE (URL ";UID=1/;SECTION=2;PARTIAL=0.4")')
        assert ok.startswith(b"OK"), ok
        assert fetch_body(client, "Drafts", 2) == b"part"


def test_url_mailbox_is_utf8(server: ImapServerThread) -> None:
    # RFC 5092 §3.2: a URL names the mailbox in UTF-8, %-encoded, whatever the session enabled.
    with login(server) as client:
        assert client.tagged("CREATE Entw&APw-rfe").startswith(b"OK")
        append = b"APPEND Entw&APw-rfe {%d+}\r\n" % len(HEADER + BODY) + HEADER + BODY
        assert client.tagged(append).startswith(b"OK")
        url = b'"/Entw%C3%BCrfe/;UID=1/;SECTION=1"'
        assert client.tagged(b"APPEND Drafts CATENATE (URL " + url + b")").startswith(b"OK")
        assert fetch_body(client, "Drafts", 1) == b"part one"


def test_multiappend_with_catenate_is_all_or_nothing(server: ImapServerThread) -> None:
    with login(server) as client:
        uv = uid_validity(client, "INBOX")
        good = f"URL /INBOX;UIDVALIDITY={uv}/;UID=1/;SECTION=1".encode()
        ok = client.tagged(b"APPEND Drafts CATENATE (" + good + b") CATENATE (" + good + b")")
        assert ok.startswith(b"OK [APPENDUID %d 1:2]" % uid_validity(client, "Drafts")), ok
        for bad_url in (
            f"/INBOX;UIDVALIDITY={uv + 1}/;UID=1".encode(),  # UIDVALIDITY changed
            b"/INBOX/;UID=99",  # no such message
            b"/Nowhere/;UID=1",  # no such folder
            b"http://example.com/",  # not an IMAP URL
            b"/INBOX/;UID=1/;SECTION=BOGUS",  # no such section
        ):
            answer = client.tagged(
                b"APPEND Drafts CATENATE (" + good + b") CATENATE (URL " + bad_url + b")"
            )
            assert answer.startswith(b"NO [BADURL " + bad_url + b"]"), answer
        # A name that climbs out of the Maildir is no folder at all.
        for escape in (b"/..%2F..%2Fbob%40example.com/;UID=1", b"/../;UID=1", b"/./;UID=1"):
            answer = client.tagged(b'APPEND Drafts CATENATE (URL "' + escape + b'")')
            assert answer.startswith(b"NO [BADURL " + escape + b"]"), answer
        # The code echoes the URL with what its grammar cannot hold %-encoded (RFC 4469 §6).
        answer = client.tagged('APPEND Drafts CATENATE (URL "/a]b/;UID=1ü")'.encode())
        assert answer.startswith(b"NO [BADURL /a%5Db/;UID=1%C3%BC] "), answer
        # TOOBIG: the joined result exceeds the size limit; nothing is stored.
        answer = client.tagged(b"APPEND Drafts CATENATE (" + good + b" URL /INBOX/;UID=1)")
        assert answer.startswith(b"OK"), answer
        answer = client.tagged(b"APPEND Drafts CATENATE (URL /INBOX/;UID=1 URL /INBOX/;UID=1)")
        assert answer.startswith(b"NO [TOOBIG]"), answer
        assert client.command("STATUS Drafts (MESSAGES)")[0].endswith(b"(MESSAGES 3)\r\n")
        # Syntax: a literal8 is not a TEXT part; an unknown part type is BAD.
        assert client.tagged(b"APPEND Drafts CATENATE (TEXT ~{1+}\r\nx)").startswith(b"BAD")
        assert client.tagged(b"APPEND Drafts CATENATE (FILE x)").startswith(b"BAD")
        assert client.tagged(b"APPEND Drafts CATENATE ()").startswith(b"BAD")


def test_urls_follow_acl_rights(server: ImapServerThread) -> None:
    readable = "Shared/alice@example.com/Readable"
    listed = "Shared/alice@example.com/Listed"
    with login(server, OTHER_USER, OTHER_PASSWORD) as bob:
        url = f"/{readable}/;UID=1/;SECTION=1".replace("@", "%40").encode()
        # "%" is a list-wildcard, not an ASTRING-CHAR: such a URL goes quoted.
        ok = bob.tagged(b'APPEND INBOX CATENATE (URL "' + url + b'")')
        assert ok.startswith(b"OK"), ok
        assert fetch_body(bob, "INBOX", 1) == b"part one"
        # Bob sees Listed (l) but may not read it (no r): a BADURL, as if it did not exist.
        url = f"/{listed}/;UID=1".replace("@", "%40").encode()
        answer = bob.tagged(b'APPEND INBOX CATENATE (URL "' + url + b'")')
        assert answer.startswith(b"NO [BADURL " + url + b"]"), answer
        # Alice's own folders are not Bob's: /INBOX is his INBOX, Readable is nobody's.
        assert bob.tagged(b"APPEND INBOX CATENATE (URL /Readable/;UID=1)").startswith(b"NO [BADURL")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param(
            b"a APPEND X CATENATE (TEXT {2+}\r\nhi URL /INBOX/;UID=3)\r\n",
            (c.CatenatePart(text=b"hi"), c.CatenatePart(url="/INBOX/;UID=3")),
            id="text-and-url",
        ),
        pytest.param(
            b'a APPEND X CATENATE (URL "/a%20b/;UID=1" UTF8 (~{2+}\r\n\xc3\xa9))\r\n',
            (c.CatenatePart(url="/a%20b/;UID=1"), c.CatenatePart(text=b"\xc3\xa9", utf8=True)),
            id="quoted-url-and-utf8",
        ),
    ],
)
def test_parse_catenate(line: bytes, expected: tuple[c.CatenatePart, ...]) -> None:
    command = parse_command(line)
    assert isinstance(command, c.Append)
    assert command.all_messages()[0].catenate == expected


@pytest.mark.parametrize(
    "line",
    [
        b"a APPEND X CATENATE ()\r\n",
        b"a APPEND X CATENATE (TEXT ~{1+}\r\nx)\r\n",  # TEXT takes a literal, not a literal8
        b"a APPEND X CATENATE (URL)\r\n",
        b"a APPEND X CATENATE (TEXT {1+}\r\nx\r\n",  # unclosed
        b"a APPEND X UTF8 ({1+}\r\nx)\r\n",  # UTF8 takes a literal8
        b"a APPEND X UTF8 (~{1+}\r\nx\r\n",
    ],
)
def test_parse_catenate_errors(line: bytes) -> None:
    with pytest.raises(ParseError):
        parse_command(line)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "imap://alice@mail.example.com/INBOX;UIDVALIDITY=7/;UID=20/;SECTION=1.2.MIME",
            ImapUrl("INBOX", 7, 20, c.Section((1, 2), "MIME")),
        ),
        ("/Entw%C3%BCrfe/;UID=1", ImapUrl("Entw&APw-rfe", None, 1, c.Section())),
        (";UID=5/;PARTIAL=10.20", ImapUrl(None, None, 5, c.Section(), (10, 20))),
        (
            "/inbox/;UID=2/;SECTION=HEADER.FIELDS%20(SUBJECT)",
            ImapUrl("INBOX", None, 2, c.Section((), "HEADER.FIELDS", ("SUBJECT",))),
        ),
    ],
)
def test_parse_url(url: str, expected: ImapUrl) -> None:
    assert parse_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "/INBOX",  # a mailbox, not a message
        "/INBOX/;UID=0",
        "/INBOX/;UID=1/;URLAUTH=anonymous:internal:abc",  # RFC 4467: not supported
        "/INBOX/;UID=1/;SECTION=1..2",
        "http://example.com/INBOX/;UID=1",
    ],
)
def test_parse_url_errors(url: str) -> None:
    with pytest.raises(BadUrlError):
        parse_url(url)
