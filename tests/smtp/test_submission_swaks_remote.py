"""swaks, as the README shows it, through 587 (STARTTLS) and 465 (implicit TLS) to a remote
domain: the queue delivers to the foreign MX double over nsd's MX records, DKIM-signed, and
dkimpy verifies the signature against the key nsd publishes. The queue list names the user.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import dkim
import pytest

from tests.delivery.test_queue import dnsfunc
from tests.delivery.test_remote import Double, double
from tests.smtp.test_submission import ALICE, PASSWORD, running
from tests.smtp.test_submission_remote import SELECTOR, dkim_key, dns_port

pytestmark = pytest.mark.external
_fixtures = (double, dns_port)  # used by name


@pytest.mark.parametrize("implicit", [False, True], ids=["587-starttls", "465-tls"])
async def test_swaks_to_a_remote_domain_arrives_signed(
    tmp_path: Path, dns_port: int, double: Double, implicit: bool
) -> None:
    assert shutil.which("swaks"), "swaks is not installed; scripts/test installs it"
    async with running(
        tmp_path / "state",
        dns={"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
        outbound={"mx_port": double.port},
    ) as h:
        h.ctx.paths.dkim_dir.mkdir(parents=True, exist_ok=True)
        h.ctx.paths.dkim_key(SELECTOR, "example.com").write_bytes(dkim_key())
        port = h.tls_port if implicit else h.port
        proc = await asyncio.create_subprocess_exec(
            "swaks",
            "--server", f"127.0.0.1:{port}",
            "--tlsc" if implicit else "--tls",
            "--tls-verify",
            "--tls-ca-path", str(h.ctx.paths.ca_cert),
            "--auth", "PLAIN",
            "--auth-user", ALICE,
            "--auth-password", PASSWORD,
            "--from", ALICE,
            "--to", "ok@a.test",
            "--ehlo", "client.example.net",
            "--header", "Subject: swaks to the world",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await proc.communicate()
        assert proc.returncode == 0, out.decode()
        assert h.ctx.queue is not None
        (entry,) = h.ctx.queue.list()
        assert entry.user == ALICE
        await h.ctx.queue.run_once()
        (got,) = await asyncio.wait_for(double.wait_for("ok@a.test"), 60)
    assert got.content.startswith(b"DKIM-Signature:")
    assert dkim.verify(got.content, dnsfunc=dnsfunc(dns_port))
    assert b"Subject: swaks to the world" in got.content
