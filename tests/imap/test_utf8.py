"""UTF8=ACCEPT (RFC 6855) over real sockets: advertised always, in force after ENABLE.

After ENABLE UTF8=ACCEPT: mailbox names in UTF-8 (stored as modified UTF-7, as Dovecot stores
them), APPEND's UTF8 data item, SEARCH without CHARSET, and a message with UTF-8 header fields
returned byte for byte. A client that did not enable it gets such a message downgraded
(imap/downgrade.py, RFC 6857's scheme): no raw 8-bit header byte in ENVELOPE or BODY[HEADER].
"""

from __future__ import annotations

from pathlib import Path

import imapclient
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap import fetch, response
from mailstack.imap.downgrade import downgrade
from mailstack.imap.fetch import ParsedMessage

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

# As the MX stores an SMTPUTF8 message (RFC 6532: UTF-8 in header fields).
INTL = (
    "From: Jörg Müller <jörg@bücher.example>\r\n"
    "To: Ann <ann@bücher.example>\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Message-ID: <straße@bücher.example>\r\n"
    "\r\n"
    "Hallo\r\n"
).encode()
ASCII = b"From: a@example.com\r\nSubject: plain\r\n\r\nbody\r\n"
FIELD_NAMES = ["From", "To", "Subject", "Message-ID", "Content-Type", "X-Note", "References"]


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store.deliver([(USER, "INBOX")], ASCII)
    dep.store.deliver([(USER, "INBOX")], INTL)
    return dep


def session(server: ImapServerThread, *, utf8: bool) -> RawClient:
    return logged_in(server.imap_port, enable="UTF8=ACCEPT" if utf8 else None)


def header_of(lines: list[bytes]) -> bytes:
    """The literal of `* n FETCH (BODY[HEADER] {n}\\r\\n...)`."""
    head, _, rest = lines[0].partition(b"}\r\n")
    return rest[: int(head.rsplit(b"{", 1)[1])]


