"""message/global (RFC 6532 §3.7) in FETCH: a client that takes UTF-8 (UTF8=ACCEPT or
IMAP4rev2) sees it as RFC 9051 §7.5.2 describes, with the encapsulated message's envelope,
body and line count, and part numbers that go into it (2.HEADER, 2.1), like message/rfc822;
a client without it gets the form IMAP4rev1's grammar can carry, a leaf (body-type-basic),
byte for byte as Dovecot 2.3 answers. A base64 or quoted-printable message/global (which
§3.7 allows) stays a leaf for everyone: its header is not readable without decoding."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mailstack.imap.commands import FetchAttr
from mailstack.imap.fetch import ParsedMessage, fetch_item

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.imap.test_fetch import run_dovecot
from tests.support.imapserver import (
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

INNER = "From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\nWelt\r\n".encode()


def wrapping(subtype: bytes, inner: bytes = INNER, cte: bytes = b"8bit") -> bytes:
    return (
        b"From: postmaster@example.com\r\n"
        b"Subject: undeliverable\r\n"
        b"MIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n'
        b"\r\n"
        b"--b\r\n"
        b"Content-Type: text/plain\r\n"
        b"\r\n"
        b"see below\r\n"
        b"--b\r\n"
        b"Content-Type: message/" + subtype + b"\r\n"
        b"Content-Transfer-Encoding: " + cte + b"\r\n"
        b"\r\n" + inner + b"--b--\r\n"
    )


GLOBAL = wrapping(b"global")
ENCODED = wrapping(b"global", b"RnJvbTogeEBleGFtcGxlLmNvbQ0KDQpoaQ0K\r\n", b"base64")


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store.deliver([(USER, "INBOX")], GLOBAL)
    dep.store.deliver([(USER, "INBOX")], ENCODED)
    return dep


def session(server: ImapServerThread, enable: str | None) -> RawClient:
    return logged_in(server.imap_port, enable=enable, examine="INBOX")


def literal(lines: list[bytes]) -> bytes:
    if lines[0].endswith(b' ""]\r\n') or b'] "")' in lines[0]:
        return b""
    head, _, rest = b"".join(lines).partition(b"}\r\n")
    return rest[: int(head.rsplit(b"{", 1)[1])]


def structure(client: RawClient, n: int) -> bytes:
    line = client.command(f"FETCH {n} BODYSTRUCTURE")[0]
    assert line.endswith(b")\r\n")
    return re.sub(rb"^\* \d+ FETCH \(BODYSTRUCTURE ", b"", line)[:-3]


def test_pure_forms() -> None:
    leaf = fetch_item(FetchAttr("BODY"), ParsedMessage.parse(GLOBAL))
    opened = fetch_item(FetchAttr("BODY"), ParsedMessage.parse(GLOBAL, utf8=True))
    assert isinstance(leaf, tuple) and isinstance(opened, tuple)
    part = opened[0][1]  # type: ignore[index]
    assert part[:2] == ("message", "global") and len(part) == 10  # fields, envelope, body, lines
    assert part[9] == INNER.count(b"\n") - 1  # the last CRLF is the boundary's
    assert len(leaf[0][1]) == 7  # type: ignore[index]  # body-type-basic
    assert ParsedMessage.parse(ENCODED, utf8=True).for_utf8().root.children[1].message is None


@pytest.mark.parametrize("enable", ["UTF8=ACCEPT", "IMAP4rev2"])
def test_utf8_client_sees_the_encapsulated_message(server: ImapServerThread, enable: str) -> None:
    for _ in range(2):  # cold, then from the structure cache (which holds the rev1 form)
        with session(server, enable) as client:
            body = structure(client, 1)
            assert b'("message" "global" NIL NIL NIL "8bit" ' in body
            # The envelope of the inner message, its 8-bit strings as literals (as Dovecot).
            assert "8bit 68 (NIL {7}\r\nGrüße (({5}\r\nJörg NIL ".encode() in body.replace(
                b'"', b""
            )
            assert b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 11 1 ' in body
            header = INNER[: INNER.index(b"\r\n\r\n") + 4]
            assert literal(client.command("FETCH 1 BODY.PEEK[2.HEADER]")) == header
            # The CRLF before the boundary is the boundary's (RFC 2046 §5.1.1).
            assert literal(client.command("FETCH 1 BODY.PEEK[2.1]")) == b"Hallo\r\nWelt"
            assert literal(client.command("FETCH 1 BODY.PEEK[2.TEXT]")) == b"Hallo\r\nWelt"
            # base64: a leaf still.
            assert b'("message" "global" NIL NIL NIL "base64" 36 NIL NIL NIL NIL)' in structure(
                client, 2
            )


def test_other_client_sees_a_leaf(server: ImapServerThread) -> None:
    with session(server, None) as client:
        body = structure(client, 1)
        assert b'("message" "global" NIL NIL NIL "8bit" 68 NIL NIL NIL NIL)' in body
        assert literal(client.command("FETCH 1 BODY.PEEK[2.HEADER]")) == b""
        assert literal(client.command("FETCH 1 BODY.PEEK[2]")) == INNER[:-2]
    with session(server, "UTF8=ACCEPT") as client:  # the session cache is per form
        assert b") 4 NIL NIL NIL NIL)" in structure(client, 1)  # "... lines ext)": opened
    with session(server, None) as client:
        assert structure(client, 1) == body


@pytest.mark.external
def test_as_dovecot(server: ImapServerThread) -> None:
    """Without UTF-8, byte for byte Dovecot's answer for message/global; with it, Dovecot's
    answer for the same message as message/rfc822 (Dovecot sends 8-bit header text as is)."""
    lines = b"a1 FETCH 1 BODYSTRUCTURE\r\n"
    theirs_leaf = run_dovecot([GLOBAL], lines)
    theirs_rfc822 = run_dovecot([wrapping(b"rfc822")], lines)
    with session(server, None) as client:
        assert b"* 1 FETCH (BODYSTRUCTURE " + structure(client, 1) + b")\r\n" in theirs_leaf
    with session(server, "UTF8=ACCEPT") as client:
        ours = b"* 1 FETCH (BODYSTRUCTURE " + structure(client, 1) + b")\r\n"
    assert ours.replace(b'"global"', b'"rfc822"') in theirs_rfc822


@pytest.mark.parametrize("enable", [None, "UTF8=ACCEPT"])
def test_catenate_urls_number_parts_as_fetch_does(
    server: ImapServerThread, enable: str | None
) -> None:
    """An IMAP URL's SECTION (RFC 5092, in CATENATE) means what FETCH shows this client."""
    with session(server, enable) as client:
        line = client.command("STATUS INBOX (UIDVALIDITY)")[0]
        uv = int(re.search(rb"UIDVALIDITY (\d+)", line)[1])  # type: ignore[index]
        url = f"/INBOX;UIDVALIDITY={uv}/;UID=1/;SECTION=2.1".encode()
        ok = client.tagged(b"APPEND Drafts CATENATE (URL " + url + b")")
        assert ok.startswith(b"OK [APPENDUID "), ok
        assert client.tagged("EXAMINE Drafts").startswith(b"OK")
        stored = literal(client.command("FETCH 1 BODY.PEEK[]"))
        if enable:  # 2.1: the encapsulated message's body
            assert stored == b"Hallo\r\nWelt"
        else:  # 2.1 of a leaf is the leaf: the whole inner message, shown downgraded here
            assert stored.startswith(b"From: =?utf-8?")
            assert stored.endswith(b"\r\n\r\nHallo\r\nWelt")
