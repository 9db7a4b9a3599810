"""Inbound SPF/DKIM/DMARC end to end: smtplib -> the real MX -> Maildir, DNS from real nsd.

The client binds its source address to 127.0.0.2 (authorised by the test SPF records) or
127.0.0.9 (not authorised), so SPF sees the address a real sender would connect from.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest
from mailstack.smtp.inbound_auth import InboundVerifier

from mailstack.base.config import Config, config_from_dict
from tests.smtp.authzones import DkimKey, build_zones, make_key, message, sign
from tests.support import nsd
from tests.support.nsd import NsdFactory
from tests.support.smtpserver import HOSTNAME, SmtpHarness, running_smtp

pytestmark = pytest.mark.external
nsd_server = nsd.nsd_server  # the fixture, by name

RCPT = "alice@example.com"
Keys = tuple[DkimKey, DkimKey]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_key(), make_key()


def verifier_config(dns: dict[str, object], **smtp: object) -> Config:
    return config_from_dict(
        {"server": {"hostname": HOSTNAME, "domains": ["example.com"]}, "dns": dns, "smtp": smtp}
    )


def send(harness: SmtpHarness, mail_from: str, msg: bytes, source_ip: str) -> None:
    with smtplib.SMTP(
        harness.host, harness.port, source_address=(source_ip, 0), timeout=30
    ) as client:
        client.sendmail(mail_from, [RCPT], msg)


async def test_end_to_end_dispositions(nsd_server: NsdFactory, keys: Keys, tmp_path: Path) -> None:
    host, port = nsd_server(build_zones(*keys))
    dns = {"resolver": f"{host}:{port}", "timeout_s": 2.0}
    verify = InboundVerifier(verifier_config(dns))
    async with running_smtp(tmp_path / "state", dns=dns, verify=verify) as harness:
        # 1. Aligned DKIM pass (SPF only softfails from .9): INBOX, with our header on top of
        #    the trace and the forged one gone.
        forged = f"Authentication-Results: {HOSTNAME}; dmarc=pass header.from=bank.example\r\n"
        good = sign(message("news@example.net", extra_headers=forged), keys[0], "example.net")
        await asyncio.to_thread(send, harness, "news@example.net", good, "127.0.0.9")
        (stored,) = harness.messages(RCPT)
        head, _, body = stored.replace(b"\r\n", b"\n").partition(b"\n\n")
        assert body == b"Hi there.\n"
        assert b"bank.example" not in head
        assert head.count(b"Authentication-Results:") == 1
        assert f"Authentication-Results: {HOSTNAME};".encode() in head
        assert b"spf=softfail" in head
        assert b"dkim=pass header.d=example.net" in head
        assert b"dmarc=pass" in head
        assert head.index(b"Authentication-Results:") < head.index(b"Received:")

        # 2. p=quarantine failure (unsigned, SPF softfail): stored in Junk, not INBOX.
        await asyncio.to_thread(
            send,
            harness,
            "news@example.net",
            message("news@example.net", subject="junk me"),
            "127.0.0.9",
        )
        assert len(harness.messages(RCPT)) == 1
        (junk,) = harness.messages(RCPT, "Junk")
        assert b"Subject: junk me" in junk
        assert b"dmarc=fail (p=quarantine)" in junk

        # 3. p=reject failure: 550 5.7.1 on DATA, nothing stored anywhere.
        with pytest.raises(smtplib.SMTPDataError) as refused:
            await asyncio.to_thread(
                send, harness, "ceo@strict.example", message("ceo@strict.example"), "127.0.0.9"
            )
        assert refused.value.smtp_code == 550
        assert refused.value.smtp_error == (
            b"5.7.1 Message rejected: it fails the DMARC policy of strict.example"
        )
        assert len(harness.messages(RCPT)) == 1
        assert len(harness.messages(RCPT, "Junk")) == 1

        # 4. SPF pass from the authorised address aligns for strict.example: delivered.
        await asyncio.to_thread(
            send,
            harness,
            "ceo@strict.example",
            message("ceo@strict.example", subject="spf ok"),
            "127.0.0.2",
        )
        inbox = harness.messages(RCPT)
        assert len(inbox) == 2
        assert b"spf=pass smtp.mailfrom=ceo@strict.example" in inbox[1]

        # 5. The DNS server goes away: 451 4.4.3, the sender will retry; nothing stored.
        nsd_server.last.stop()
        with pytest.raises(smtplib.SMTPDataError) as deferred:
            await asyncio.to_thread(
                send, harness, "other@example.org", message("other@example.org"), "127.0.0.2"
            )
        assert deferred.value.smtp_code == 451
        assert deferred.value.smtp_error[:6] == b"4.4.3 "
        assert len(harness.messages(RCPT)) == 2


async def test_reject_to_junk_setting(nsd_server: NsdFactory, keys: Keys, tmp_path: Path) -> None:
    host, port = nsd_server(build_zones(*keys))
    dns = {"resolver": f"{host}:{port}", "timeout_s": 2.0}
    verify = InboundVerifier(verifier_config(dns, dmarc_reject_to_junk=True))
    async with running_smtp(tmp_path / "state", dns=dns, verify=verify) as harness:
        await asyncio.to_thread(
            send, harness, "ceo@strict.example", message("ceo@strict.example"), "127.0.0.9"
        )
        assert harness.messages(RCPT) == []
        (junk,) = harness.messages(RCPT, "Junk")
        assert b"dmarc=fail (p=reject)" in junk
