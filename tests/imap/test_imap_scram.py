"""AUTHENTICATE SCRAM-SHA-256 (imap/session_scram.py) against a running IMAP server over real
sockets and TLS: imaplib driven by scramp's client, raw exchanges with SASL-IR, wrong and
tampered proofs, the shared throttle, and GNU SASL's own client (`gsasl --imap`) for interop."""

from __future__ import annotations

import base64
import imaplib
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import scramp

from mailstack.base.throttle import LoginThrottle
from tests.imap.rawclient import RawClient
from tests.imap.test_imap_session import REMOTE_IP, feed, session_for
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    make_deployment,
    running_server,
)

MECH = "SCRAM-SHA-256"


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


def unb64(line: bytes) -> str:
    """The text of a "+ base64" continuation line."""
    assert line.startswith(b"+ "), line
    return base64.b64decode(line[2:].strip()).decode()


def authobject(
    user: str, password: str, tamper: bool = False
) -> tuple[scramp.ScramClient, Callable[[bytes], bytes]]:
    """imaplib's authenticate() callback for one exchange, driven by scramp's client side."""
    client = scramp.ScramClient([MECH], user, password)
    steps = iter(range(3))

    def answer(challenge: bytes) -> bytes:
        step = next(steps)
        if step == 0:
            return client.get_client_first().encode()
        if step == 1:
            client.set_server_first(challenge.decode())
            final = client.get_client_final()
            if tamper:  # flip one bit of the proof's first byte
                head, _, proof = final.rpartition(",p=")
                raw = bytearray(base64.b64decode(proof))
                raw[0] ^= 1
                final = f"{head},p={base64.b64encode(bytes(raw)).decode()}"
            return final.encode()
        client.set_server_final(challenge.decode())  # checks the server's signature
        return b""

    return client, answer


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


def imaps(server_port: int, dep: ImapDeployment) -> imaplib.IMAP4_SSL:
    return imaplib.IMAP4_SSL("127.0.0.1", server_port, ssl_context=dep.client_tls(), timeout=30)


def test_imaplib_logs_in_over_tls_and_checks_our_signature(dep: ImapDeployment) -> None:
    with running_server(dep) as server:
        client = imaps(server.imaps_port, dep)
        assert "AUTH=SCRAM-SHA-256" in client.capabilities
        typ, _ = client.authenticate(MECH, authobject("Alice@Example.COM", PASSWORD)[1])
        assert typ == "OK"
        assert client.select("INBOX")[0] == "OK"
        client.logout()
        # STARTTLS on the plain port, as a client configured for it does.
        client2 = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
        client2.starttls(dep.client_tls())
        assert client2.authenticate(MECH, authobject(USER, PASSWORD)[1])[0] == "OK"
        client2.logout()


@pytest.mark.parametrize(
    ("user", "password", "tamper"),
    [
        pytest.param(USER, "wrong", False, id="wrong-password"),
        pytest.param("nobody@example.com", PASSWORD, False, id="unknown-user"),
        pytest.param(USER, PASSWORD, True, id="tampered-proof"),
    ],
)
def test_refused_logins_are_authenticationfailed(
    dep: ImapDeployment, user: str, password: str, tamper: bool
) -> None:
    with running_server(dep) as server:
        client = imaps(server.imaps_port, dep)
        with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
            client.authenticate(MECH, authobject(user, password, tamper)[1])
        # The session goes on in the not-authenticated state: PLAIN still works.
        assert client.login(USER, PASSWORD)[0] == "OK"
        client.logout()


def raw_tls(dep: ImapDeployment, port: int) -> RawClient:
    return RawClient("127.0.0.1", port, tls=dep.client_tls())


