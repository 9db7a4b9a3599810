"""Regression tests for the outside review's SMTP findings (issue 10 items 3, 5, 7, 8; issue 9's
unterminated path), each sending the reviewer's bytes over a real loopback socket."""

from __future__ import annotations

import asyncio
import base64
import logging
import smtplib
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from mailstack.delivery import remote

from mailstack.base.config import config_from_dict
from tests.smtp.test_submission import ALICE, PASSWORD, running
from tests.support.smtpserver import RawClient, SmtpHarness, running_smtp

MSG = b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: t\r\n\r\nHello.\r\n"
# The reviewer's smuggling payload: a lenient next hop reads "<CR>.<CR>" as the end of DATA.
SMUGGLED = b"hello\r.\rMAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.com>\r\n"


def bdat(chunk: bytes, *, last: bool = False) -> bytes:
    return b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"") + chunk


def transaction(c: RawClient, rcpt: bytes = b"alice@example.com") -> list[str]:
    c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<" + rcpt + b">\r\n")
    return c.replies(2)


# -- item 3: BDAT smuggling ----------------------------------------------------------------------


async def test_bdat_chunk_with_bare_cr_is_refused_like_data(mx: SmtpHarness) -> None:
    def run() -> tuple[list[str], str, bool]:
        c = mx.raw()
        started = transaction(c)
        c.send(bdat(b"Subject: s\r\n\r\n" + SMUGGLED, last=True))
        return started, c.reply(), c.is_closed()

    started, reply, closed = await asyncio.to_thread(run)
    assert [r[:3] for r in started] == ["250", "250"]
    assert reply.startswith("554 5.5.2")
    assert closed
    assert mx.messages("alice@example.com") == []
    assert mx.messages("bob@example.com") == []


async def test_bdat_bare_lf_and_trailing_cr_refused_crlf_across_chunks_accepted(
    mx: SmtpHarness,
) -> None:
    def run() -> list[str]:
        out = []
        # CR at the end of one chunk, its LF at the start of the next: a CRLF, accepted.
        c = mx.raw()
        transaction(c)
        c.send(bdat(b"Subject: x\r\n\r\nab\r"))
        out.append(c.reply())
        c.send(bdat(b"\n", last=True))
        out.append(c.reply())
        # A bare LF in a later chunk.
        d = mx.raw()
        transaction(d)
        d.send(bdat(b"Subject: y\r\n\r\nab"))
        out.append(d.reply())
        d.send(bdat(b"c\nd\r\n", last=True))
        out.append(d.reply())
        # The message ends in a CR whose LF never comes.
        e = mx.raw()
        transaction(e)
        e.send(bdat(b"Subject: z\r\n\r\nab\r", last=True))
        out.append(e.reply())
        return out

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["250 2.0.0", "250 2.0.0", "250 2.0.0", "554 5.5.2", "554 5.5.2"]
    (stored,) = mx.messages("alice@example.com")
    assert stored.endswith(b"\n\nab\n")  # stdlib Maildir reads CRLF as stored: LF


async def test_bdat_with_bare_cr_refused_on_submission(tmp_path: Path) -> None:
    async with running(tmp_path / "state") as sub:

        def run() -> tuple[str, bool]:
            c = sub.raw_tls()
            token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode())
            c.send(b"AUTH PLAIN " + token + b"\r\n")
            assert c.reply().startswith("235")
            c.send(b"MAIL FROM:<" + ALICE.encode() + b">\r\nRCPT TO:<someone@remote.test>\r\n")
            assert [r[:3] for r in c.replies(2)] == ["250", "250"]
            body = b"From: " + ALICE.encode() + b"\r\nSubject: s\r\n\r\n" + SMUGGLED
            c.send(bdat(body, last=True))
            return c.reply(), c.is_closed()

        reply, closed = await asyncio.to_thread(run)
        assert reply.startswith("554 5.5.2")
        assert closed
        assert sub.queue.list() == []


