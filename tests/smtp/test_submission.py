"""The submission listeners over real sockets: smtplib (STARTTLS on the 587-style listener,
SMTP_SSL on the 465-style one, both verified against the deployment's CA), raw lines for what
smtplib will not send, and swaks as a real client.

Local recipients are read back from the Maildirs; foreign recipients from the outbound queue's
spool (the runner is not started here: test_submission_remote.py delivers for real).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import smtplib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from mailstack.delivery.queue import OutboundQueue
from mailstack.delivery.services import ServerContext
from mailstack.smtp.submission import SubmissionService

from mailstack.base.throttle import LoginThrottle, Refused, Reservation
from tests.support.smtpserver import HOSTNAME, RawClient, build_context

T = TypeVar("T")
ALICE, BOB = "alice@example.com", "bob@example.com"
PASSWORD = "pw-" + ALICE


def message(sender: str = ALICE, to: str = BOB, subject: str = "hello") -> bytes:
    return (
        f"From: Alice <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        "Date: Sun, 22 Nov 2026 15:00:00 +0000\r\nMessage-ID: <s1@example.com>\r\n"
        "\r\nhello there\r\n"
    ).encode()


@dataclass
class Submission:
    ctx: ServerContext
    starttls: asyncio.Server
    implicit: asyncio.Server
    clients: list[Any]
    services: tuple[SubmissionService, SubmissionService]

    @property
    def port(self) -> int:
        port: int = self.starttls.sockets[0].getsockname()[1]
        return port

    @property
    def tls_port(self) -> int:
        port: int = self.implicit.sockets[0].getsockname()[1]
        return port

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ctx.paths.ca_cert))

    def smtp(self) -> smtplib.SMTP:
        client = smtplib.SMTP(
            "127.0.0.1", self.port, local_hostname="client.example.net", timeout=30
        )
        self.clients.append(client)
        return client

    def smtps(self) -> smtplib.SMTP_SSL:
        client = smtplib.SMTP_SSL(
            "127.0.0.1",
            self.tls_port,
            local_hostname="client.example.net",
            context=self.tls(),
            timeout=30,
        )
        self.clients.append(client)
        return client

    def raw_tls(self) -> RawClient:
        """A raw client on the implicit-TLS listener, after the greeting and EHLO."""
        sock = socket.create_connection(("127.0.0.1", self.tls_port), timeout=30)
        client = RawClient(self.tls().wrap_socket(sock, server_hostname=HOSTNAME))
        self.clients.append(client)
        assert client.reply().startswith("220 ")
        client.send(b"EHLO client.example.net\r\n")
        assert "AUTH PLAIN LOGIN" in client.reply()
        return client

    def messages(self, user: str) -> list[bytes]:
        import mailbox

        md = mailbox.Maildir(str(self.ctx.paths.maildir(user)), factory=None, create=False)
        return [md.get_bytes(k) for k in sorted(md.keys())]

    @property
    def queue(self) -> OutboundQueue:
        assert self.ctx.queue is not None
        return self.ctx.queue


async def thread(fn: Callable[[], T]) -> T:
    """Blocking client code runs in a thread: the servers live on this test's loop."""
    return await asyncio.to_thread(fn)


@pytest.fixture
async def sub(tmp_path: Path) -> AsyncIterator[Submission]:
    async with running(tmp_path / "state") as harness:
        yield harness


class running:  # noqa: N801 - used like a function
    def __init__(
        self,
        root: Path,
        smtp: dict[str, Any] | None = None,
        queue: bool = True,
        **config: dict[str, Any],
    ) -> None:
        self.root, self.smtp_cfg, self.with_queue, self.config = root, smtp, queue, config

    async def __aenter__(self) -> Submission:
        ctx, _ca = build_context(
            self.root, smtp=self.smtp_cfg, queue=self.with_queue, **self.config
        )
        ctx.events.bind(asyncio.get_running_loop())
        services = (
            SubmissionService(ctx, implicit_tls=False),
            SubmissionService(ctx, implicit_tls=True),
        )
        starttls = await services[0].listen("127.0.0.1", 0)
        implicit = await services[1].listen("127.0.0.1", 0)
        self.harness = Submission(ctx, starttls, implicit, [], services)
        return self.harness

    async def __aexit__(self, *exc: object) -> None:
        h = self.harness
        for client in h.clients:
            client.close()
        h.starttls.close()
        h.implicit.close()
        h.ctx.stopping.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while any(s.open_connections() for s in h.services) and loop.time() < deadline:
            await asyncio.sleep(0.01)  # bounded wait for every session's connection_lost
        await h.starttls.wait_closed()
        await h.implicit.wait_closed()
        h.ctx.accounts.close()


# -- STARTTLS (587) ------------------------------------------------------------------------------


