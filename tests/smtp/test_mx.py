"""The MX over real loopback sockets: smtplib (in threads) and raw sockets against start_smtp."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import shutil
import smtplib
import ssl
from email import message_from_bytes
from pathlib import Path

import pytest
from mailstack.delivery.maildir import MaildirStore
from mailstack.smtp.replies import Reply
from mailstack.smtp.verdict import Disposition, EnvelopeInfo, SessionInfo, Verdict

from mailstack.base.users import Accounts
from tests.support.nsd import NsdFactory, nsd_server  # noqa: F401  (fixture)
from tests.support.smtpserver import (
    HOSTNAME,
    SMALL_QUOTA_USER,
    RawClient,
    SmtpHarness,
    running_smtp,
)

MSG = b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: test\r\n\r\nHello.\r\n"


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def body_of(stored: bytes) -> bytes:
    """What follows the three trace fields the receiver prepends (Return-Path, Delivered-To,
    Received with its continuation lines)."""
    lines = stored.split(b"\n")
    assert lines[0].startswith(b"Return-Path: ")
    assert lines[1].startswith(b"Delivered-To: ")
    assert lines[2].startswith(b"Received: ")
    i = 3
    while lines[i].startswith(b"\t"):
        i += 1
    return b"\n".join(lines[i:])


def smtp_send(
    h: SmtpHarness,
    rcpts: list[str],
    msg: bytes = MSG,
    mail_from: str = "x@example.net",
    **kwargs: object,
) -> dict[str, tuple[int, bytes]]:
    with smtplib.SMTP(h.host, h.port, local_hostname="client.example.net", timeout=30) as s:
        return s.sendmail(mail_from, rcpts, msg, **kwargs)  # type: ignore[arg-type]


def rcpt_reply(h: SmtpHarness, rcpt: str) -> tuple[int, bytes]:
    with smtplib.SMTP(h.host, h.port, local_hostname="client.example.net", timeout=30) as s:
        s.ehlo()
        s.mail("x@example.net")
        return s.rcpt(rcpt)


# -- recipient policy ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rcpt", "code", "text"),
    [
        ("alice@example.com", 250, b"2.1.5"),
        ("Alice@EXAMPLE.com", 250, b"2.1.5"),
        ("alice+news@example.com", 250, b"2.1.5"),
        ("team@example.com", 250, b"2.1.5"),
        ("anything@example.org", 250, b"2.1.5"),  # catch-all
        ("nobody@example.com", 550, b"5.1.1"),
        ("someone@gmail.com", 554, b"5.7.1 Relaying denied"),
        ("someone@example.com.evil.test", 554, b"5.7.1"),
    ],
)
async def test_recipient_policy(mx: SmtpHarness, rcpt: str, code: int, text: bytes) -> None:
    got_code, got_text = await asyncio.to_thread(rcpt_reply, mx, rcpt)
    assert got_code == code
    assert got_text.startswith(text)


async def test_account_changes_reach_rcpt_at_once(mx: SmtpHarness) -> None:
    # RCPT answers repeat recipients from a cache; a change committed by anyone else (here a
    # second connection to users.sqlite3, as the CLI makes) must be seen by the next RCPT.
    other = Accounts(mx.ctx.accounts.path)
    try:
        for _ in range(2):  # the second answer comes from the cache
            assert (await asyncio.to_thread(rcpt_reply, mx, "carol@example.com"))[0] == 550
        other.add_user("carol@example.com", "pw-carol-1234")
        assert (await asyncio.to_thread(rcpt_reply, mx, "carol@example.com"))[0] == 250
        assert (await asyncio.to_thread(rcpt_reply, mx, "carol@example.com"))[0] == 250
        other.delete_user("carol@example.com")
        assert (await asyncio.to_thread(rcpt_reply, mx, "carol@example.com"))[0] == 550
        assert (await asyncio.to_thread(rcpt_reply, mx, "crew@example.com"))[0] == 550
        other.add_alias("crew@example.com", ["alice@example.com"])
        assert (await asyncio.to_thread(rcpt_reply, mx, "crew@example.com"))[0] == 250
    finally:
        other.close()


async def test_known_user_gets_the_message_with_trace_headers(mx: SmtpHarness) -> None:
    assert await asyncio.to_thread(smtp_send, mx, ["alice@example.com"]) == {}
    (stored,) = mx.messages("alice@example.com")
    msg = message_from_bytes(stored)
    assert msg["Return-Path"] == "<x@example.net>"
    assert msg["Delivered-To"] == "alice@example.com"
    received = " ".join(msg["Received"].split())
    assert received.startswith("from client.example.net ([127.0.0.1]) by mail.example.com")
    assert "with ESMTP id" in received and "for <alice@example.com>;" in received
    assert body_of(stored) == lf(MSG)


async def test_null_sender_with_parameters(mx: SmtpHarness) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(
            b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\nRCPT TO:<>\r\n"
            b"RCPT TO:<alice@example.com>\r\nDATA\r\n"
        )
        out = c.replies(4)
        c.send(MSG + b".\r\n")
        return [*out, c.reply()]

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["250 2.1.0", "553 5.1.3", "250 2.1.5", "354 End d", "250 2.0.0"]
    assert mx.messages("alice@example.com")[0].startswith(b"Return-Path: <>\n")


async def test_store_failure_is_451_and_nothing_half_written(
    mx: SmtpHarness, caplog: pytest.LogCaptureFixture
) -> None:
    # bob's Maildir vanished under us: the transaction fails with 451 4.3.0 (try later, never
    # a 5xx for our own trouble) and alice's copy, written first, is taken back.
    shutil.rmtree(mx.ctx.paths.maildir("bob@example.com"))
    with pytest.raises(smtplib.SMTPDataError) as exc:
        await asyncio.to_thread(smtp_send, mx, ["alice@example.com", "bob@example.com"])
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (451, b"4.3.0")
    assert mx.messages("alice@example.com") == []
    assert "delivery failed" in caplog.text


async def test_one_log_line_per_transaction_without_body(
    mx: SmtpHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailstack.smtp")
    secret = b"Subject: s\r\n\r\nthe body must never be logged\r\n"
    await asyncio.to_thread(smtp_send, mx, ["alice@example.com", "team@example.com"], secret)
    lines = [
        r for r in caplog.records if r.name == "mailstack.smtp.server" and r.levelno == logging.INFO
    ]
    assert len(lines) == 1
    record = lines[0]
    conn, peer = getattr(record, "conn", None), getattr(record, "peer", None)
    assert record.getMessage() == (
        f"from=<x@example.net> rcpts=<alice@example.com>,"
        f"<team@example.com> size={len(secret)} result=250 2.0.0 OK: "
        f"queued as {conn}.1"
    )
    assert peer == "127.0.0.1"
    assert "never be logged" not in caplog.text
    caplog.clear()
    await asyncio.to_thread(rcpt_reply, mx, "someone@gmail.com")
    assert [r.getMessage() for r in caplog.records if r.name == "mailstack.smtp.server"] == [
        "from=<x@example.net> rcpt=<someone@gmail.com> refused: 554 5.7.1 Relaying denied"
    ]


async def test_multiple_recipients_and_aliases_one_copy_each(mx: SmtpHarness) -> None:
    rcpts = [
        "alice@example.com",
        "team@example.com",
        "alice+x@example.com",
        "bob@example.com",
        "who@example.org",
        "carol@example.org",
    ]
    assert await asyncio.to_thread(smtp_send, mx, rcpts) == {}
    for user in ("alice@example.com", "bob@example.com", "carol@example.org"):
        (stored,) = mx.messages(user)
        assert message_from_bytes(stored)["Delivered-To"] == user
        assert "for <" not in message_from_bytes(stored)["Received"]  # several recipients
        assert body_of(stored) == lf(MSG)


async def test_too_many_recipients(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"max_recipients": 2}) as h:

        def run() -> list[tuple[int, bytes]]:
            with smtplib.SMTP(h.host, h.port, timeout=30) as s:
                s.ehlo("client.example.net")
                s.mail("x@example.net")
                return [
                    s.rcpt(r) for r in ("alice@example.com", "bob@example.com", "carol@example.org")
                ]

        got = await asyncio.to_thread(run)
    assert [c for c, _ in got] == [250, 250, 452]
    assert got[2][1].startswith(b"4.5.3")


async def test_over_quota_at_rcpt_and_at_data_loses_nothing(mx: SmtpHarness) -> None:
    # A message that does not fit: 452 4.2.2 after DATA, nothing stored, the client keeps it.
    big = MSG + (b"x" * 70 + b"\r\n") * 72
    with pytest.raises(smtplib.SMTPDataError) as exc:
        await asyncio.to_thread(smtp_send, mx, [SMALL_QUOTA_USER], big)
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (452, b"4.2.2")
    assert mx.messages(SMALL_QUOTA_USER) == []
    # One that fits is stored; the mailbox is then full and RCPT itself says 452 4.2.2.
    fits = MSG + (b"y" * 70 + b"\r\n") * 40
    assert await asyncio.to_thread(smtp_send, mx, [SMALL_QUOTA_USER], fits) == {}
    # Another writer (an admin's import, Dovecot without its quota plugin) fills it up.
    other = MaildirStore(mx.ctx.paths, hostname="import")
    other.append(SMALL_QUOTA_USER, "INBOX", b"Subject: filler\r\n\r\n" + b"z\r\n" * 1000)
    code, text = await asyncio.to_thread(rcpt_reply, mx, SMALL_QUOTA_USER)
    assert (code, text[:5]) == (452, b"4.2.2")
    assert len(mx.messages(SMALL_QUOTA_USER)) == 2
    (via_smtp,) = [m for m in mx.messages(SMALL_QUOTA_USER) if m.startswith(b"Return-Path")]
    assert body_of(via_smtp) == lf(fits)


async def test_copy_for_a_full_mailbox_fails_the_whole_transaction(mx: SmtpHarness) -> None:
    # alice fits, dave does not: 452 for the transaction and alice's copy is taken back, so the
    # client's retry cannot duplicate it.
    big = MSG + (b"x" * 70 + b"\r\n") * 72
    with pytest.raises(smtplib.SMTPDataError) as exc:
        await asyncio.to_thread(smtp_send, mx, ["alice@example.com", SMALL_QUOTA_USER], big)
    assert exc.value.smtp_code == 452
    assert mx.messages("alice@example.com") == []
    assert mx.messages(SMALL_QUOTA_USER) == []


# -- ESMTP extensions ----------------------------------------------------------------------------


async def test_ehlo_advertises_extensions_and_no_auth(mx: SmtpHarness) -> None:
    def run() -> tuple[list[str], list[str], tuple[int, bytes]]:
        with smtplib.SMTP(mx.host, mx.port, timeout=30) as s:
            s.ehlo("client.example.net")
            before = sorted(s.esmtp_features)
            s.starttls(context=mx.client_tls_context())
            s.ehlo("client.example.net")
            return before, sorted(s.esmtp_features), s.docmd("AUTH", "PLAIN AGFsaWNlAHB3")

    before, after, auth = await asyncio.to_thread(run)
    assert before == [
        "8bitmime",
        "chunking",
        "enhancedstatuscodes",
        "pipelining",
        "size",
        "smtputf8",
        "starttls",
    ]
    assert "auth" not in after and "starttls" not in after
    assert auth[0] == 502 and auth[1].startswith(b"5.5.1")


async def test_pipelined_transactions_answered_in_order(mx: SmtpHarness) -> None:
    def run() -> tuple[list[str], list[str]]:
        c = mx.raw()
        c.send(
            b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\n"
            b"RCPT TO:<nobody@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n"
        )
        first = c.replies(5)
        # The message, its end and the whole next transaction (BDAT can be pipelined) at once.
        two = b"Subject: two\r\n\r\nsecond\r\n"
        c.send(
            b"Subject: one\r\n\r\nfirst\r\n.\r\n"
            b"MAIL FROM:<>\r\nRCPT TO:<carol@example.org>\r\nBDAT %d LAST\r\n%s"
            b"RSET\r\nNOOP\r\nQUIT\r\n" % (len(two), two)
        )
        second = c.replies(7)
        assert c.is_closed()
        return first, second

    first, second = await asyncio.to_thread(run)
    assert [r[:9] for r in first] == [
        "250 2.1.0",
        "250 2.1.5",
        "550 5.1.1",
        "250 2.1.5",
        "354 End d",
    ]
    assert [r[:9] for r in second] == [
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.0.0",
        "221 2.0.0",
    ]
    assert body_of(mx.messages("alice@example.com")[0]) == b"Subject: one\n\nfirst\n"
    assert body_of(mx.messages("bob@example.com")[0]) == b"Subject: one\n\nfirst\n"
    assert body_of(mx.messages("carol@example.org")[0]) == b"Subject: two\n\nsecond\n"


async def test_starttls_then_transaction_verified_against_the_ca(mx: SmtpHarness) -> None:
    def run() -> tuple[str, str]:
        c = mx.raw()
        c.send(b"STARTTLS\r\nNOOP\r\n")  # the pipelined NOOP must be discarded (RFC 3207)
        assert c.reply().startswith("220 2.0.0")
        context = ssl.create_default_context(cafile=str(mx.ctx.paths.ca_cert))
        tls = context.wrap_socket(c.sock, server_hostname=HOSTNAME)  # verifies chain and name
        t = mx.track(RawClient(tls))
        t.send(b"EHLO client.example.net\r\n")
        ehlo = t.reply()
        t.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        assert [r[:3] for r in t.replies(3)] == ["250", "250", "354"]
        t.send(MSG + b".\r\nQUIT\r\n")
        result = t.reply()
        assert t.reply().startswith("221")
        return ehlo, result

    ehlo, result = await asyncio.to_thread(run)
    assert ehlo.startswith("250-mail.example.com") and "STARTTLS" not in ehlo
    assert result.startswith("250 2.0.0")
    received = " ".join(message_from_bytes(mx.messages("alice@example.com")[0])["Received"].split())
    assert "with ESMTPS" in received and "(using TLSv1." in received and "with cipher" in received


async def test_failed_tls_handshake_ends_only_that_session(
    mx: SmtpHarness, caplog: pytest.LogCaptureFixture
) -> None:
    def run() -> bool:
        c = mx.raw()
        c.send(b"STARTTLS\r\n")
        assert c.reply().startswith("220 2.0.0")
        c.send(b"this is not a TLS ClientHello\r\n" * 4)
        return c.is_closed()

    assert await asyncio.to_thread(run)
    assert await asyncio.to_thread(smtp_send, mx, ["alice@example.com"]) == {}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await connections_drop_to(mx, 0)  # the failed session gave its slot back


async def connections_drop_to(h: SmtpHarness, n: int) -> None:
    """Wait (bounded) until the listener counts `n` sessions; fail if it never does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while h.service.open_connections() != n and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert h.service.open_connections() == n


