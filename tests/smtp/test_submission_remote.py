"""Submission to the Internet, end to end: smtplib submits over implicit TLS with AUTH, the
outbound queue resolves the recipient's MX in a real nsd (test_remote.py's zones plus a DKIM
key for example.com) and delivers to an aiosmtpd double of a foreign MTA, DKIM-signed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import dkim
import pytest

from mailstack.keys import dkim_public_record
from tests.delivery.test_queue import dnsfunc
from tests.delivery.test_remote import Double, _txt, dkim_key, double, zones
from tests.smtp.test_submission import (
    ALICE,
    BOB,
    PASSWORD,
    Submission,
    message,
    running,
    thread,
)
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external
_fixtures = (double,)  # used by name
SELECTOR = "mailstack"  # DkimConfig's default


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    all_zones = zones()
    all_zones["example.com"] += (
        f"{SELECTOR}._domainkey IN TXT ( {_txt(dkim_public_record(dkim_key()))} )\n"
    )
    server = NsdServer(tmp_path_factory.mktemp("nsd"), all_zones)
    try:
        yield server.start()[1]
    finally:
        server.stop()


@pytest.fixture
async def signing(tmp_path: Path, dns_port: int, double: Double) -> AsyncIterator[Submission]:
    """Submission whose queue resolves through the nsd above, sends to the double, and signs
    with example.com's DKIM key."""
    async with running(
        tmp_path / "state",
        dns={"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
        outbound={"mx_port": double.port},
    ) as h:
        ctx = h.ctx
        assert ctx.queue is not None
        ctx.paths.dkim_dir.mkdir(parents=True, exist_ok=True)
        ctx.paths.dkim_key(SELECTOR, "example.com").write_bytes(dkim_key())
        yield h


async def test_submitted_mail_is_signed_and_delivered_to_the_foreign_mx(
    signing: Submission, dns_port: int, double: Double
) -> None:
    h = signing

    def client() -> dict[str, tuple[int, bytes]]:
        smtp = h.smtps()
        smtp.login(ALICE, PASSWORD)
        refused = smtp.sendmail(ALICE, ["ok@a.test", BOB], message(to="ok@a.test"))
        smtp.quit()
        return refused

    assert await thread(client) == {}
    assert len(h.messages(BOB)) == 1
    await h.queue.run_once()
    (got,) = await asyncio.wait_for(double.wait_for("ok@a.test"), 60)
    assert h.queue.list() == []  # delivered: the entry is gone

    assert got.mail_from == ALICE
    assert got.rcpts == ["ok@a.test"]
    assert got.content.startswith(b"DKIM-Signature:")
    assert dkim.verify(got.content, dnsfunc=dnsfunc(dns_port))
    assert b"d=example.com" in got.content.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    assert b"with ESMTPSA" in got.content
    assert b"(Authenticated sender: alice@example.com)" in got.content
    assert got.content.endswith(b"\r\n\r\nhello there\r\n")


async def test_bdat_message_ending_in_whitespace_without_crlf_verifies_as_relayed(
    signing: Submission, dns_port: int, double: Double
) -> None:
    """BDAT (RFC 3030) lets a message end without CRLF. Canonicalisers differ on such a last
    line's trailing white space (RFC 6376 §3.4.4 is read two ways), so what must hold is that
    the signature verifies on the bytes the foreign MTA actually received."""
    body = b"first line\r\nthe last line ends in white space \t "
    content = (
        b"From: alice@example.com\r\nTo: ok@a.test\r\nSubject: bdat\r\n"
        b"Message-ID: <bdat@example.com>\r\n\r\n" + body
    )
    h = signing

    def client() -> tuple[int, bytes]:
        smtp = h.smtps()
        smtp.login(ALICE, PASSWORD)
        smtp.ehlo()
        assert smtp.has_extn("chunking")
        assert smtp.mail(ALICE)[0] == 250
        assert smtp.rcpt("ok@a.test")[0] == 250
        smtp.putcmd("BDAT", f"{len(content)} LAST")
        smtp.send(content)
        reply = smtp.getreply()
        smtp.quit()
        return reply

    code, text = await thread(client)
    assert code == 250, text
    await h.queue.run_once()
    (got,) = await asyncio.wait_for(double.wait_for("ok@a.test"), 60)

    assert got.content.startswith(b"DKIM-Signature:")
    # DATA ends every message with CRLF before the "." (RFC 5321 §4.1.1.4)
    assert got.content.endswith(body + b"\r\n")
    assert dkim.verify(got.content, dnsfunc=dnsfunc(dns_port))