async def test_starttls_required_before_auth_and_mail(sub: Submission) -> None:
    def client() -> None:
        smtp = sub.smtp()
        smtp.ehlo()
        assert smtp.has_extn("starttls")
        assert not smtp.has_extn("auth")
        auth = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert smtp.docmd("AUTH", f"PLAIN {auth}") == (
            530,
            b"5.7.0 Must issue a STARTTLS command first",
        )
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 530
        assert smtp.docmd("RCPT", f"TO:<{BOB}>")[0] == 530
        smtp.starttls(context=sub.tls())
        smtp.ehlo()
        assert smtp.has_extn("auth")
        assert smtp.esmtp_features["auth"].split() == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
        assert not smtp.has_extn("starttls")
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>") == (530, b"5.7.0 Authentication required")
        assert smtp.docmd("RCPT", f"TO:<{BOB}>")[0] == 530
        smtp.quit()

    await thread(client)


async def test_starttls_auth_plain_delivers_locally(sub: Submission) -> None:
    def client() -> dict[str, tuple[int, bytes]]:
        smtp = sub.smtp()
        smtp.starttls(context=sub.tls())
        assert smtp.login(ALICE, PASSWORD)[0] == 235  # smtplib picks PLAIN
        refused = smtp.sendmail(ALICE, [BOB], message())
        smtp.quit()
        return refused

    assert await thread(client) == {}
    (stored,) = sub.messages(BOB)
    head = stored.split(b"\n\n", 1)[0].decode()
    assert head.startswith(f"Return-Path: <{ALICE}>\nDelivered-To: {BOB}\nReceived: ")
    assert "(Authenticated sender: alice@example.com)" in head
    assert "with ESMTPSA id" in head
    assert "(using TLSv1.3" in head
    assert stored.endswith(b"\n\nhello there\n")
    assert sub.queue.list() == []  # nothing foreign: nothing queued


async def test_rset_and_second_transaction_keep_the_login(sub: Submission) -> None:
    def client() -> None:
        smtp = sub.smtp()
        smtp.starttls(context=sub.tls())
        smtp.login(ALICE, PASSWORD)
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert smtp.rset()[0] == 250
        smtp.sendmail(ALICE, [BOB], message(subject="one"))
        smtp.sendmail(ALICE, ["alice@example.com"], message(to=ALICE, subject="two"))
        assert smtp.docmd("AUTH", "PLAIN")[0] == 503  # once per session (RFC 4954 §4)
        smtp.quit()

    await thread(client)
    assert len(sub.messages(BOB)) == 1
    assert len(sub.messages(ALICE)) == 1


# -- implicit TLS (465) --------------------------------------------------------------------------


async def test_implicit_tls_auth_login_to_an_alias(sub: Submission) -> None:
    def client() -> None:
        smtp = sub.smtps()
        smtp.ehlo()
        assert not smtp.has_extn("starttls")
        assert smtp.docmd("STARTTLS")[0] == 503
        # LOGIN without an initial response: both 334 challenges.
        smtp.user, smtp.password = ALICE, PASSWORD
        code, _ = smtp.auth("LOGIN", smtp.auth_login, initial_response_ok=False)
        assert code == 235
        assert smtp.sendmail(ALICE, ["team@example.com"], message(to="team@example.com")) == {}
        smtp.quit()

    await thread(client)
    for user in (ALICE, BOB):
        (stored,) = sub.messages(user)
        assert b"with ESMTPSA" in stored
        assert b"for <team@example.com>" in stored
        assert b"(using TLSv1.3 with cipher" in stored  # the implicit handshake, recorded


async def test_sasl_exchanges_line_by_line(sub: Submission) -> None:
    def client() -> list[str]:
        raw = sub.raw_tls()
        lines = [
            b"AUTH CRAM-MD5",
            b"AUTH PLAIN !!notbase64",
            b"AUTH PLAIN",
            b"*",  # cancels (RFC 4954 §4)
            b"AUTH LOGIN",
            b"AUTH",  # taken as the base64 user name: decodes to bytes that are not UTF-8
            b"AUTH LOGIN " + base64.b64encode(b"nobody"),  # user name as initial response
            b"!!",
            b"AUTH PLAIN " + base64.b64encode(b"alice@example.com\0no-password-here"),
            b"AUTH PLAIN " + base64.b64encode(f"bob@example.com\0{ALICE}\0{PASSWORD}".encode()),
            b"AUTH PLAIN",
            base64.b64encode(f"{ALICE}\0{ALICE}\0{PASSWORD}".encode()),
            b"QUIT",
        ]
        out = []
        for line in lines:
            raw.send(line + b"\r\n")
            out.append(raw.reply())
        return out

    assert await thread(client) == [
        "504 5.5.4 Unrecognized authentication type: use PLAIN, LOGIN or SCRAM-SHA-256",
        "501 5.5.2 Cannot decode the response (base64)",
        "334 ",
        "501 5.0.0 Authentication cancelled",
        "334 VXNlcm5hbWU6",
        "501 5.5.2 Malformed authentication response",
        "334 UGFzc3dvcmQ6",
        "501 5.5.2 Cannot decode the response (base64)",
        "501 5.5.2 Malformed authentication response",
        "535 5.7.8 Authorization identity must be empty or the user itself",
        "334 ",
        "235 2.7.0 Authentication successful",
        "221 2.0.0 Bye",
    ]


