"""A forged Authentication-Results naming our host with a trailing dot is removed (issue 10 item
8): smtplib -> the real MX with the real verifier -> Maildir, DNS from real nsd."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mailstack.smtp.inbound_auth import InboundVerifier

from tests.smtp.authzones import build_zones, make_key, message, sign
from tests.smtp.test_inbound_auth_smtp import RCPT, send, verifier_config
from tests.support import nsd
from tests.support.nsd import NsdFactory
from tests.support.smtpserver import HOSTNAME, running_smtp

pytestmark = pytest.mark.external
nsd_server = nsd.nsd_server  # the fixture, by name


@pytest.mark.parametrize("claimed", [f"{HOSTNAME}.", f"{HOSTNAME.upper()}.", f'"{HOSTNAME}."'])
async def test_forged_results_with_a_trailing_dot_are_removed(
    nsd_server: NsdFactory, tmp_path: Path, claimed: str
) -> None:
    keys = make_key(), make_key()
    host, port = nsd_server(build_zones(*keys))
    dns = {"resolver": f"{host}:{port}", "timeout_s": 2.0}
    verify = InboundVerifier(verifier_config(dns))
    async with running_smtp(tmp_path / "state", dns=dns, verify=verify) as harness:
        forged = f"Authentication-Results: {claimed}; dmarc=pass header.from=bank.example\r\n"
        signed = sign(message("news@example.net", extra_headers=forged), keys[0], "example.net")
        await asyncio.to_thread(send, harness, "news@example.net", signed, "127.0.0.9")
        (stored,) = harness.messages(RCPT)
    head = stored.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    assert b"bank.example" not in head
    assert head.count(b"Authentication-Results:") == 1  # ours