class Sink:
    """A next-hop MTA double that records the DATA bytes exactly as they arrive."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink.test ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"DATA":
                writer.write(b"354 go\r\n")
                self.data.append(await reader.readuntil(b"\r\n.\r\n"))
                writer.write(b"250 ok\r\n")
            elif verb == b"EHLO":
                writer.write(b"250-sink.test\r\n250 8BITMIME\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@asynccontextmanager
async def sink_server() -> AsyncIterator[tuple[Sink, int]]:
    sink = Sink()
    server = await asyncio.start_server(sink.client, "127.0.0.1", 0)
    try:
        yield sink, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


async def test_outbound_client_normalises_line_endings_of_queued_mail(tmp_path: Path) -> None:
    # A message as a queue file written before the fix may hold it: bare CRs and a bare LF.
    queued = b"Subject: q\r\n\r\n" + SMUGGLED + b"DATA\n.\nend\r\n"
    async with sink_server() as (sink, port):
        config = config_from_dict(
            {
                "server": {"hostname": "mail.example.com", "domains": ["example.com"]},
                "outbound": {"relay": f"127.0.0.1:{port}"},
            }
        )
        results = await asyncio.to_thread(
            remote.deliver, config, "remote.test", "x@example.com", ["y@remote.test"], queued
        )
    assert [r.kind for r in results] == ["delivered"], results
    (data,) = sink.data
    assert data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    # The would-be terminators are now ordinary, dot-stuffed lines of the one message.
    assert data == (
        b"Subject: q\r\n\r\nhello\r\n..\r\nMAIL FROM:<evil@example.net>\r\n"
        b"RCPT TO:<bob@example.com>\r\nDATA\r\n..\r\nend\r\n.\r\n"
    )


# -- item 7: bytes that are not UTF-8 in an address ----------------------------------------------


async def test_non_utf8_recipient_gets_5xx_and_one_log_line(
    mx: SmtpHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    def run() -> list[str]:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net> SMTPUTF8\r\nRCPT TO:<\xff@example.test>\r\n")
        out = c.replies(2)
        c.send(b"RCPT TO:<\xff@example.com>\r\nMAIL FROM:<\xfe@example.net>\r\nNOOP\r\n")
        return out + c.replies(3)

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["250 2.1.0", "501 5.1.3", "501 5.1.3", "503 5.5.1", "250 2.0.0"]
    assert "not valid UTF-8" in out[1]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "Traceback" not in caplog.text and "UnicodeEncodeError" not in caplog.text
    refused = [r for r in caplog.records if "RCPT refused" in r.getMessage()]
    assert len(refused) == 2  # one line per refused command


async def test_non_utf8_addresses_on_submission(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(tmp_path / "state") as sub:

        def run() -> list[str]:
            c = sub.raw_tls()
            c.send(b"AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()) + b"\r\n")
            c.reply()
            c.send(b"MAIL FROM:<\xff@example.com> SMTPUTF8\r\n")
            c.send(
                b"MAIL FROM:<" + ALICE.encode() + b"> SMTPUTF8\r\nRCPT TO:<\xff@remote.test>\r\n"
            )
            return c.replies(3)

        out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["501 5.1.7", "250 2.1.0", "501 5.1.3"]
    assert "UnicodeEncodeError" not in caplog.text


# -- item 8 and issue 9: paths -------------------------------------------------------------------


async def test_path_without_closing_bracket_is_501_and_the_session_goes_on(
    mx: SmtpHarness,
) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(b"MAIL FROM:<unterminated@remote.test\r\n")
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com\r\nNOOP\r\n")
        return c.replies(4)

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["501 5.1.7", "250 2.1.0", "501 5.1.3", "250 2.0.0"]


async def test_rcpt_to_postmaster_without_domain_is_accepted(mx: SmtpHarness) -> None:
    mx.ctx.accounts.add_alias("postmaster@example.com", ["alice@example.com"])

    def run() -> list[str]:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n")
        out = c.replies(3)
        c.send(MSG + b".\r\n")
        return [*out, c.reply()]

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["250 2.1.0", "250 2.1.5", "354 End d", "250 2.0.0"]
    (stored,) = mx.messages("alice@example.com")
    assert b"for <postmaster@example.com>" in stored  # the Received field names it


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        pytest.param(b"RCPT TO:<x@[300.1.1.1]>", "501 5.1.3", id="rcpt-octet-over-255"),
        pytest.param(b"RCPT TO:<x@[example.com]>", "501 5.1.3", id="rcpt-name-in-brackets"),
        pytest.param(b"RCPT TO:<x@[IPv6:::zz]>", "501 5.1.3", id="rcpt-bad-ipv6"),
        pytest.param(b"RCPT TO:<x@[1.2.3]>", "501 5.1.3", id="rcpt-three-octets"),
        pytest.param(b"RCPT TO:<x@[192.0.2.1]>", "554 5.7.1", id="rcpt-valid-v4-not-ours"),
        pytest.param(b"RCPT TO:<x@[IPv6:2001:db8::1]>", "554 5.7.1", id="rcpt-valid-v6-not-ours"),
        pytest.param(b"RCPT TO:<nobody>", "501 5.1.3", id="rcpt-no-domain"),
    ],
)
async def test_address_literals_are_checked(mx: SmtpHarness, command: bytes, reply: str) -> None:
    def run() -> str:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net>\r\n")
        assert c.reply().startswith("250")
        c.send(command + b"\r\n")
        return c.reply()

    assert (await asyncio.to_thread(run))[:9] == reply


async def test_sender_address_literal_is_checked(mx: SmtpHarness) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@[300.1.1.1]>\r\nMAIL FROM:<x@[192.0.2.1]>\r\n")
        return c.replies(2)

    assert [r[:9] for r in await asyncio.to_thread(run)] == ["501 5.1.7", "250 2.1.0"]


# -- item 5: deadlines, not idle timers ----------------------------------------------------------


def trickle(c: RawClient, data: bytes, every_s: float, stop_after_s: float) -> tuple[str, float]:
    """Send `data` a byte every `every_s` seconds; the server's reply and when it came."""
    start = time.monotonic()
    c.sock.settimeout(every_s)
    for byte in data:
        try:
            c.send(bytes([byte]))
        except OSError:
            break
        try:
            chunk = c.sock.recv(4096)
        except TimeoutError:
            if time.monotonic() - start > stop_after_s:
                return "still open", time.monotonic() - start
            continue
        c.buf += chunk
        break
    c.sock.settimeout(30)
    return c.reply(), time.monotonic() - start