async def test_certificate_reload_applies_to_new_sessions(mx: SmtpHarness) -> None:
    def peer_cert() -> bytes:
        c = mx.raw()
        c.send(b"STARTTLS\r\n")
        assert c.reply().startswith("220 2.0.0")
        tls = mx.client_tls_context().wrap_socket(c.sock, server_hostname=HOSTNAME)
        mx.track(RawClient(tls))
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der

    before = await asyncio.to_thread(peer_cert)
    leaf = mx.ca.issue_cert(HOSTNAME, "127.0.0.1")  # what `tls import` + SIGHUP would do
    leaf.private_key_and_cert_chain_pem.write_to_path(str(mx.ctx.paths.tls_cert))
    leaf.private_key_pem.write_to_path(str(mx.ctx.paths.tls_key))
    mx.ctx.tls.reload()
    after = await asyncio.to_thread(peer_cert)
    assert before != after
    assert after == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


async def test_8bit_and_smtputf8(mx: SmtpHarness) -> None:
    mx.ctx.accounts.add_user("jörg@example.com", "pw")
    mx.ctx.store.create_account("jörg@example.com")
    body = "From: Jörg <jörg@exämple.de>\r\nSubject: Grüße\r\n\r\nÄpfel und Birnen\r\n"
    msg = body.encode("utf-8")

    def run() -> tuple[dict[str, tuple[int, bytes]], tuple[int, bytes]]:
        with smtplib.SMTP(mx.host, mx.port, timeout=30) as s:
            s.ehlo("client.example.net")
            refused = s.sendmail(
                "jörg@exämple.de",
                ["jörg@example.com", "alice@example.com"],
                msg,
                mail_options=["SMTPUTF8", "BODY=8BITMIME"],
            )
            s.mail("x@example.net")
            return refused, s.rcpt("jörg@example.com")  # no SMTPUTF8 in this transaction

    refused, plain = await asyncio.to_thread(run)
    assert refused == {}
    assert plain[0] == 553 and plain[1].startswith(b"5.6.7")
    for user in ("jörg@example.com", "alice@example.com"):
        (stored,) = mx.messages(user)
        assert body_of(stored) == lf(msg)
        assert "with UTF8SMTP id" in stored.decode("utf-8")
        assert stored.decode("utf-8").startswith("Return-Path: <jörg@exämple.de>\n")


