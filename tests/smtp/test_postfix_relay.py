"""Interop: a real Postfix relays to mailstack, which delivers into the Maildir.

Postfix (an isolated instance: own main.cf/master.cf, queue and data dirs in tmp, listening on
127.0.0.1:<high port>) has `relayhost = [127.0.0.1]:<mailstack port>`. A message submitted to
Postfix with smtplib travels Postfix's queue and SMTP client to our MX. The message carries a
DKIM signature, which must survive Postfix's handling and verify at mailstack (DNS from nsd).
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path

import pytest
from mailstack.smtp.inbound_auth import InboundVerifier

from mailstack.base.config import config_from_dict
from tests.smtp.authzones import build_zones, make_key, message, sign
from tests.support import nsd, postfix
from tests.support.nsd import NsdFactory
from tests.support.postfix import PostfixFactory
from tests.support.smtpserver import HOSTNAME, running_smtp

pytestmark = pytest.mark.external
nsd_server = nsd.nsd_server  # fixtures, by name
postfix_instance = postfix.postfix_instance

RCPT = "alice@example.com"


def submit(host: str, port: int, mail_from: str, rcpts: list[str], msg: bytes) -> None:
    with smtplib.SMTP(host, port, timeout=30) as client:
        client.sendmail(mail_from, rcpts, msg)


async def test_postfix_relays_into_our_maildir(
    nsd_server: NsdFactory, postfix_instance: PostfixFactory, tmp_path: Path
) -> None:
    key = make_key()
    host, port = nsd_server(build_zones(key, make_key()))
    dns = {"resolver": f"{host}:{port}", "timeout_s": 2.0}
    verify = InboundVerifier(
        config_from_dict({"server": {"hostname": HOSTNAME, "domains": ["example.com"]}, "dns": dns})
    )
    async with running_smtp(tmp_path / "state", dns=dns, verify=verify) as harness:
        pf = postfix_instance(relay_to=(harness.host, harness.port))
        pf_host, pf_port = await asyncio.to_thread(pf.start)
        signed = sign(message("news@example.net", subject="via postfix"), key, "example.net")
        with harness.ctx.events.watch(RCPT, "INBOX") as delivered:
            await asyncio.to_thread(submit, pf_host, pf_port, "news@example.net", [RCPT], signed)
            await asyncio.wait_for(delivered.wait(), timeout=60)
        # Stop Postfix while our server still runs, so its SMTP session ends with QUIT.
        await asyncio.to_thread(pf.stop)
        (stored,) = harness.messages(RCPT)
        head, _, body = stored.replace(b"\r\n", b"\n").partition(b"\n\n")
        assert b"Subject: via postfix" in head
        assert body == b"Hi there.\n"
        # Postfix's own Received (by postfix.test) sits below ours (by mail.example.com).
        ours = head.index(f"by {HOSTNAME}".encode())
        theirs = head.index(b"by postfix.test")
        assert ours < theirs
        # The signature survived Postfix; SPF sees Postfix's address (127.0.0.1), which
        # example.net's SPF does not list, so DMARC passes on DKIM alignment alone.
        assert b"dkim=pass header.d=example.net" in head
        assert b"spf=softfail" in head
        assert b"dmarc=pass" in head
        assert "status=sent (250 2.0.0 OK: queued as" in pf.log()