# -- credentials and throttling ------------------------------------------------------------------


async def test_wrong_password_535_then_lockout_454(
    sub: Submission, caplog: pytest.LogCaptureFixture
) -> None:
    sub.ctx.logins.throttle = LoginThrottle(free_failures=100, lockout_failures=2)
    secret = "not-the-password-XYZZY"

    def client() -> list[tuple[int, bytes | str]]:
        codes: list[tuple[int, bytes | str]] = []
        smtp = sub.smtps()
        for password in (secret, secret, PASSWORD):
            try:
                codes.append(smtp.login(ALICE, password))
            except smtplib.SMTPAuthenticationError as exc:
                codes.append((exc.smtp_code, exc.smtp_error))
        smtp.quit()
        return codes

    caplog.set_level(logging.DEBUG)
    invalid = (535, b"5.7.8 Authentication credentials invalid")
    locked = (454, b"4.7.0 Too many failed authentication attempts, try again later")
    # smtplib tries PLAIN, then LOGIN on failure: two failures on the first login.
    assert await thread(client) == [invalid, locked, locked]
    assert secret not in caplog.text
    assert base64.b64encode(f"\0{ALICE}\0{secret}".encode()).decode() not in caplog.text
    assert isinstance(sub.ctx.logins.throttle.reserve(ALICE, "127.0.0.1"), Refused)


async def test_failures_are_delayed_then_success_resets(sub: Submission) -> None:
    sub.ctx.logins.throttle = LoginThrottle(
        free_failures=1, base_delay_s=0.001, lockout_failures=50
    )

    def client() -> None:
        smtp = sub.smtps()
        for _ in range(2):  # the second attempt (PLAIN, then LOGIN) is answered after a delay
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login(ALICE, "wrong")
        assert smtp.login(ALICE, PASSWORD)[0] == 235
        smtp.quit()

    await thread(client)
    again = sub.ctx.logins.throttle.reserve(ALICE, "127.0.0.1")
    assert isinstance(again, Reservation)
    assert again.delay_s == 0.0


# -- sender policy -------------------------------------------------------------------------------


async def test_sending_as_someone_else_is_refused(sub: Submission) -> None:
    def client() -> list[tuple[int, bytes]]:
        smtp = sub.smtp()
        smtp.starttls(context=sub.tls())
        smtp.login(ALICE, PASSWORD)
        out = [smtp.docmd("MAIL", f"FROM:<{BOB}>"), smtp.docmd("MAIL", "FROM:<>")]
        # A +detail of her own address is hers; the envelope passes, From: is checked at DATA.
        assert smtp.docmd("MAIL", "FROM:<alice+lists@example.com>")[0] == 250
        assert smtp.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        out.append(smtp.data(message(sender=BOB)))
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert smtp.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        out.append(smtp.data(b"Subject: no author\r\n\r\nbody\r\n"))
        assert smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0] == 250
        assert smtp.docmd("RCPT", f"TO:<{BOB}>")[0] == 250
        both = message().replace(b"From: Alice <alice", b"From: bob@example.com, Alice <alice")
        out.append(smtp.data(both))
        smtp.quit()
        return out

    assert await thread(client) == [
        (553, b"5.7.1 Sender address rejected: not owned by user"),
        (553, b"5.7.1 Sender address rejected: not owned by user"),
        (550, b"5.7.1 From: header address rejected: not owned by user"),
        (550, b"5.6.0 Message has no From: header (RFC 5322 \xc2\xa73.6)"),
        (550, b"5.7.1 From: header address rejected: not owned by user"),
    ]
    assert sub.messages(BOB) == []


async def test_carol_may_send_as_the_catchall_alias_target_only(sub: Submission) -> None:
    def client() -> tuple[int, int]:
        smtp = sub.smtps()
        smtp.login("carol@example.org", "pw-carol@example.org")
        own = smtp.docmd("MAIL", "FROM:<carol+x@example.org>")[0]
        smtp.rset()
        other = smtp.docmd("MAIL", f"FROM:<{ALICE}>")[0]
        smtp.quit()
        return own, other

    assert await thread(client) == (250, 553)


# -- recipients: local and queued ----------------------------------------------------------------