async def test_dot_stuffed_lines_survive_byte_exact(mx: SmtpHarness) -> None:
    msg = (
        b"Subject: dots\r\n\r\n.\r\n..\r\n...\r\n.leading\r\n trailing.\r\n. \r\n"
        b"\x80\xff 8-bit bytes\r\nlast line\r\n"
    )
    stuffed = b"\r\n".join((b"." + x if x.startswith(b".") else x) for x in msg.split(b"\r\n"))

    def run() -> str:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net> BODY=8BITMIME\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(stuffed + b".\r\n")
        return c.reply()

    assert (await asyncio.to_thread(run)).startswith("250 2.0.0")
    assert body_of(mx.messages("bob@example.com")[0]) == lf(msg)


async def test_large_message_across_many_reads_is_byte_exact(mx: SmtpHarness) -> None:
    lines = [b"Subject: large", b""]
    for i in range(60_000):  # ~3 MB: many socket reads, dot lines falling on every boundary
        lines.append(b"." * (i % 3) + b"line %d " % i + b"y" * (i % 61))
    msg = b"\r\n".join(lines) + b"\r\n"
    assert await asyncio.to_thread(smtp_send, mx, ["bob@example.com"], msg) == {}
    assert body_of(mx.messages("bob@example.com")[0]) == lf(msg)


