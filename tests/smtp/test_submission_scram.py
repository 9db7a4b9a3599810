"""AUTH SCRAM-SHA-256 on the submission ports (smtp/submission.py `_auth_scram`) over real
sockets: smtplib driven by scramp's client on 465 and after STARTTLS on 587, the exact replies
of the refusals, the shared throttle, and GNU SASL's client (`gsasl --smtp`) for interop."""

from __future__ import annotations

import base64
import smtplib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import scramp

from mailstack.base.throttle import LoginThrottle
from tests.smtp.test_submission import ALICE, PASSWORD, Submission, message, running, thread

MECH = "SCRAM-SHA-256"
FAILED = "535 5.7.8 Authentication credentials invalid"


def ehlo_smtps(sub: Submission) -> smtplib.SMTP_SSL:
    """On 465, after EHLO (smtplib's auth(), unlike login(), does not send it)."""
    client = sub.smtps()
    client.ehlo()
    return client


@pytest.fixture
async def sub(tmp_path: Path) -> AsyncIterator[Submission]:
    async with running(tmp_path / "state") as harness:
        yield harness


def authobject(
    user: str, password: str, *, tamper: bool = False
) -> tuple[scramp.ScramClient, Callable[[bytes | None], str]]:
    """smtplib's auth() callback: called with no challenge for the initial response, then
    with each decoded 334 challenge."""
    client = scramp.ScramClient([MECH], user, password)

    def answer(challenge: bytes | None = None) -> str:
        if not challenge:
            return client.get_client_first()
        text = challenge.decode()
        if text.startswith("v="):  # server-final: check its signature, answer empty
            client.set_server_final(text)
            return ""
        client.set_server_first(text)
        final = client.get_client_final()
        if tamper:
            head, _, proof = final.rpartition(",p=")
            raw = bytearray(base64.b64decode(proof))
            raw[-1] ^= 0x80
            final = f"{head},p={base64.b64encode(bytes(raw)).decode()}"
        return final

    return client, answer


async def test_smtplib_scram_on_465_and_587_then_sends(sub: Submission) -> None:
    def client() -> None:
        smtps = ehlo_smtps(sub)
        assert MECH in smtps.esmtp_features["auth"].split()
        code, _ = smtps.auth(MECH, authobject("Alice@Example.COM.", PASSWORD)[1])
        assert code == 235
        smtps.sendmail(ALICE, [ALICE], message(to=ALICE))
        smtps.quit()
        smtp = sub.smtp()
        smtp.starttls(context=sub.tls())
        smtp.ehlo()
        # Without an initial response: "334 " first, then the client-first message.
        code, _ = smtp.auth(MECH, authobject(ALICE, PASSWORD)[1], initial_response_ok=False)
        assert code == 235
        smtp.quit()

    await thread(client)
    assert len(sub.messages(ALICE)) == 1


@pytest.mark.parametrize(
    ("user", "password", "tamper"),
    [
        pytest.param(ALICE, "wrong", False, id="wrong-password"),
        pytest.param("nobody@example.com", PASSWORD, False, id="unknown-user"),
        pytest.param(ALICE, PASSWORD, True, id="tampered-proof"),
    ],
)
async def test_refused_logins_get_535(
    sub: Submission, user: str, password: str, tamper: bool
) -> None:
    def client() -> tuple[int, bytes]:
        smtps = ehlo_smtps(sub)
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtps.auth(MECH, authobject(user, password, tamper=tamper)[1])
        # Still not logged in, and PLAIN still works in the same session.
        assert smtps.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 530
        return smtps.login(ALICE, PASSWORD)[0], failed.value.smtp_error

    code, error = await thread(client)
    assert code == 235
    assert error == FAILED[4:].encode()