def test_capability_and_enable(server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert b" UTF8=ACCEPT " in client.greeting
        assert b" UTF8=ACCEPT " in client.command("CAPABILITY")[0]
        assert client.tagged("ENABLE UTF8=ACCEPT").startswith(b"BAD")  # not authenticated
        assert b" UTF8=ACCEPT " in client.tagged(f'LOGIN {USER} "{PASSWORD}"')
        assert b" CATENATE " in client.command("CAPABILITY")[0]
        assert client.command("ENABLE UTF8=ACCEPT")[0] == b"* ENABLED UTF8=ACCEPT\r\n"
        assert client.command("ENABLE UTF8=ACCEPT")[0] == b"* ENABLED\r\n"  # nothing new


def test_mailbox_names_are_utf8(dep: ImapDeployment, server: ImapServerThread) -> None:
    name = "Entwürfe".encode()
    with session(server, utf8=True) as client:
        assert client.tagged(b'CREATE "' + name + b'"').startswith(b"OK")
        listed = client.command('LIST "" *')
        assert b'* LIST (\\HasNoChildren) "." {9}\r\n' + name + b"\r\n" in listed
        assert client.tagged(b'SELECT "' + name + b'"').startswith(b"OK")
    assert (dep.paths.maildir(USER) / ".Entw&APw-rfe" / "cur").is_dir()
    with session(server, utf8=False) as client:
        assert b'* LIST (\\HasNoChildren) "." Entw&APw-rfe\r\n' in client.command('LIST "" *')


def test_append_with_utf8_data_item(server: ImapServerThread) -> None:
    item = b"UTF8 (~{%d+}\r\n" % len(INTL) + INTL + b")"
    with session(server, utf8=False) as client:
        # RFC 6855 §4: the UTF8 item only after ENABLE UTF8=ACCEPT.
        assert client.tagged(b"APPEND INBOX " + item).startswith(b"BAD ENABLE UTF8=ACCEPT")
    with session(server, utf8=True) as client:
        assert client.tagged(b"APPEND INBOX (\\Seen) " + item).startswith(b"OK [APPENDUID ")
        # A plain literal (not literal8) inside UTF8 ( ) is a syntax error.
        plain = b"APPEND INBOX UTF8 ({%d+}\r\n" % len(INTL) + INTL + b")"
        assert client.tagged(plain).startswith(b"BAD")
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        assert header_of(client.command("FETCH 3 BODY.PEEK[HEADER]")) == INTL.split(b"\r\n\r\n")[
            0
        ] + (b"\r\n\r\n")


def test_search_charset_rules(server: ImapServerThread) -> None:
    with session(server, utf8=True) as client:
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        # RFC 6855 §3: no CHARSET once UTF8=ACCEPT is on; strings are UTF-8.
        assert client.tagged("SEARCH CHARSET UTF-8 ALL").startswith(b"BAD no CHARSET")
        found = client.command('SEARCH SUBJECT "Grüße"'.encode())
        assert found[0] == b"* SEARCH 2\r\n"
        # Erratum 4029: SORT and THREAD take UTF-8 only.
        assert client.tagged("SORT (SUBJECT) US-ASCII ALL").startswith(b"BAD only CHARSET")
        assert client.command('SORT (SUBJECT) UTF-8 SUBJECT "Köln"'.encode())[0] == (
            b"* SORT 2\r\n"
        )
    with session(server, utf8=False) as client:
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        found = client.command('SEARCH CHARSET UTF-8 SUBJECT "Grüße"'.encode())
        assert found[0] == b"* SEARCH 2\r\n"


@pytest.mark.parametrize("utf8_first", [True, False], ids=["cached-by-utf8", "cold"])
def test_headers_as_is_or_downgraded(server: ImapServerThread, utf8_first: bool) -> None:
    raw_header = INTL.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    order = [True, False] if utf8_first else [False, True]
    for utf8 in order:  # the structure cache is filled by whichever session comes first
        with session(server, utf8=utf8) as client:
            assert client.tagged("EXAMINE INBOX").startswith(b"OK")
            for _ in range(2):  # a cold and a cached ENVELOPE
                envelope = client.command("FETCH 2 (ENVELOPE BODYSTRUCTURE)")[0]
                if utf8:
                    assert "Grüße aus Köln".encode() in envelope
                else:
                    assert envelope.isascii(), envelope
                    assert b'"=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="' in envelope
                    assert b'"Ann" NIL "ann" "xn--bcher-kva.example"' in envelope
            # ENVELOPE alone and HEADER.FIELDS come from the stored header rows instead.
            envelope = client.command("FETCH 2 ENVELOPE")[0]
            fields = header_of(client.command("FETCH 2 BODY.PEEK[HEADER.FIELDS (SUBJECT)]"))
            if utf8:
                assert "Grüße aus Köln".encode() in envelope
                assert fields == "Subject: Grüße aus Köln\r\n\r\n".encode()
            else:
                assert envelope.isascii(), envelope
                assert b'"=?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?="' in envelope
                assert fields == b"Subject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\r\n\r\n"
            header = header_of(client.command("FETCH 2 BODY.PEEK[HEADER]"))
            if utf8:
                assert header == raw_header
            else:
                assert header.isascii()
                assert b"\r\nDowngraded-Message-ID: =?utf-8?" in header
                assert header.startswith(b"From: =?utf-8?b?")  # a group: the local part is 8-bit
                assert header.endswith(b"\r\n\r\n")
            body = client.command("FETCH 1 BODY.PEEK[]")[0]
            assert body.endswith(ASCII + b")\r\n")  # an ASCII message is never touched


def test_imapclient_reads_it_as_is(server: ImapServerThread) -> None:
    client = imapclient.IMAPClient("127.0.0.1", port=server.imap_port, ssl=False, timeout=30)
    try:
        client.login(USER, PASSWORD)
        assert client.enable("UTF8=ACCEPT") == [b"UTF8=ACCEPT"]
        client.select_folder("INBOX", readonly=True)
        data = client.fetch([2], ["BODY.PEEK[]", "ENVELOPE"])
        assert data[2][b"BODY[]"] == INTL
        assert data[2][b"ENVELOPE"].subject == "Grüße aus Köln".encode()
    finally:
        client.logout()


def downgraded_header(message: bytes) -> bytes:
    parsed = downgrade(ParsedMessage.parse(message))
    return parsed.data[: parsed.root.body_start]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        pytest.param("Subject: Grüße", b"Subject: =?utf-8?b?R3LDvMOfZQ==?=\r\n", id="unstructured"),
        pytest.param(
            "To: Jörg <j@example.com>, b@bücher.example",
            b"To: =?utf-8?b?SsO2cmc=?= <j@example.com>, b@xn--bcher-kva.example\r\n",
            id="name-and-idn",
        ),
        pytest.param(
            "Cc: δοκιμή@παράδειγμα.δοκιμή",
            b"Cc: =?utf-8?b?zrTOv866zrnOvM6uQM+AzrHPgc6szrTOtc65zrPOvM6xLs60zr/Ous65zrzOrg==?="
            b" :;\r\n",
            id="local-part-to-group",
        ),
        pytest.param(
            "Bcc: " + ", ".join(f"Jörg {n} <j{n}@example.com>" for n in range(3)),
            b"Bcc: =?utf-8?q?J=C3=B6rg_0?= <j0@example.com>,\r\n"
            b" =?utf-8?q?J=C3=B6rg_1?= <j1@example.com>,\r\n"
            b" =?utf-8?q?J=C3=B6rg_2?= <j2@example.com>\r\n",
            id="folded-between-addresses",
        ),
        pytest.param(
            "In-Reply-To: <ü@example.com>",
            b"Downgraded-In-Reply-To: =?utf-8?b?PMO8QGV4YW1wbGUuY29tPg==?=\r\n",
            id="identifier",
        ),
        pytest.param(
            'Content-Disposition: attachment; filename="Bücher.pdf"',
            b"Content-Disposition: attachment; filename*=utf-8''B%C3%BCcher.pdf\r\n",
            id="rfc2231-parameter",
        ),
    ],
)
def test_downgrade_fields(field: str, expected: bytes) -> None:
    assert downgraded_header(field.encode() + b"\r\n\r\nbody\r\n") == expected + b"\r\n"