async def test_bdat_chunks(mx: SmtpHarness) -> None:
    chunks = [b"Subject: chunked\r\n\r\n", b"line with\r\n.\r\n a dot line\r\n", b"", b"end\r\n"]

    def run() -> list[str]:
        c = mx.raw()
        out = []
        c.send(b"BDAT 5\r\nhello")  # before MAIL: 503, and the 5 octets are not commands
        out.append(c.reply())
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\n")
        out += c.replies(2)
        for chunk in chunks[:-1]:
            c.send(b"BDAT %d\r\n" % len(chunk) + chunk)
            out.append(c.reply())
        c.send(b"DATA\r\n")  # not after BDAT
        out.append(c.reply())
        c.send(b"BDAT %d LAST\r\n" % len(chunks[-1]) + chunks[-1])
        out.append(c.reply())
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.com>\r\nBDAT 0 LAST\r\n")
        out += c.replies(3)
        return out

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == [
        "503 5.5.1",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "250 2.0.0",
        "250 2.0.0",
        "503 5.5.1",
        "250 2.0.0",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
    ]
    assert out[3] == "250 2.0.0 20 octets received"
    assert body_of(mx.messages("alice@example.com")[0]) == lf(b"".join(chunks))
    assert body_of(mx.messages("bob@example.com")[0]) == b""


