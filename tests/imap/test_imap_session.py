"""imap/session.py driven directly (no socket) where a socket cannot show it: a client that is
not on loopback, and arbitrary input in every state against a real Maildir store."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailstack.delivery.store import INBOX
from mailstack.imap.framing import RemoteProtocolError
from mailstack.imap.session import ConnectionLimits, Session, is_loopback

from tests.support.imapserver import PASSWORD, USER, ImapDeployment, make_deployment

REMOTE_IP = "192.0.2.10"  # TEST-NET-1: never loopback


class Transcript:
    def __init__(self) -> None:
        self.data = b""

    async def write(self, data: bytes) -> None:
        self.data += data


def session_for(dep: ImapDeployment, *, ip: str, is_tls: bool = False) -> Session:
    return Session(
        dep.context(), peer_ip=ip, is_tls=is_tls, conn_id="test", limits=ConnectionLimits(10)
    )


async def feed(session: Session, data: bytes) -> bytes:
    out = Transcript()
    session.proto.receive_data(data)
    while (event := session.proto.next_event()) is not None:
        await session.handle(event, out.write)
    return out.data


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> ImapDeployment:
    dep = make_deployment(tmp_path_factory.mktemp("session") / "state")
    dep.store.deliver([(USER, INBOX)], b"From: a@example.org\r\nSubject: x\r\n\r\nhello\r\n")
    return dep


@pytest.mark.parametrize(
    ("ip", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.10", False),
        ("::ffff:192.0.2.10", False),
        ("2001:db8::1", False),
        ("fe80::1%eth0", False),
        ("unknown", False),
    ],
)
def test_is_loopback(ip: str, loopback: bool) -> None:
    assert is_loopback(ip) is loopback


async def test_cleartext_login_is_disabled_off_loopback(deployment: ImapDeployment) -> None:
    session = session_for(deployment, ip=REMOTE_IP)
    assert b"LOGINDISABLED" in session.greeting()
    assert b"AUTH=PLAIN" not in session.greeting()
    out = await feed(session, f'a LOGIN {USER} "{PASSWORD}"\r\nb AUTHENTICATE PLAIN =\r\n'.encode())
    assert b"a NO [PRIVACYREQUIRED]" in out
    assert b"b NO [PRIVACYREQUIRED]" in out
    assert session.user is None


async def test_tls_allows_login_off_loopback(deployment: ImapDeployment) -> None:
    session = session_for(deployment, ip=REMOTE_IP, is_tls=True)
    assert b"AUTH=PLAIN" in session.greeting() and b"STARTTLS" not in session.greeting()
    out = await feed(session, f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    assert b"a OK" in out
    session.close()


async def test_allow_plaintext_auth_config(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "state", allow_plaintext_auth=True)
    session = session_for(dep, ip=REMOTE_IP)
    assert b"AUTH=PLAIN" in session.greeting()
    assert b"a OK" in await feed(session, f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
    session.close()


COMMANDS = st.sampled_from(
    [
        b"NOOP",
        b"CAPABILITY",
        b"SELECT INBOX",
        b"EXAMINE INBOX",
        b"FETCH 1:* (FLAGS BODY[])",
        b"UID FETCH 1:* (BODY.PEEK[1.MIME] BINARY[1] ENVELOPE)",
        b"STORE 1 +FLAGS (\\Seen)",
        b"SEARCH OR TEXT hello NOT SEEN",
        b"UID SEARCH RETURN (SAVE) ALL",
        b"FETCH $ UID",
        b"COPY 1 Trash",
        b'LIST "" *',
        b"STATUS INBOX (MESSAGES UNSEEN SIZE)",
        b"UNSELECT",
        b"CREATE X",
        b"RENAME X Y",
        b"DELETE Y",
        b"CLOSE",
        b"EXPUNGE",
        b"UID EXPUNGE 9",
        b"APPEND INBOX {5+}\r\nhello",
        b"ENABLE X",
        b"ID NIL",
        b"NAMESPACE",
        b'LSUB "" *',
        b"GETQUOTAROOT INBOX",
        b'GETQUOTA ""',
        b"IDLE",
        b"DONE",
        b"STARTTLS",
        b"AUTHENTICATE SCRAM-SHA-256",  # the lines after it are its SASL responses
        b"AUTHENTICATE SCRAM-SHA-256 biwsbj1hbGljZUBleGFtcGxlLmNvbSxyPWFiYw==",
    ]
)
LINES = st.one_of(COMMANDS, st.binary(max_size=40).map(lambda b: b.replace(b"\r\n", b"")))


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(LINES, max_size=8), st.booleans())
@example([b"SELECT INBOX", b"FETCH 1 BODY[]", b"\xff\xfe", b"FETCH 99 FLAGS"], True)
def test_any_input_in_any_state_never_hits_a_server_bug(
    deployment: ImapDeployment, lines: list[bytes], logged_in: bool
) -> None:
    async def scenario() -> bytes:
        session = session_for(deployment, ip="127.0.0.1")
        out = b""
        if logged_in:
            out += await feed(session, f'l LOGIN {USER} "{PASSWORD}"\r\n'.encode())
        for i, line in enumerate(lines):
            with contextlib.suppress(RemoteProtocolError):
                out += await feed(session, b"t%d " % i + line + b"\r\n")
            if session.is_logged_out:
                break
        session.close()
        return out

    out = asyncio.run(scenario())
    assert b"SERVERBUG" not in out