def test_sasl_ir_exchange_cancel_and_refusals_on_the_wire(dep: ImapDeployment) -> None:
    with running_server(dep) as server, raw_tls(dep, server.imaps_port) as raw:
        # RFC 4959: the client-first message on the command line.
        scram_client = scramp.ScramClient([MECH], USER, PASSWORD)
        raw.send(b"a AUTHENTICATE SCRAM-SHA-256 " + b64(scram_client.get_client_first()) + b"\r\n")
        scram_client.set_server_first(unb64(raw.line()))
        raw.send(b64(scram_client.get_client_final()) + b"\r\n")
        scram_client.set_server_final(unb64(raw.line()))
        raw.send(b"\r\n")  # the empty answer to the server-final message
        assert raw.line().startswith(b"a OK [CAPABILITY ")
    with running_server(dep) as server, raw_tls(dep, server.imaps_port) as raw:
        raw.send(b"b AUTHENTICATE SCRAM-SHA-256\r\n")
        assert raw.line() == b"+ \r\n"
        raw.send(b"*\r\n")
        assert raw.line() == b"b BAD AUTHENTICATE cancelled\r\n"
        # The client demands channel binding (RFC 5802 gs2 "p="): we offer none.
        demand = b64("p=tls-server-end-point,,n=alice@example.com,r=abcdef")
        assert raw.tagged(b"AUTHENTICATE SCRAM-SHA-256 " + demand).startswith(b"NO [CANNOT]")
        proxy = b64("n,a=bob@example.com,n=alice@example.com,r=abcdef")
        answer = raw.tagged(b"AUTHENTICATE SCRAM-SHA-256 " + proxy)
        assert answer.startswith(b"NO [AUTHORIZATIONFAILED]")
        assert raw.tagged(b"AUTHENTICATE SCRAM-SHA-256 " + b64("x,,")).startswith(b"BAD ")
        assert raw.tagged(b"AUTHENTICATE SCRAM-SHA-256-PLUS =").startswith(b"NO [CANNOT]")
        # A non-empty answer to the server-final message is refused, not logged in.
        scram_client = scramp.ScramClient([MECH], USER, PASSWORD)
        raw.send(b"c AUTHENTICATE SCRAM-SHA-256 " + b64(scram_client.get_client_first()) + b"\r\n")
        scram_client.set_server_first(unb64(raw.line()))
        raw.send(b64(scram_client.get_client_final()) + b"\r\n")
        unb64(raw.line())
        raw.send(b64("more") + b"\r\n")
        assert raw.line().startswith(b"c BAD ")
        assert raw.tagged(b"SELECT INBOX").startswith(b"BAD ")  # still not authenticated


def test_scram_failures_count_in_the_shared_throttle(dep: ImapDeployment) -> None:
    dep.throttle = LoginThrottle(lockout_failures=3)  # 3 free failures: no delay
    with running_server(dep) as server:
        client = imaps(server.imaps_port, dep)
        for _ in range(3):
            with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
                client.authenticate(MECH, authobject(USER, "wrong")[1])
        # Locked for this network, whichever mechanism comes next, right password or not.
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
            client.login(USER, PASSWORD)
        with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
            client.authenticate(MECH, authobject(USER, PASSWORD)[1])
        client.logout()


async def test_scram_is_refused_without_tls_off_loopback(dep: ImapDeployment) -> None:
    session = session_for(dep, ip=REMOTE_IP)
    assert b"AUTH=SCRAM-SHA-256" not in session.greeting()
    first = b64(scramp.ScramClient([MECH], USER, PASSWORD).get_client_first())
    out = await feed(session, b"a AUTHENTICATE SCRAM-SHA-256 " + first + b"\r\n")
    assert out.startswith(b"a NO [PRIVACYREQUIRED]")
    assert session.user is None


async def test_an_abandoned_exchange_is_not_counted(dep: ImapDeployment) -> None:
    session = session_for(dep, ip=REMOTE_IP, is_tls=True)
    first = b64(scramp.ScramClient([MECH], USER, "wrong").get_client_first())
    out = await feed(session, b"a AUTHENTICATE SCRAM-SHA-256 " + first + b"\r\n")
    assert out.startswith(b"+ ")
    session.close()  # the client went away before its proof
    assert all(r.in_flight == 0 and r.failures == 0 for r in dep.throttle.records.values())


@pytest.mark.external
def test_gnu_sasl_client_logs_in_with_starttls(dep: ImapDeployment) -> None:
    # scripts/test installs Debian's gsasl; without it this fails (FileNotFoundError).
    with running_server(dep) as server:

        def gsasl(
            password: str, mechanism: str = MECH, *extra: str
        ) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    "gsasl",
                    "--client",
                    "--imap",
                    f"--connect=127.0.0.1:{server.imap_port}",
                    "--starttls",
                    f"--x509-ca-file={dep.paths.ca_cert}",
                    "--hostname=127.0.0.1",
                    f"--mechanism={mechanism}",
                    f"--authentication-id={USER}",
                    f"--password={password}",
                    # gsasl 2.2 with TLS channel-binding data at hand gives up on its own,
                    # before sending anything, when the mechanism is not -PLUS (seen on the
                    # wire: nothing follows our "+ "); without it, it speaks plain SCRAM.
                    "--no-cb",
                    "--verbose",
                    *extra,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                check=False,
            )

        ok = gsasl(PASSWORD)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert "OK" in ok.stdout
        # An authzid naming the user itself (mutt and neomutt send one through GNU SASL):
        # allowed, as with PLAIN; another user's name is not.
        itself = gsasl(PASSWORD, MECH, f"--authorization-id={USER.upper()}")
        assert itself.returncode == 0, itself.stdout + itself.stderr
        other = gsasl(PASSWORD, MECH, "--authorization-id=bob@example.com")
        assert other.returncode != 0
        assert "AUTHORIZATIONFAILED" in other.stdout + other.stderr
        bad = gsasl("wrong")
        assert bad.returncode != 0
        assert "AUTHENTICATIONFAILED" in bad.stdout + bad.stderr
        plus = gsasl(PASSWORD, "SCRAM-SHA-256-PLUS")  # we offer no channel binding
        assert plus.returncode != 0
        assert "NO [CANNOT]" in plus.stdout + plus.stderr