# -- size, loops, malformed input ----------------------------------------------------------------


async def test_oversize_rejected(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"max_message_size": 1000}) as h:

        def run() -> list[str]:
            c = h.raw()
            out = []
            c.send(b"MAIL FROM:<x@example.net> SIZE=1001\r\n")
            out.append(c.reply())
            c.send(b"MAIL FROM:<x@example.net> SIZE=500\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
            out += c.replies(3)
            c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 20 + b".\r\n")
            out.append(c.reply())
            c.send(
                b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\n"
                b"BDAT 600\r\n"
                + b"y" * 600
                + b"BDAT 600\r\n"
                + b"z" * 600
                + b"BDAT 5 LAST\r\nhello"
            )
            out += c.replies(5)
            c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
            out += c.replies(3)
            c.send(b"Subject: small\r\n\r\nok\r\n.\r\n")
            out.append(c.reply())
            return out

        out = await asyncio.to_thread(run)
        (stored,) = h.messages("alice@example.com")
    assert [r[:9] for r in out] == [
        "552 5.3.4",
        "250 2.1.0",
        "250 2.1.5",
        "354 End d",
        "552 5.3.4",
        "250 2.1.0",
        "250 2.1.5",
        "250 2.0.0",
        "552 5.3.4",
        "503 5.5.1",  # the LAST chunk: the transaction ended with the 552
        "250 2.1.0",
        "250 2.1.5",
        "354 End d",
        "250 2.0.0",
    ]
    assert body_of(stored) == b"Subject: small\n\nok\n"


async def test_overlong_text_line_rejected(mx: SmtpHarness) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        out = c.replies(3)
        c.send(b"Subject: long\r\n\r\n" + b"w" * 1001 + b"\r\n.\r\nNOOP\r\n")
        return [*out, *c.replies(2)]

    out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["250 2.1.0", "250 2.1.5", "354 End d", "500 5.5.2", "250 2.0.0"]
    assert mx.messages("alice@example.com") == []


async def test_received_header_loop(mx: SmtpHarness) -> None:
    hops = b"".join(
        b"Received: from hop%d.example.net by x; Thu, 1 Jan 2026 00:00:00 +0000\r\n" % i
        for i in range(31)
    )
    with pytest.raises(smtplib.SMTPDataError) as exc:
        await asyncio.to_thread(smtp_send, mx, ["alice@example.com"], hops + MSG)
    assert (exc.value.smtp_code, exc.value.smtp_error[:5]) == (554, b"5.4.6")
    assert await asyncio.to_thread(smtp_send, mx, ["alice@example.com"], hops[:-80] + MSG) == {}
    assert len(mx.messages("alice@example.com")) == 1