async def test_a_byte_every_3_s_does_not_keep_a_command_or_data_open(tmp_path: Path) -> None:
    limits = {"command_timeout_s": 5, "data_timeout_s": 5}
    async with running_smtp(tmp_path / "state", smtp=limits) as h:

        def command_line() -> tuple[str, float]:
            return trickle(h.raw(), b"NOOP" + b" x" * 20 + b"\r\n", 3, 15)

        def data_body() -> tuple[str, float]:
            c = h.raw()
            transaction(c)
            c.send(b"DATA\r\n")
            assert c.reply().startswith("354")
            return trickle(c, b"Subject: slow\r\n\r\n" + b"x" * 30 + b"\r\n.\r\n", 3, 15)

        (line_reply, line_s), (data_reply, data_s) = await asyncio.gather(
            asyncio.to_thread(command_line), asyncio.to_thread(data_body)
        )
    assert line_reply.startswith("421 4.4.2"), line_reply
    assert data_reply.startswith("421 4.4.2"), data_reply
    assert 4 < line_s < 8 and 4 < data_s < 8, (line_s, data_s)
    assert h.messages("alice@example.com") == []


# -- item 5: connection limits -------------------------------------------------------------------


async def test_ten_addresses_with_twenty_idle_connections_do_not_lock_out_real_clients(
    tmp_path: Path,
) -> None:
    async with running_smtp(tmp_path / "state") as h:  # the defaults: 200 total, 20 per address

        def run() -> tuple[list[str], dict[str, tuple[int, bytes]]]:
            greetings = []
            for i in range(1, 11):
                for _ in range(20):
                    sock = socket.create_connection(
                        (h.host, h.port), timeout=30, source_address=(f"127.0.0.{i}", 0)
                    )
                    greetings.append(h.track(RawClient(sock)).reply()[:9])
            # A real client from another network still gets in and delivers.
            with smtplib.SMTP(timeout=30, source_address=("127.0.1.1", 0)) as s:
                s.connect(h.host, h.port)
                return greetings, s.sendmail("x@example.net", ["bob@example.com"], MSG)

        greetings, refused = await asyncio.to_thread(run)
        assert refused == {}
        assert len(h.messages("bob@example.com")) == 1
    assert greetings.count("220 mail.") == 50  # smtp.max_connections_per_network
    assert set(greetings) == {"220 mail.", "421 4.7.0"}