async def test_foreign_recipients_are_queued_in_one_entry(sub: Submission) -> None:
    def client() -> tuple[int, bytes]:
        smtp = sub.smtps()
        smtp.login(ALICE, PASSWORD)
        smtp.mail(ALICE)
        for rcpt in ["x@a.test", BOB, "y@b.test", "X@a.test"]:
            assert smtp.rcpt(rcpt)[0] == 250
        reply = smtp.data(message(to="x@a.test"))
        smtp.quit()
        return reply

    code, text = await thread(client)
    assert code == 250
    assert len(sub.messages(BOB)) == 1
    (entry,) = sub.queue.list()
    # The id in the reply is the one `mailstack queue list` shows for the message.
    assert text == f"2.0.0 OK: queued as {entry.id}".encode()
    assert entry.mail_from == ALICE
    assert [r.address for r in entry.recipients] == ["x@a.test", "y@b.test", "X@a.test"]
    queued = sub.queue.message(entry.id)
    assert queued.startswith(b"Received: from client.example.net ([127.0.0.1])\r\n")
    assert b"\t(Authenticated sender: alice@example.com)\r\n" in queued
    assert b"with ESMTPSA" in queued
    assert queued.endswith(message(to="x@a.test"))


async def test_unknown_local_user_refused_and_without_queue_foreign_deferred(
    tmp_path: Path,
) -> None:
    async with running(tmp_path / "state", queue=False) as h:

        def client() -> list[int]:
            smtp = h.smtps()
            smtp.login(ALICE, PASSWORD)
            smtp.docmd("MAIL", f"FROM:<{ALICE}>")
            codes = [
                smtp.docmd("RCPT", "TO:<nobody@example.com>")[0],
                smtp.docmd("RCPT", "TO:<x@a.test>")[0],
                smtp.docmd("RCPT", f"TO:<{BOB}>")[0],
            ]
            smtp.quit()
            return codes

        assert await thread(client) == [550, 451, 250]


async def test_limits_from_config(tmp_path: Path) -> None:
    limits = {"max_message_size": 2000, "max_recipients": 2}
    async with running(tmp_path / "state", smtp=limits) as h:

        def client() -> list[int]:
            smtp = h.smtps()
            assert smtp.ehlo()[0] == 250
            assert smtp.esmtp_features["size"] == "2000"
            smtp.login(ALICE, PASSWORD)
            out = [smtp.docmd("MAIL", f"FROM:<{ALICE}> SIZE=5000")[0]]
            smtp.docmd("MAIL", f"FROM:<{ALICE}>")
            out += [smtp.docmd("RCPT", f"TO:<{r}>")[0] for r in (BOB, ALICE, "x@a.test")]
            out.append(smtp.data(message() + (b"x" * 78 + b"\r\n") * 40)[0])
            smtp.quit()
            return out

        assert await thread(client) == [552, 250, 250, 452, 552]
        assert h.messages(BOB) == []


async def test_per_address_connection_limit(tmp_path: Path) -> None:
    async with running(tmp_path / "state", smtp={"max_connections_per_ip": 1}) as h:

        def client() -> bytes:
            first = socket.create_connection(("127.0.0.1", h.port), timeout=30)
            h.clients.append(first)
            assert first.recv(1000).startswith(b"220 ")
            second = socket.create_connection(("127.0.0.1", h.port), timeout=30)
            h.clients.append(second)
            return second.recv(1000)

        assert (
            await thread(client)
            == b"421 4.7.0 Too many connections from your address, try again later\r\n"
        )


# -- swaks ---------------------------------------------------------------------------------------


async def test_swaks_tls_auth_plain(sub: Submission) -> None:
    assert shutil.which("swaks"), "swaks is not installed; scripts/test installs it"
    proc = await asyncio.create_subprocess_exec(
        "swaks",
        "--server", f"127.0.0.1:{sub.port}",
        "--tls",
        "--tls-verify",
        "--tls-ca-path", str(sub.ctx.paths.ca_cert),
        "--auth", "PLAIN",
        "--auth-user", ALICE,
        "--auth-password", PASSWORD,
        "--from", ALICE,
        "--to", f"{BOB},x@a.test",
        "--ehlo", "client.example.net",
        "--header", "Subject: from swaks",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    text = out.decode()
    assert proc.returncode == 0, text
    assert "<~  250 AUTH PLAIN LOGIN" in text  # inside TLS only
    assert "<-  250 STARTTLS" in text
    assert "AUTH" not in text.split(" -> STARTTLS")[0]
    assert "<~  235 2.7.0 Authentication successful" in text
    (stored,) = sub.messages(BOB)
    assert b"Subject: from swaks" in stored
    assert b"with ESMTPSA" in stored
    (entry,) = sub.queue.list()
    assert [r.address for r in entry.recipients] == ["x@a.test"]