async def test_malformed_input_rejected_while_another_client_is_served(mx: SmtpHarness) -> None:
    def bad() -> list[str]:
        c = mx.raw()
        out = []
        for line in (
            b"NO\0OP\r\n",
            b"NOOP\n",
            b"X" * 2000 + b"\r\n",
            b"MAIL FROM:<" + b"a" * 600 + b"@example.net>\r\n",
            b"\xff\xfe garbage\r\n",
            b"FOO bar\r\n",
            b"MAIL FROM:<<>>\r\n",
            b"RCPT TO:<alice@example.com>\r\n",
            b"\r\n",
        ):
            c.send(line)
            out.append(c.reply())
        c.send(b"NOOP\r\n")
        out.append(c.reply())
        return out

    served = asyncio.to_thread(smtp_send, mx, ["bob@example.com"])
    out, refused = await asyncio.gather(asyncio.to_thread(bad), served)
    assert refused == {}
    assert [r[:9] for r in out] == [
        "500 5.5.2",
        "500 5.5.2",
        "500 5.5.2",
        "500 5.5.2",
        "500 5.5.2",
        "500 5.5.2",
        "501 5.1.7",
        "503 5.5.1",
        "500 5.5.2",
        "250 2.0.0",
    ]
    assert len(mx.messages("bob@example.com")) == 1


async def test_random_garbage_gets_replies_never_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(5321)
    verbs = [
        b"MAIL FROM:",
        b"RCPT TO:",
        b"EHLO",
        b"HELO",
        b"BDAT",
        b"VRFY",
        b"STARTTLS",
        b"RSET",
        b"DATA",
        b"AUTH",
        b"HELP",
        b"",
    ]
    lines = [
        rng.choice(verbs)
        + bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))
        .replace(b"\n", b"")
        .replace(b"\r", b"")
        + b"\r\n"
        for _ in range(300)
    ]
    lines = [x for x in lines if not x.upper().startswith((b"BDAT", b"DATA", b"STARTTLS"))]
    async with running_smtp(tmp_path, smtp={"max_errors": 1000}) as h:

        def run() -> list[str]:
            c = h.raw()
            out = []
            for line in lines:
                c.send(line)
                out.append(c.reply())
            c.send(b"RSET\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
            out += c.replies(4)
            c.send(MSG + b".\r\n")
            out.append(c.reply())
            # And one that goes away in the middle of a message: the server cleans up.
            d = h.raw()
            d.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
            d.replies(3)
            d.send(b"Subject: half\r\n\r\nhalf a mess")
            d.close()
            return out

        out = await asyncio.to_thread(run)
        await connections_drop_to(h, 1)  # only the first client is still connected
        assert len(h.messages("bob@example.com")) == 1
    assert all(re.match(r"^[2345]\d\d[ -]", r) for r in out)
    assert out[-1].startswith("250 2.0.0")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b"a\n.\nMAIL FROM:<evil@example.net>\nRCPT TO:<bob@example.com>\nDATA\n"
            b"smuggled\n.\n\r\n.\r\n",
            id="lf-dot-lf",
        ),
        pytest.param(
            b"a\r\n.\rMAIL FROM:<evil@example.net>\r\nRCPT TO:<bob@example.com>\r\n"
            b"DATA\r\nsmuggled\r\n.\r\n",
            id="crlf-dot-cr",
        ),
    ],
)
async def test_smtp_smuggling_in_data_refused(mx: SmtpHarness, body: bytes) -> None:
    def run() -> tuple[str, bool]:
        c = mx.raw()
        c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        assert [r[:3] for r in c.replies(3)] == ["250", "250", "354"]
        c.send(b"Subject: s\r\n\r\n" + body)
        reply = c.reply()
        return reply, c.is_closed()

    reply, closed = await asyncio.to_thread(run)
    assert reply.startswith("554 5.5.2")
    assert closed
    assert mx.messages("alice@example.com") == []
    assert mx.messages("bob@example.com") == []


async def test_too_many_errors_disconnects(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"max_errors": 3}) as h:

        def run() -> tuple[list[str], bool]:
            c = h.raw()
            c.send(b"FOO\r\nBAR\r\nBAZ\r\nNOOP\r\n")
            out = c.replies(4)
            return out, c.is_closed()

        out, closed = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]
    assert closed


async def test_invalid_helo_rejected_when_configured(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"reject_invalid_helo": True}) as h:

        def run() -> list[str]:
            c = h.raw(ehlo=None)
            c.reply()
            out = []
            for name in (b"localhost", b"[127.0.0.1]", b"client.example.net", b""):
                c.send(b"EHLO " + name + b"\r\n")
                out.append(c.reply().split("\n")[0])
            c.send(b"HELO bad_name\r\n")
            out.append(c.reply())
            return out

        out = await asyncio.to_thread(run)
    assert [r[:9] for r in out] == ["501 5.5.2", "250-mail.", "250-mail.", "501 5.5.4", "501 5.5.2"]