def test_downgrade_parts_and_latin1() -> None:
    message = (
        b"From: a@example.com\r\nSubject: caf\xe9\r\n"  # legacy Latin-1, not UTF-8
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
        + 'Content-Type: text/plain; name="Grüße.txt"\r\n\r\nhi\r\n--b--\r\n'.encode()
    )
    parsed = downgrade(ParsedMessage.parse(message))
    assert parsed.data.isascii()
    assert b"Subject: =?utf-8?b?Y2Fmw6k=?=\r\n" in parsed.data  # "café"
    # BODYSTRUCTURE shows the RFC 2231 parameter as written (ASCII, for the client to decode).
    assert b'"name*" "utf-8\'\'Gr%C3%BC%C3%9Fe.txt"' in response.value(
        fetch.Structure.of(parsed).bodystructure
    )
    plain = ParsedMessage.parse(b"Subject: hi\r\n\r\nbody \xc3\xa9\r\n")  # 8-bit body only
    assert downgrade(plain) is plain


@given(st.lists(st.tuples(st.sampled_from(FIELD_NAMES), st.text(max_size=40)), max_size=6))
def test_downgrade_never_leaves_8bit_in_a_header(fields: list[tuple[str, str]]) -> None:
    lines = b"".join(
        name.encode() + b": " + value.replace("\r", " ").replace("\n", " ").encode() + b"\r\n"
        for name, value in fields
    )
    parsed = downgrade(ParsedMessage.parse(lines + b"\r\nbody\r\n"))
    assert parsed.data[: parsed.root.body_start].isascii()
    assert response.value(fetch.Structure.of(parsed).envelope).isascii()
