"""The IMAP server over real loopback sockets: imaplib, imapclient and raw bytes.

Every test runs `start_imap`/`start_imaps` against a real deployment in tmp_path (real
Maildir, real users.sqlite3, trustme TLS); see tests/support/imapserver.py.
"""

from __future__ import annotations

import email
import imaplib
import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import imapclient
import pytest
from mailstack.delivery.store import INBOX

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)


@pytest.fixture
def imap_deployment(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def imap_server(imap_deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(imap_deployment) as server:
        yield server


SIMPLE = (
    b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: hello there\r\n"
    b"Date: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
    b"Hi Alice,\r\nthe quick brown fox.\r\n"
)
MULTIPART = (
    b"From: Carol <carol@example.net>\r\nTo: alice@example.com\r\n"
    b"Subject: report\r\nDate: Tue, 6 Feb 2024 11:00:00 +0100\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
    b"preamble\r\n--XX\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    b"see attachment\r\n--XX\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--XX--\r\n"
)


def deliver(dep: ImapDeployment, message: bytes, folder: str = INBOX, user: str = USER) -> None:
    dep.store.deliver([(user, folder)], message)


def raw(server: ImapServerThread, *, login: bool = True) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    if login:
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def ok(result: tuple[str, Any]) -> list[Any]:
    typ, data = result
    assert typ == "OK", data
    return list(data)


# -- connection, TLS, authentication ----------------------------------------------------------


def test_greeting_advertises_starttls_and_plain_on_loopback(imap_server: ImapServerThread) -> None:
    client = imap_server.imap()
    assert {
        "IMAP4REV1",
        "STARTTLS",
        "AUTH=PLAIN",
        "IDLE",
        "UIDPLUS",
        "MOVE",
        "LITERAL+",
        "SASL-IR",
        "SPECIAL-USE",
        "LIST-STATUS",
    } <= set(client.capabilities)
    assert "LOGINDISABLED" not in client.capabilities
    client.logout()


def test_starttls_then_login(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    client = imap_server.imap()
    ok(client.starttls(imap_deployment.client_tls()))
    assert "STARTTLS" not in client.capabilities
    ok(client.login(USER, PASSWORD))
    assert client.logout()[0] == "BYE"


def test_starttls_rejects_bytes_pipelined_in_cleartext(imap_server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", imap_server.imap_port) as client:
        client.send(b"a STARTTLS\r\nb LOGIN x y\r\n")
        lines = [client.line(), client.line()]
    assert lines[0].startswith(b"a OK")
    assert lines[1].startswith(b"* BYE")


def test_failed_tls_handshakes_close_quietly(
    imap_server: ImapServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    with RawClient("127.0.0.1", imap_server.imap_port) as client:
        assert client.tagged("STARTTLS").startswith(b"OK")
        client.send(b"this is not a TLS ClientHello\r\n")
        with pytest.raises(ConnectionError):
            client.line()
    with socket.create_connection(("127.0.0.1", imap_server.imaps_port), timeout=10) as sock:
        sock.sendall(b"a1 CAPABILITY\r\n")  # cleartext to the TLS port
        received = b""
        while chunk := sock.recv(4096):  # perhaps a TLS alert; then the server must close
            received += chunk
        assert b"CAPABILITY" not in received
    with raw(imap_server) as client:  # and the server goes on serving
        assert client.tagged("NOOP").startswith(b"OK")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_implicit_tls_verifies_against_the_deployment_ca(imap_server: ImapServerThread) -> None:
    client = imap_server.imaps()
    assert "STARTTLS" not in client.capabilities
    ok(client.login(USER, PASSWORD))
    client.logout()


def test_implicit_tls_refuses_an_untrusting_client(imap_server: ImapServerThread) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL(
            "127.0.0.1",
            imap_server.imaps_port,
            ssl_context=ssl.create_default_context(),
            timeout=10,
        )


def test_wrong_password_is_refused_and_the_connection_stays(imap_server: ImapServerThread) -> None:
    with raw(imap_server, login=False) as client:
        assert client.tagged(f"LOGIN {USER} wrong").startswith(b"NO [AUTHENTICATIONFAILED]")
        assert client.tagged(f'LOGIN nobody@example.com "{PASSWORD}"').startswith(
            b"NO [AUTHENTICATIONFAILED]"
        )
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK [CAPABILITY")


def test_authenticate_plain_with_continuation(imap_server: ImapServerThread) -> None:
    client = imap_server.imap()
    ok(client.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode()))
    assert client.state == "AUTH"
    client.logout()


def test_authenticate_plain_sasl_ir_and_cancel(imap_server: ImapServerThread) -> None:
    import base64

    good = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
    bad = base64.b64encode(f"{OTHER_USER}\0{USER}\0{PASSWORD}".encode()).decode()
    with raw(imap_server, login=False) as client:
        client.send(b"c1 AUTHENTICATE PLAIN\r\n")
        assert client.line() == b"+ \r\n"
        client.send(b"*\r\n")
        assert client.line().startswith(b"c1 BAD")
        assert client.tagged("AUTHENTICATE PLAIN !!").startswith(b"BAD")
        assert client.tagged(f"AUTHENTICATE PLAIN {bad}").startswith(b"NO [AUTHORIZATIONFAILED]")
        assert client.tagged("AUTHENTICATE CRAM-MD5").startswith(b"NO")
        assert client.tagged(f"AUTHENTICATE PLAIN {good}").startswith(b"OK")
        assert client.tagged("SELECT INBOX").startswith(b"OK [READ-WRITE]")


def test_commands_in_the_wrong_state_are_bad(imap_server: ImapServerThread) -> None:
    with raw(imap_server, login=False) as client:
        assert client.tagged("SELECT INBOX").startswith(b"BAD")
        assert client.tagged("FETCH 1 FLAGS").startswith(b"BAD")
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.tagged("FETCH 1 FLAGS").startswith(b"BAD")
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"BAD")


def test_syntax_errors_are_bad_and_the_connection_stays_usable(
    imap_server: ImapServerThread,
) -> None:
    with raw(imap_server) as client:
        assert client.tagged("FROBNICATE").startswith(b"BAD")
        assert client.tagged("FETCH 1 (FLAGS").startswith(b"BAD")
        assert client.tagged("SEARCH SINCE 31-Feb-2024").startswith(b"BAD")
        client.send(b"\r\n")
        assert client.line().startswith(b"* BAD")
        assert client.tagged("NOOP").startswith(b"OK")


def test_too_big_synchronizing_literal_is_refused_politely(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    size = imap_deployment.config.smtp.max_message_size + 1
    with raw(imap_server) as client:
        client.send(b"a1 APPEND INBOX {%d}\r\n" % size)
        assert client.line().startswith(b"a1 NO [TOOBIG]")
        assert client.tagged("NOOP").startswith(b"OK")


def test_too_big_non_synchronizing_literal_ends_the_connection(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    size = imap_deployment.config.smtp.max_message_size + 1
    with raw(imap_server) as client:
        client.send(b"a1 APPEND INBOX {%d+}\r\n" % size)
        assert client.line().startswith(b"* BYE [TOOBIG]")


def test_big_literal_before_login_is_refused(imap_server: ImapServerThread) -> None:
    with raw(imap_server, login=False) as client:
        client.send(b"a1 LOGIN {100000}\r\n")
        assert client.line().startswith(b"a1 NO [TOOBIG]")
        client.send(b"a2 LOGIN {100000+}\r\n")
        assert client.line().startswith(b"* BYE [TOOBIG]")


def test_overlong_line_ends_the_connection_with_bye(imap_server: ImapServerThread) -> None:
    with raw(imap_server, login=False) as client:
        client.send(b"a1 NOOP " + b"x" * 70000)
        assert client.line().startswith(b"* BYE")
        with pytest.raises(ConnectionError):
            client.line()


def test_literal_plus_and_synchronizing_literal_in_login(imap_server: ImapServerThread) -> None:
    with raw(imap_server, login=False) as client:
        client.send(b"a1 LOGIN {%d+}\r\n%s {%d}\r\n" % (len(USER), USER.encode(), len(PASSWORD)))
        assert client.line().startswith(b"+ ")
        client.send(PASSWORD.encode() + b"\r\n")
        assert client.line().startswith(b"a1 OK")


def test_logout(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as client:
        lines = client.command("LOGOUT")
        assert lines[0].startswith(b"* BYE")
        assert lines[-1].startswith(b"t2 OK")
        with pytest.raises(ConnectionError):
            client.line()


# -- simple any-state and authenticated-state commands ----------------------------------------


def test_id_namespace_enable_capability(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as client:
        lines = client.command('ID ("name" "pytest")')
        assert lines[0].startswith(b'* ID ("name" "mailstack"')
        assert client.command("NAMESPACE")[0] == (
            b'* NAMESPACE (("" ".")) (("Shared/" "/")) (("Public/" "/"))\r\n'
        )
        assert client.command("ENABLE CONDSTORE")[0] == b"* ENABLED CONDSTORE\r\n"
        caps = client.command("CAPABILITY")[0]
        assert b"AUTH=PLAIN" not in caps and b"IDLE" in caps
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        assert client.tagged("CHECK").startswith(b"OK")
        # RFC 5161 §3.1: ENABLE only before a mailbox is selected.
        assert client.tagged("ENABLE CONDSTORE").startswith(b"BAD")


def test_imapclient_session_features(imap_server: ImapServerThread) -> None:
    client = imapclient.IMAPClient("127.0.0.1", port=imap_server.imap_port, ssl=False, timeout=30)
    client.login(USER, PASSWORD)
    assert client.namespace().personal == (("", "."),)
    (server_id,) = client.id_({"name": "imapclient"})  # imapclient 3 keeps the list's nesting
    assert server_id[:2] == (b"name", b"mailstack")
    folders = {name: flags for flags, _delim, name in client.list_folders()}
    assert set(folders) >= {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"}
    assert b"\\Sent" in folders["Sent"]
    assert client.find_special_folder(imapclient.imapclient.SENT) == "Sent"
    client.logout()


def test_list_variants(imap_server: ImapServerThread, imap_deployment: ImapDeployment) -> None:
    deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as client:
        assert client.tagged("CREATE Projects.2024").startswith(b"OK")
        assert client.command('LIST "" ""')[0] == b'* LIST (\\Noselect) "." ""\r\n'
        top = client.command('LIST "" %')
        assert b'* LIST (\\HasChildren) "." Projects\r\n' in top
        assert not any(b"2024" in line for line in top)
        assert b'* LIST (\\HasNoChildren) "." Projects.2024\r\n' in client.command(
            "LIST Projects. %"
        )
        assert client.command('LIST "" inbox')[0] == b'* LIST (\\HasNoChildren) "." INBOX\r\n'
        special = client.command('LIST (SPECIAL-USE) "" *')
        assert len(special) == 6 and all(b"Projects" not in line for line in special)
        status = client.command('LIST "" INBOX RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
        assert status[:2] == [
            b'* LIST (\\HasNoChildren) "." INBOX\r\n',
            b"* STATUS INBOX (MESSAGES 1 UNSEEN 1 UIDNEXT 2)\r\n",
        ]
        both = client.command('LIST "" (INBOX Sent) RETURN (SUBSCRIBED CHILDREN)')
        assert len(both) == 3


def test_create_special_use_delete_rename_subscribe(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as client:
        assert client.tagged("CREATE MySent (USE (\\Sent))").startswith(b"OK")
        assert b"\\Sent" in client.command('LIST "" MySent')[0]
        assert client.tagged("CREATE Bad (USE (\\Bogus))").startswith(b"NO [USEATTR]")
        assert client.tagged("CREATE MySent").startswith(b"NO [ALREADYEXISTS]")
        assert client.tagged("CREATE inbox").startswith(b"NO [ALREADYEXISTS]")
        assert client.tagged('CREATE "Entw&APw-rfe"').startswith(b"OK")
        assert client.tagged('CREATE "bad&name"').startswith(b"NO [CANNOT]")  # well formed
        assert client.tagged("RENAME MySent Old").startswith(b"OK")
        assert client.command('LIST "" MySent')[0].startswith(b"t")  # nothing listed
        assert client.tagged("SUBSCRIBE Old").startswith(b"OK")
        assert client.command('LSUB "" Old')[0] == b'* LSUB () "." Old\r\n'
        assert b"\\Subscribed" in client.command('LIST (SUBSCRIBED) "" Old')[0]
        assert client.tagged("UNSUBSCRIBE Old").startswith(b"OK")
        assert client.command('LSUB "" Old')[0].startswith(b"t")
        assert client.tagged("DELETE Old").startswith(b"OK")
        assert client.tagged("DELETE Old").startswith(b"NO [NONEXISTENT]")
        assert client.tagged("DELETE INBOX").startswith(b"NO")
        assert client.tagged("SELECT Nowhere").startswith(b"NO [NONEXISTENT]")


def test_sequence_ranges_with_star_in_an_empty_mailbox(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as client:
        client.command("SELECT Trash")
        assert client.command("FETCH 1:* FLAGS") == [b"t3 OK FETCH completed\r\n"]
        assert client.tagged("FETCH 1 FLAGS").startswith(b"BAD")
        assert client.tagged("STORE 1:* +FLAGS (\\Seen)").startswith(b"OK")


def test_append_over_quota_is_refused(imap_deployment: ImapDeployment) -> None:
    imap_deployment.add_user("small@example.com", "pw", quota_bytes=200)
    with (
        running_server(imap_deployment) as server,
        RawClient("127.0.0.1", server.imap_port) as client,
    ):
        assert client.tagged("LOGIN small@example.com pw").startswith(b"OK")
        assert client.tagged(b"APPEND INBOX {%d+}\r\n" % len(SIMPLE) + SIMPLE).startswith(b"OK")
        big = SIMPLE + b"x" * 300 + b"\r\n"
        assert client.tagged(b"APPEND INBOX {%d+}\r\n" % len(big) + big).startswith(
            b"NO [OVERQUOTA]"
        )


def test_quota(imap_deployment: ImapDeployment) -> None:
    imap_deployment.add_user("limited@example.com", "pw", quota_bytes=10 * 1024 * 1024)
    imap_deployment.store.deliver([("limited@example.com", INBOX)], SIMPLE)
    with running_server(imap_deployment) as server:
        with RawClient("127.0.0.1", server.imap_port) as client:
            assert b"QUOTA=RES-STORAGE" in client.command("LOGIN limited@example.com pw")[-1]
            lines = client.command("GETQUOTAROOT INBOX")
            assert lines[:2] == [b'* QUOTAROOT INBOX ""\r\n', b'* QUOTA "" (STORAGE 1 10240)\r\n']
            assert client.command('GETQUOTA ""')[0] == b'* QUOTA "" (STORAGE 1 10240)\r\n'
            assert client.tagged("GETQUOTA other").startswith(b"NO [NONEXISTENT]")
            assert client.tagged('SETQUOTA "" (STORAGE 1)').startswith(b"NO [NOPERM]")
            assert client.tagged("GETQUOTAROOT Nowhere").startswith(b"NO [NONEXISTENT]")
        with raw(server) as unlimited:  # alice has no quota: no quota root at all
            assert unlimited.command("GETQUOTAROOT INBOX")[0] == b"* QUOTAROOT INBOX\r\n"
            assert unlimited.tagged('GETQUOTA ""').startswith(b"NO [NONEXISTENT]")


def test_status(imap_server: ImapServerThread, imap_deployment: ImapDeployment) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, MULTIPART)
    client = imap_server.login()
    data = ok(client.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN SIZE DELETED)"))
    text = data[0].decode()
    assert re.search(
        r"MESSAGES 2 RECENT 2 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 2 SIZE \d+ DELETED 0", text
    ), text
    client.logout()


def test_append_with_flags_and_date_returns_appenduid(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    client = imap_server.login()
    data = ok(client.append("Drafts", "(\\Draft $Work)", '"05-Feb-2024 13:05:00 +0100"', SIMPLE))
    m = re.match(rb"\[APPENDUID (\d+) (\d+)\]", data[0])
    assert m is not None
    snap = imap_deployment.store.snapshot(USER, "Drafts")
    assert (snap.uid_validity, snap.messages[-1].uid) == (int(m[1]), int(m[2]))
    ok(client.select("Drafts"))
    data = ok(client.fetch("1", "(FLAGS INTERNALDATE)"))
    assert b"$Work" in data[0] and b"\\Draft" in data[0]
    assert b'INTERNALDATE "' in data[0]
    typ, no_data = client.append("Nowhere", None, None, SIMPLE)
    assert typ == "NO" and no_data[0].startswith(b"[TRYCREATE]")
    client.logout()


# -- selected state ---------------------------------------------------------------------------


def test_binary_append_and_fetch(imap_server: ImapServerThread) -> None:
    # RFC 3516: literal8 in APPEND; BINARY[] decodes the transfer encoding, literal8 for NULs.
    with raw(imap_server) as client:
        assert client.tagged(b"APPEND INBOX ~{%d+}\r\n" % len(MULTIPART) + MULTIPART).startswith(
            b"OK [APPENDUID"
        )
        client.command("SELECT INBOX")
        lines = client.command("FETCH 1 (BINARY.SIZE[2] BINARY.PEEK[2] BINARY.PEEK[1]<0.3>)")
        assert lines[0] == (
            b'* 1 FETCH (BINARY.SIZE[2] 3 BINARY[2] ~{3}\r\n\x00\x01\x02 BINARY[1]<0> "see")\r\n'
        )


def test_select_and_examine_report_the_folder(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as client:
        lines = client.command("EXAMINE INBOX")
        text = b"".join(lines)
        assert b"* 1 EXISTS" in text and b"* 1 RECENT" in text
        assert b"[UIDVALIDITY " in text and b"[UIDNEXT 2]" in text
        assert b"[PERMANENTFLAGS ()]" in text and b"[UNSEEN 1]" in text
        assert lines[-1].startswith(b"t2 OK [READ-ONLY]")
        assert client.tagged("STORE 1 +FLAGS (\\Seen)").startswith(b"NO [READ-ONLY]")
        assert client.tagged("EXPUNGE").startswith(b"NO [READ-ONLY]")
        lines = client.command("SELECT INBOX")
        assert lines[0].startswith(b"* OK [CLOSED]")
        assert b"[PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft \\*)]" in (
            b"".join(lines)
        )
        assert lines[-1].startswith(b"t5 OK [READ-WRITE]")
        # EXAMINE claimed nothing, so this SELECT is the one that sees the message as recent.
        assert b"* 1 RECENT" in b"".join(lines)


def test_fetch_items(imap_server: ImapServerThread, imap_deployment: ImapDeployment) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, MULTIPART)
    client = imap_server.login()
    ok(client.select("INBOX"))
    data = ok(client.fetch("1:2", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)"))
    assert b"UID 1" in data[0] and b'"hello there"' in data[0]
    assert b'"mixed"' in data[1]
    with raw(imap_server) as rawc:
        rawc.command("EXAMINE INBOX")
        text = b"".join(
            rawc.command(
                "FETCH 2 (BODY.PEEK[1] BODY.PEEK[HEADER.FIELDS (Subject)] "
                "BODY.PEEK[2.MIME] BINARY.PEEK[2] BODY.PEEK[]<0.4>)"
            )
        )
    assert b"see attachment" in text
    assert b"Subject: report\r\n\r\n" in text
    assert b"Content-Transfer-Encoding: base64" in text
    assert b"BINARY[2] ~{3}\r\n\x00\x01\x02" in text
    assert b'BODY[]<0> "From"' in text
    assert b"\\Seen" not in text  # .PEEK leaves \Seen alone
    data = ok(client.fetch("1", "(FLAGS)"))
    assert b"\\Seen" not in data[0]
    data = ok(client.fetch("1", "(BODY[TEXT])"))
    flat = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in data)
    assert b"the quick brown fox" in flat and b"\\Seen" in flat
    rfc822 = ok(client.fetch("1", "(RFC822)"))
    msg = email.message_from_bytes(rfc822[0][1])
    assert msg["Subject"] == "hello there"
    # The second answer comes from the session's Structure cache and must not differ.
    first = ok(client.fetch("1:2", "(ENVELOPE BODY BODYSTRUCTURE)"))
    assert ok(client.fetch("1:2", "(ENVELOPE BODY BODYSTRUCTURE)")) == first
    assert ok(client.fetch("1:2", "(BODYSTRUCTURE BODY[HEADER])"))[0][0].startswith(
        b"1 (BODYSTRUCTURE ("
    )
    data = ok(client.fetch("1", "ALL"))
    assert b"ENVELOPE" in data[0] and b"INTERNALDATE" in data[0]
    with pytest.raises(imaplib.IMAP4.error, match="no message 9"):
        client.fetch("9", "FLAGS")
    data = ok(client.uid("FETCH", "100:*", "(FLAGS)"))
    assert b"UID 2" in data[0]  # "n:*" includes the last UID
    client.logout()


def test_store_variants(imap_server: ImapServerThread, imap_deployment: ImapDeployment) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        lines = client.command("STORE 1:2 +FLAGS (\\Flagged $Label)")
        assert lines[0] == b"* FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label)\r\n"
        assert lines[1].startswith(  # the new keyword may be stored from now on
            b"* OK [PERMANENTFLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft $Label \\*)]"
        )
        assert lines[2:4] == [
            b"* 1 FETCH (FLAGS ($Label \\Flagged \\Recent))\r\n",
            b"* 2 FETCH (FLAGS ($Label \\Flagged \\Recent))\r\n",
        ]
        assert client.command("STORE 1 -FLAGS.SILENT ($Label)")[0].startswith(b"t4 OK")
        lines = client.command("UID STORE 2 FLAGS (\\Seen)")
        assert lines[0] == b"* 2 FETCH (UID 2 FLAGS (\\Recent \\Seen))\r\n"
        assert client.tagged("STORE 1 +FLAGS (\\Bogus)").startswith(b"BAD")
        lines = client.command("FETCH 1:2 FLAGS")
        assert lines[:2] == [
            b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n",
            b"* 2 FETCH (FLAGS (\\Recent \\Seen))\r\n",
        ]


def test_search(imap_server: ImapServerThread, imap_deployment: ImapDeployment) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, MULTIPART)
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        client.command("STORE 1 +FLAGS (\\Seen)")
        assert client.command("SEARCH ALL")[0] == b"* SEARCH 1 2\r\n"
        assert client.command("SEARCH UNSEEN")[0] == b"* SEARCH 2\r\n"
        assert client.command('SEARCH FROM "carol"')[0] == b"* SEARCH 2\r\n"
        assert client.command("SEARCH OR SUBJECT hello SUBJECT report")[0] == b"* SEARCH 1 2\r\n"
        assert client.command("SEARCH BODY fox NOT DELETED")[0] == b"* SEARCH 1\r\n"
        assert client.command("SEARCH SENTSINCE 6-Feb-2024")[0] == b"* SEARCH 2\r\n"
        assert client.command("UID SEARCH CHARSET UTF-8 TEXT attachment")[0] == (b"* SEARCH 2\r\n")
        assert client.command("SEARCH LARGER 100000")[0] == b"* SEARCH\r\n"
        assert client.tagged("SEARCH CHARSET KOI8-R ALL").startswith(b"NO [BADCHARSET")
        assert client.command("SEARCH RETURN (MIN MAX COUNT ALL) ALL")[0] == (
            b'* ESEARCH (TAG "t13") MIN 1 MAX 2 ALL 1:2 COUNT 2\r\n'
        )
        assert client.command("UID SEARCH RETURN () 1:*")[0] == (
            b'* ESEARCH (TAG "t14") UID ALL 1:2\r\n'
        )
        assert client.command("SEARCH RETURN (SAVE) UNSEEN")[0].startswith(b"t15 OK")
        assert client.command("FETCH $ UID")[0] == b"* 2 FETCH (UID 2)\r\n"
        assert client.command("SEARCH $")[0] == b"* SEARCH 2\r\n"
        client.command("SEARCH RETURN (SAVE MAX) ALL")
        assert client.command("SEARCH $")[0] == b"* SEARCH 2\r\n"
        client.command("SEARCH RETURN (SAVE MIN) ALL")
        assert client.command("UID SEARCH $")[0] == b"* SEARCH 1\r\n"


def test_copy_move_expunge_with_uidplus(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    for _ in range(4):
        deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        lines = client.command("COPY 1:2 Archive")
        m = re.match(rb"t3 OK \[COPYUID (\d+) 1:2 1:2\]", lines[-1])
        assert m is not None
        assert client.tagged("COPY 1 Nowhere").startswith(b"NO [TRYCREATE]")
        lines = client.command("UID MOVE 3 Trash")
        assert lines[0].startswith(b"* OK [COPYUID ") and lines[0].endswith(b" 3 1] moved\r\n")
        assert lines[1] == b"* 3 EXPUNGE\r\n"
        assert lines[-1].startswith(b"t5 OK")
        client.command("STORE 1:3 +FLAGS.SILENT (\\Deleted)")
        lines = client.command("UID EXPUNGE 2")
        assert lines[0] == b"* 2 EXPUNGE\r\n" and lines[-1].startswith(b"t7 OK")
        lines = client.command("EXPUNGE")
        assert lines[:2] == [b"* 2 EXPUNGE\r\n", b"* 1 EXPUNGE\r\n"]
        assert client.command("SEARCH ALL")[0] == b"* SEARCH\r\n"
    assert len(imap_deployment.store.snapshot(USER, "Archive").messages) == 2
    assert len(imap_deployment.store.snapshot(USER, "Trash").messages) == 1


def test_selected_mailbox_deleted_by_another_session_ends_with_bye(
    imap_server: ImapServerThread,
) -> None:
    with raw(imap_server) as one, raw(imap_server) as two:
        assert one.tagged("CREATE Doomed").startswith(b"OK")
        assert one.tagged("SELECT Doomed").startswith(b"OK")
        assert two.tagged("DELETE Doomed").startswith(b"OK")
        one.send(b"x1 FETCH 1:* FLAGS\r\n")
        assert one.line().startswith(b"* BYE")
        with pytest.raises(ConnectionError):
            one.line()


@pytest.mark.timeout(60)
def test_idling_on_a_mailbox_deleted_elsewhere_ends_with_bye(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as one, raw(imap_server) as two:
        assert one.tagged("CREATE Doomed").startswith(b"OK")
        assert one.tagged("SELECT Doomed").startswith(b"OK")
        one.send(b"i1 IDLE\r\n")
        assert one.line() == b"+ idling\r\n"
        assert two.tagged("DELETE Doomed").startswith(b"OK")
        assert one.line().startswith(b"* BYE")
        with pytest.raises(ConnectionError):
            one.line()


def test_close_expunges_and_unselect_does_not(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        client.command("STORE 1 +FLAGS (\\Deleted)")
        assert client.tagged("UNSELECT").startswith(b"OK")
        assert client.tagged("FETCH 1 FLAGS").startswith(b"BAD")
        assert len(imap_deployment.store.snapshot(USER, INBOX).messages) == 2
        client.command("SELECT INBOX")
        assert client.tagged("CLOSE").startswith(b"OK")
        assert len(imap_deployment.store.snapshot(USER, INBOX).messages) == 1


# -- concurrency, IDLE, restart ---------------------------------------------------------------


def test_two_sessions_see_each_others_flags_and_expunges(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    deliver(imap_deployment, SIMPLE)
    deliver(imap_deployment, SIMPLE)
    with raw(imap_server) as one, raw(imap_server) as two:
        one.command("SELECT INBOX")
        two.command("SELECT INBOX")
        one.command("STORE 1 +FLAGS (\\Flagged)")
        lines = two.command("NOOP")
        assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged))\r\n" in lines
        one.command("STORE 2 +FLAGS.SILENT (\\Deleted)")
        one.command("EXPUNGE")
        # A FETCH by sequence number must not be told about the expunge ...
        lines = two.command("FETCH 1:2 UID")
        assert not any(b"EXPUNGE" in line for line in lines)
        assert lines[-1].startswith(b"t4 NO [EXPUNGEISSUED]") or lines[-1].startswith(b"t4 OK")
        # ... the next NOOP is.
        assert b"* 2 EXPUNGE\r\n" in two.command("NOOP")
        deliver(imap_deployment, SIMPLE)
        assert b"* 2 EXISTS\r\n" in two.command("NOOP")


@pytest.mark.timeout(120)
def test_concurrent_appends_get_distinct_uids_and_an_idler_sees_them_all(
    imap_server: ImapServerThread,
) -> None:
    writers, per_writer = 4, 10
    with raw(imap_server) as idler:
        idler.command("SELECT INBOX")
        idler.send(b"i1 IDLE\r\n")
        assert idler.line() == b"+ idling\r\n"
        errors: list[BaseException] = []
        uids: list[int] = []

        def append_many() -> None:
            try:
                with raw(imap_server) as client:
                    for _ in range(per_writer):
                        done = client.tagged(b"APPEND INBOX {%d+}\r\n" % len(SIMPLE) + SIMPLE)
                        m = re.match(rb"OK \[APPENDUID \d+ (\d+)\]", done)
                        assert m is not None, done
                        uids.append(int(m[1]))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=append_many) for _ in range(writers)]
        for t in threads:
            t.start()
        total = writers * per_writer
        seen = 0
        while seen < total:  # EXISTS may coalesce several appends into one response
            line = idler.line()
            if m := re.match(rb"\* (\d+) EXISTS", line):
                seen = int(m[1])
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(uids) == list(range(1, total + 1))
        idler.send(b"DONE\r\n")
        assert idler.until_tagged(b"i1")[-1].startswith(b"i1 OK")
        assert client_count(idler) == total


def client_count(client: RawClient) -> int:
    line = client.command("STATUS INBOX (MESSAGES)")[0]
    m = re.search(rb"MESSAGES (\d+)", line)
    assert m is not None
    return int(m[1])


@pytest.mark.timeout(60)
def test_idle_sees_a_delivery(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        client.send(b"i1 IDLE\r\n")
        assert client.line() == b"+ idling\r\n"
        threading.Thread(target=deliver, args=(imap_deployment, SIMPLE)).start()
        lines = [client.line()]
        while not lines[-1].startswith(b"* 1 EXISTS"):
            lines.append(client.line())
        client.send(b"DONE\r\n")
        while not lines[-1].startswith(b"i1 "):
            lines.append(client.line())
        assert lines[-1].startswith(b"i1 OK")
        assert client.tagged("NOOP").startswith(b"OK")


@pytest.mark.timeout(60)
def test_idle_with_imapclient_sees_flag_change_from_another_session(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    deliver(imap_deployment, SIMPLE)
    client = imapclient.IMAPClient("127.0.0.1", port=imap_server.imap_port, ssl=False, timeout=30)
    client.login(USER, PASSWORD)
    client.select_folder("INBOX")
    client.idle()
    other = imap_server.login()
    ok(other.select("INBOX"))
    ok(other.store("1", "+FLAGS", "(\\Answered)"))
    responses: list[Any] = []
    while not any(b"FETCH" in r for r in responses):
        responses += client.idle_check(timeout=30)
    client.idle_done()
    assert any(r[1] == b"FETCH" and b"\\Answered" in r[2][3] for r in responses)
    client.logout()
    other.logout()


@pytest.mark.timeout(60)
def test_idle_rescan_finds_mail_written_by_another_process(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment
) -> None:
    # Another program (Dovecot's LDA, procmail) writes the Maildir and publishes nothing here.
    new = imap_deployment.paths.maildir(USER) / "new"
    with raw(imap_server) as client:
        client.command("SELECT INBOX")
        client.send(b"i1 IDLE\r\n")
        assert client.line() == b"+ idling\r\n"
        (new.parent / "tmp" / "1700000000.x1.otherhost").write_bytes(SIMPLE.replace(b"\r\n", b"\n"))
        (new.parent / "tmp" / "1700000000.x1.otherhost").rename(new / "1700000000.x1.otherhost")
        line = client.line()
        while not line.startswith(b"* 1 EXISTS"):
            line = client.line()
        client.send(b"DONE\r\n")
        assert client.until_tagged(b"i1")[-1].startswith(b"i1 OK")


def test_unexpected_store_failure_is_serverbug_and_logged(
    imap_server: ImapServerThread, imap_deployment: ImapDeployment, caplog: pytest.LogCaptureFixture
) -> None:
    # The kind of damage no code path expects: the UID list is a directory.
    uidlist = imap_deployment.paths.maildir(USER) / ".Junk" / "dovecot-uidlist"
    uidlist.unlink(missing_ok=True)
    uidlist.mkdir()
    with raw(imap_server) as client:
        assert client.tagged("SELECT Junk").startswith(b"NO [SERVERBUG]")
        assert client.tagged("SELECT INBOX").startswith(b"OK")
    assert any(r.exc_info is not None and "failed" in r.getMessage() for r in caplog.records)


def test_bad_idle_termination(imap_server: ImapServerThread) -> None:
    with raw(imap_server) as client:
        client.send(b"i1 IDLE\r\n")
        assert client.line() == b"+ idling\r\n"
        client.send(b"NOPE\r\n")
        assert client.line().startswith(b"i1 BAD")
        assert client.tagged("NOOP").startswith(b"OK")


def test_uids_and_uidvalidity_survive_a_restart(imap_deployment: ImapDeployment) -> None:
    for _ in range(3):
        deliver(imap_deployment, SIMPLE)
    server = ImapServerThread(imap_deployment).start()
    try:
        client = server.login()
        ok(client.select("INBOX"))
        ok(client.store("2", "+FLAGS", "(\\Deleted)"))
        ok(client.expunge())
        before = ok(client.uid("FETCH", "1:*", "(UID FLAGS)"))
        validity = ok(client.status("INBOX", "(UIDVALIDITY UIDNEXT)"))
        client.logout()
    finally:
        server.stop()
    server = ImapServerThread(imap_deployment).start()
    try:
        client = server.login()
        assert ok(client.status("INBOX", "(UIDVALIDITY UIDNEXT)")) == validity
        ok(client.select("INBOX"))
        after = ok(client.uid("FETCH", "1:*", "(UID FLAGS)"))
        assert [re.findall(rb"UID \d+", x) for x in after] == [
            re.findall(rb"UID \d+", x) for x in before
        ]
        assert b"UID 2" not in b" ".join(after)
        client.logout()
    finally:
        server.stop()


# -- limits -----------------------------------------------------------------------------------


def test_connection_limits_per_ip_and_per_user(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "s", max_connections_per_ip=2, max_connections_per_user=1)
    server = ImapServerThread(dep).start()
    try:
        with (
            RawClient("127.0.0.1", server.imap_port) as one,
            RawClient("127.0.0.1", server.imap_port) as two,
        ):
            assert one.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
            assert two.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"NO [LIMIT]")
            assert two.tagged(f'LOGIN {OTHER_USER} "{OTHER_PASSWORD}"').startswith(b"OK")
            with RawClient("127.0.0.1", server.imap_port) as three:
                assert three.greeting.startswith(b"* BYE [UNAVAILABLE]")
            one.command("LOGOUT")
        # Slots are released when connections end.
        with RawClient("127.0.0.1", server.imap_port) as four:
            assert four.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    finally:
        server.stop()


def test_login_lockout_after_repeated_failures(imap_deployment: ImapDeployment) -> None:
    imap_deployment.throttle.free_failures = 10
    imap_deployment.throttle.lockout_failures = 3
    server = ImapServerThread(imap_deployment).start()
    try:
        with RawClient("127.0.0.1", server.imap_port) as client:
            for _ in range(3):
                assert client.tagged(f"LOGIN {USER} wrong").startswith(b"NO [AUTHENTICATIONFAILED]")
            assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"NO [UNAVAILABLE]")
    finally:
        server.stop()


@pytest.mark.timeout(60)
def test_autologout(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "s", idle_timeout_s=1, login_timeout_s=1)
    server = ImapServerThread(dep).start()
    try:
        with RawClient("127.0.0.1", server.imap_port) as client:
            assert client.line().startswith(b"* BYE")  # waits for the server's own timer
    finally:
        server.stop()


def test_peer_that_vanishes_mid_literal_does_not_hurt_the_server(
    imap_server: ImapServerThread,
) -> None:
    sock = socket.create_connection(("127.0.0.1", imap_server.imap_port), timeout=10)
    sock.recv(1000)
    sock.sendall(b"a LOGIN {5+}\r\nab")
    sock.close()
    with raw(imap_server) as client:
        assert client.tagged("NOOP").startswith(b"OK")