async def test_per_ip_connection_limit(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"max_connections_per_ip": 2}) as h:

        def run() -> tuple[str, bool, str]:
            first, second = h.raw(ehlo=None), h.raw(ehlo=None)
            assert first.reply().startswith("220") and second.reply().startswith("220")
            third = h.raw(ehlo=None)
            refused = third.reply()
            closed = third.is_closed()
            first.send(b"QUIT\r\n")
            assert first.reply().startswith("221")
            assert first.is_closed()  # the server has closed it and released the slot
            # The release happens in connection_lost, right after the close we just saw; retry
            # a bounded number of times in case our next connect races it.
            for _ in range(50):
                fourth = h.raw(ehlo=None)
                greeting = fourth.reply()
                if greeting.startswith("220"):
                    break
            second.close()
            return refused, closed, greeting

        refused, closed, greeting = await asyncio.to_thread(run)
    assert refused.startswith("421 4.7.0")
    assert closed
    assert greeting.startswith("220 mail.example.com")


async def test_command_timeout(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"command_timeout_s": 1}) as h:

        def run() -> tuple[str, bool]:
            c = h.raw()
            return c.reply(), c.is_closed()  # we send nothing: the server gives up on us

        reply, closed = await asyncio.to_thread(run)
    assert reply.startswith("421 4.4.2")
    assert closed


async def test_data_timeout_and_total_connection_limit(tmp_path: Path) -> None:
    async with running_smtp(tmp_path, smtp={"data_timeout_s": 1, "max_connections": 1}) as h:

        def run() -> tuple[str, str, bool]:
            c = h.raw()
            refused = h.raw(ehlo=None).reply()  # the only slot is taken
            c.send(b"MAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
            c.replies(3)
            c.send(b"Subject: stalled\r\n\r\nand then nothing")
            return refused, c.reply(), c.is_closed()

        refused, reply, closed = await asyncio.to_thread(run)
        assert h.messages("bob@example.com") == []
    assert refused.startswith("421 4.7.0 Too many connections")
    assert reply.startswith("421 4.4.2")
    assert closed


# -- the verification seam -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verdict", "code", "folder"),
    [
        (Verdict(Disposition.JUNK, ("X-Spam: yes",)), 250, "Junk"),
        (
            Verdict(Disposition.DELIVER, ("Authentication-Results: mail.example.com; spf=pass",)),
            250,
            "INBOX",
        ),
        (Verdict(Disposition.REJECT, reply=Reply(550, "5.7.1", "DMARC policy says no")), 550, None),
        (Verdict(Disposition.TEMPFAIL, reply=Reply(451, "4.7.5", "DNS timeout")), 451, None),
        (None, 451, None),  # the verifier raised: 451 4.3.0, never a 5xx
    ],
)
async def test_verifier_verdicts(
    tmp_path: Path, verdict: Verdict | None, code: int, folder: str | None
) -> None:
    seen: list[tuple[SessionInfo, EnvelopeInfo, bytes]] = []

    async def verify(session: SessionInfo, envelope: EnvelopeInfo, message: bytes) -> Verdict:
        seen.append((session, envelope, message))
        if verdict is None:
            raise RuntimeError("boom")
        return verdict

    async with running_smtp(tmp_path, verify=verify) as h:
        error: smtplib.SMTPDataError | None = None
        try:
            await asyncio.to_thread(smtp_send, h, ["alice@example.com"])
        except smtplib.SMTPDataError as exc:
            error = exc
        assert (error.smtp_code if error else 250) == code
        if error is not None and verdict is not None and verdict.reply is not None:
            assert error.smtp_error == f"{verdict.reply.enhanced} {verdict.reply.text}".encode()
        session, envelope, message = seen[0]
        assert (session.helo, session.peer_ip, session.tls_version) == (
            "client.example.net",
            "127.0.0.1",
            None,
        )
        assert envelope.mail_from == "x@example.net"
        assert envelope.rcpt_tos == ("alice@example.com",)
        assert message == MSG
        for name in ("INBOX", "Junk"):
            stored = h.messages("alice@example.com", name)
            if name != folder:
                assert stored == []
                continue
            (one,) = stored
            lines = one.split(b"\n")
            assert lines[2] == verdict.header_lines[0].encode()  # type: ignore[union-attr]
            assert lines[3].startswith(b"Received: ")