async def test_refusals_on_the_wire(sub: Submission) -> None:
    def b64(text: str) -> bytes:
        return base64.b64encode(text.encode())

    def client() -> list[str]:
        raw = sub.raw_tls()
        lines = [
            b"AUTH SCRAM-SHA-256 " + b64("p=tls-server-end-point,,n=alice@example.com,r=abc"),
            b"AUTH SCRAM-SHA-256 " + b64("n,a=bob@example.com,n=alice@example.com,r=abc"),
            b"AUTH SCRAM-SHA-256 " + b64("n,,r=abc"),
            b"AUTH SCRAM-SHA-256 !!",
            b"AUTH SCRAM-SHA-256",
            b"*",
            b"AUTH SCRAM-SHA-256-PLUS",
        ]
        out = []
        for line in lines:
            raw.send(line + b"\r\n")
            out.append(raw.reply())
        # A non-empty answer to the server-final message: refused, not logged in.
        scram_client, _ = authobject(ALICE, PASSWORD)
        raw.send(b"AUTH SCRAM-SHA-256 " + b64(scram_client.get_client_first()) + b"\r\n")
        scram_client.set_server_first(base64.b64decode(raw.reply()[4:]).decode())
        raw.send(b64(scram_client.get_client_final()) + b"\r\n")
        scram_client.set_server_final(base64.b64decode(raw.reply()[4:]).decode())
        raw.send(b64("more") + b"\r\n")
        out.append(raw.reply())
        raw.send(f"MAIL FROM:<{ALICE}>\r\n".encode())
        out.append(raw.reply())
        return out

    assert await thread(client) == [
        "535 5.7.8 Channel binding is not offered: use SCRAM-SHA-256",
        "535 5.7.8 Authorization identity must be empty or the user itself",
        "501 5.5.2 Malformed SCRAM message",
        "501 5.5.2 Cannot decode the response (base64)",
        "334 ",
        "501 5.0.0 Authentication cancelled",
        "504 5.5.4 Unrecognized authentication type: use PLAIN, LOGIN or SCRAM-SHA-256",
        "501 5.5.2 Malformed SCRAM message",
        "530 5.7.0 Authentication required",
    ]


async def test_scram_needs_tls_on_587(sub: Submission) -> None:
    def client() -> tuple[int, bytes]:
        smtp = sub.smtp()
        smtp.ehlo()
        assert not smtp.has_extn("auth")
        return smtp.docmd("AUTH", MECH)

    code, text = await thread(client)
    assert (code, text) == (530, b"5.7.0 Must issue a STARTTLS command first")


async def test_scram_failures_count_in_the_shared_throttle(sub: Submission) -> None:
    sub.ctx.logins.throttle = LoginThrottle(lockout_failures=3)  # 3 free failures: no delay

    def client() -> list[int]:
        smtps = ehlo_smtps(sub)
        for _ in range(3):
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtps.auth(MECH, authobject(ALICE, "wrong")[1])
        codes = []
        for attempt in (
            lambda: smtps.auth(MECH, authobject(ALICE, PASSWORD)[1]),
            lambda: smtps.login(ALICE, PASSWORD),
        ):
            try:
                codes.append(attempt()[0])
            except smtplib.SMTPAuthenticationError as exc:
                codes.append(exc.smtp_code)
        return codes

    assert await thread(client) == [454, 454]  # locked for both mechanisms


@pytest.mark.external
async def test_gnu_sasl_client_logs_in_with_starttls(sub: Submission) -> None:
    def gsasl(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                "gsasl",
                "--client",
                "--smtp",
                f"--connect=127.0.0.1:{sub.port}",
                "--starttls",
                f"--x509-ca-file={sub.ctx.paths.ca_cert}",
                "--hostname=127.0.0.1",
                f"--mechanism={MECH}",
                f"--authentication-id={ALICE}",
                f"--password={password}",
                "--no-cb",  # see tests/imap/test_imap_scram.py: gsasl 2.2 needs it without -PLUS
                "--verbose",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    ok = await thread(lambda: gsasl(PASSWORD))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "235 2.7.0" in ok.stdout
    bad = await thread(lambda: gsasl("wrong"))
    assert bad.returncode != 0
    assert "535 5.7.8" in bad.stdout + bad.stderr