async def test_dnsbl_listed_client_refused_at_rcpt(tmp_path: Path, nsd_server: NsdFactory) -> None:  # noqa: F811
    zone = (
        "$ORIGIN bl.test.\n$TTL 60\n"
        "@ IN SOA ns.bl.test. admin.bl.test. 1 3600 600 86400 60\n"
        "@ IN NS ns.bl.test.\nns IN A 127.0.0.1\n"
        "1.0.0.127 IN A 127.0.0.2\n"
    )
    host, port = nsd_server({"bl.test": zone})
    async with running_smtp(
        tmp_path,
        smtp={"dnsbl": ["bl.test", "clean.invalid"]},
        dns={"resolver": f"{host}:{port}", "timeout_s": 2.0},
    ) as h:
        code, text = await asyncio.to_thread(rcpt_reply, h, "alice@example.com")
    assert code == 554
    assert text == b"5.7.1 Service unavailable; client [127.0.0.1] blocked using bl.test"


async def test_dnsbl_refusing_the_query_is_not_a_listing(
    tmp_path: Path,
    nsd_server: NsdFactory,  # noqa: F811
) -> None:
    # Spamhaus answers 127.255.255.x when it refuses a query (through a public resolver, say):
    # taken as a listing, it would refuse every client. check --network uses the same rule.
    zone = (
        "$ORIGIN bl.test.\n$TTL 60\n"
        "@ IN SOA ns.bl.test. admin.bl.test. 1 3600 600 86400 60\n"
        "@ IN NS ns.bl.test.\nns IN A 127.0.0.1\n"
        "1.0.0.127 IN A 127.255.255.254\n"
    )
    host, port = nsd_server({"bl.test": zone})
    async with running_smtp(
        tmp_path,
        smtp={"dnsbl": ["bl.test"]},
        dns={"resolver": f"{host}:{port}", "timeout_s": 2.0},
    ) as h:
        code, _text = await asyncio.to_thread(rcpt_reply, h, "alice@example.com")
    assert code == 250


async def swaks(h: SmtpHarness, *args: str) -> tuple[int, str]:
    """swaks (the Debian package) against the harness's MX: (exit status, its transcript)."""
    proc = await asyncio.create_subprocess_exec(
        "swaks",
        "--server",
        h.host,
        "--port",
        str(h.port),
        "--from",
        "x@example.net",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@pytest.mark.external
def test_swaks_plain_and_pipelined(tmp_path: Path) -> None:
    async def main() -> tuple[list[str], list[bytes]]:
        async with running_smtp(tmp_path) as h:
            outs = []
            for extra in ([], ["--pipeline"]):
                status, out = await swaks(
                    h,
                    "--to",
                    "team@example.com",
                    "--helo",
                    "swaks.example.net",
                    "--body",
                    "Body from swaks\n.dotted line\n",
                    *extra,
                )
                assert status == 0, out
                outs.append(out)
            return outs, h.messages("bob@example.com")

    outs, stored = asyncio.run(main())
    assert all("250 2.0.0 OK: queued as" in out for out in outs)
    assert "PIPELINING" in outs[1]
    assert len(stored) == 2
    assert all(b"\n.dotted line\n" in m for m in stored)
    assert all(b"from swaks.example.net ([127.0.0.1])" in m for m in stored)


@pytest.mark.external
@pytest.mark.parametrize(
    ("rcpt", "expected", "status"),
    [
        ("carol+list@example.org", "<-  250 2.1.5 Recipient OK", 0),
        ("nobody@example.com", "<** 550 5.1.1 No such user here", 24),  # swaks: 24 = RCPT refused
        ("someone@gmail.com", "<** 554 5.7.1 Relaying denied", 24),
    ],
)
def test_swaks_recipient_replies(tmp_path: Path, rcpt: str, expected: str, status: int) -> None:
    async def main() -> tuple[int, str]:
        async with running_smtp(tmp_path) as h:
            return await swaks(h, "--to", rcpt, "--quit-after", "RCPT")

    got_status, out = asyncio.run(main())
    assert expected in out, out
    assert got_status == status


@pytest.mark.external
def test_swaks_starttls_verified_against_the_ca(tmp_path: Path) -> None:
    # swaks's TLS is Net::SSLeay (Debian's libnet-ssleay-perl, installed by scripts/test).
    async def main() -> tuple[str, list[bytes]]:
        async with running_smtp(tmp_path) as h:
            status, out = await swaks(
                h,
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                str(h.ctx.paths.ca_cert),
                "--to",
                "alice@example.com",
                "--helo",
                "swaks.example.net",
                "--body",
                "Body over TLS\n",
            )
            assert status == 0, out
            return out, h.messages("alice@example.com")

    out, stored = asyncio.run(main())
    assert "<-  220 2.0.0" in out  # the reply to STARTTLS
    assert "=== TLS started with cipher TLSv1.3" in out, out
    assert "250 2.0.0 OK: queued as" in out
    assert len(stored) == 1
    received = message_from_bytes(stored[0])["Received"]
    assert "with ESMTPS" in " ".join(received.split()), received  # RFC 3848: ESMTP over TLS
