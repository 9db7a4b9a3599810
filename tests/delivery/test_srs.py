"""SRS (delivery/srs.py, smtp/forwarding.py): the codec's rules, its agreement with the real
postsrsd, and the round trip over loopback: mail an alias forwards outside leaves with an SRS
sender that passes SPF at the next hop (pyspf against nsd), and the bounce to that address
comes back through our MX to the original sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.policy
import os
import shutil
import smtplib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.delivery.srs import MAX_AGE_DAYS, SrsCodec, SrsError, is_srs
from mailstack.smtp.forwarding import read_or_make_secrets
from mailstack.smtp.inbound_auth import AuthDns, check_spf

from mailstack.base.config import DnsConfig
from mailstack.base.dns import make_resolver
from mailstack.base.paths import StatePaths
from tests.support.nsd import NsdServer, _free_port
from tests.support.smtpserver import running_smtp

NOW = 1_800_000_000.0
DAY = 86400.0
CODEC = SrsCodec((b"secret",), "fwd.example")


# -- the codec ---------------------------------------------------------------------------------


def test_srs0_round_trip_and_format() -> None:
    srs = CODEC.forward("alice@example.net", NOW)
    local, _, domain = srs.rpartition("@")
    assert domain == "fwd.example"
    tag, digest, stamp, host, user = local.split("=")
    assert (tag, len(digest), len(stamp), host, user) == ("SRS0", 4, 2, "example.net", "alice")
    assert CODEC.reverse(srs, NOW) == "alice@example.net"
    assert CODEC.reverse(srs.upper(), NOW + 3 * DAY).lower() == "alice@example.net"  # any case


@pytest.mark.parametrize(
    "sender",
    [
        pytest.param("", id="null"),
        pytest.param("bob@fwd.example", id="own-domain"),
        pytest.param("bob@FWD.example", id="own-domain-any-case"),
        pytest.param("nodomain", id="no-at"),
    ],
)
def test_left_alone(sender: str) -> None:
    assert CODEC.forward(sender, NOW) == sender


def test_srs0_of_another_forwarder_becomes_srs1_and_back() -> None:
    first = SrsCodec((b"other",), "hop1.example").forward("alice@example.net", NOW)
    second = CODEC.forward(first, NOW)
    assert second.startswith("SRS1=")
    assert "=hop1.example==" in second
    assert second.endswith("@fwd.example")
    assert CODEC.reverse(second, NOW) == first  # back to the first hop, which reverses it
    third = SrsCodec((b"third",), "hop3.example").forward(second, NOW)
    assert "=hop1.example==" in third  # the first hop stays named, the hash is the new host's
    assert SrsCodec((b"third",), "hop3.example").reverse(third, NOW) == first


@pytest.mark.parametrize(
    ("address", "now", "reason"),
    [
        pytest.param("SRS0=AAAA=JZ=example.net=alice@fwd.example", NOW, "forged", id="bad-hash"),
        pytest.param("SRS0=nV=JZ=example.net=alice@fwd.example", NOW, "too short", id="short"),
        pytest.param("SRS0=x=y@fwd.example", NOW, "malformed", id="too-few-fields"),
        pytest.param("SRS0=AAAA=J!=a=b@fwd.example", NOW, "forged", id="bad-stamp-char"),
        pytest.param("SRS1=AAAA=hop==AAAA=JZ=d=l@fwd.example", NOW, "forged", id="srs1-forged"),
        pytest.param("SRS1=AAAA=hop@fwd.example", NOW, "malformed", id="srs1-short"),
        pytest.param("alice@fwd.example", NOW, "not an SRS", id="plain"),
    ],
)
def test_refused(address: str, now: float, reason: str) -> None:
    with pytest.raises(SrsError, match=reason):
        CODEC.reverse(address, now)


def test_expired_and_future_stamps_refused() -> None:
    srs = CODEC.forward("alice@example.net", NOW)
    assert CODEC.reverse(srs, NOW + MAX_AGE_DAYS * DAY) == "alice@example.net"
    with pytest.raises(SrsError, match="expired"):
        CODEC.reverse(srs, NOW + (MAX_AGE_DAYS + 1) * DAY)
    with pytest.raises(SrsError, match="expired"):
        CODEC.reverse(srs, NOW - 2 * DAY)  # from "the future": a stamp ~1022 days old


def test_every_secret_verifies_the_first_signs() -> None:
    old = CODEC.forward("alice@example.net", NOW)
    rotated = SrsCodec((b"new", b"secret"), "fwd.example")
    assert rotated.reverse(old, NOW) == "alice@example.net"
    assert rotated.forward("alice@example.net", NOW) != old
    with pytest.raises(SrsError):
        CODEC.reverse(rotated.forward("alice@example.net", NOW), NOW)


_LOCAL = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=30)
_DOMAIN = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True)


@given(_LOCAL.filter(lambda s: "@" not in s and not is_srs(s)), _DOMAIN, st.floats(0, 4e9))
@example("a=b", "example.net", NOW)
def test_any_sender_round_trips(local: str, domain: str, now: float) -> None:
    srs = CODEC.forward(f"{local}@{domain}", now)
    assert CODEC.reverse(srs, now + DAY) == f"{local}@{domain}"


@given(st.text(max_size=120))
@example("SRS0=====@x")
@example("SRS1=a=b=@x")
def test_any_text_reverses_or_raises_srs_error(text: str) -> None:
    with contextlib.suppress(SrsError):  # anything else is a bug
        CODEC.reverse(text, NOW)
    with contextlib.suppress(SrsError):
        CODEC.forward(text, NOW)


def test_secret_file_is_made_once_0600(tmp_path: Path) -> None:
    path = tmp_path / "srs.secret"
    first = read_or_make_secrets(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_or_make_secrets(path) == first
    assert len(first) == 1 and len(first[0]) >= 32
    assert list(tmp_path.iterdir()) == [path]  # no temporary left


# -- the real postsrsd ---------------------------------------------------------------------------


@pytest.fixture
def postsrsd(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """postsrsd for fwd.example with CODEC's secret: (forward port, reverse port)."""
    binary = shutil.which("postsrsd") or "/usr/sbin/postsrsd"
    if not Path(binary).exists():
        pytest.fail("postsrsd is not installed (scripts/test installs it)")
    (tmp_path / "secret").write_bytes(CODEC.secrets[0] + b"\n")
    fwd, rev = _free_port(), _free_port()
    cmd = [binary, f"-s{tmp_path / 'secret'}", "-dfwd.example", f"-f{fwd}", f"-r{rev}"]
    log = tmp_path / "postsrsd.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([*cmd, "-l127.0.0.1", "-4"], stderr=err)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", rev), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "postsrsd did not start"
                time.sleep(0.05)
        yield fwd, rev
    finally:
        proc.kill()
        proc.wait(10)


def table(port: int, key: str) -> str:
    """One Postfix tcp_table lookup (what postsrsd answers): '200 value' or an error."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"get {key}\n".encode())
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()


@pytest.mark.external
def test_agrees_with_postsrsd(postsrsd: tuple[int, int]) -> None:
    fwd, rev = postsrsd
    now = time.time()
    for sender in ("alice@example.net", "Bob.Smith@Sub.Example.ORG", "x+tag@b.test"):
        ours = CODEC.forward(sender, now)
        assert table(fwd, sender) == f"200 {ours}"
        assert table(rev, ours) == f"200 {sender}"
        assert table(rev, ours.lower()) == f"200 {sender.lower()}"  # both ignore case
        assert CODEC.reverse(ours.swapcase(), now).lower() == sender.lower()
    srs1 = CODEC.forward(SrsCodec((b"o",), "hop1.example").forward("a@example.net", now), now)
    assert table(rev, srs1) == f"200 {CODEC.reverse(srs1, now)}"  # SRS1 back to the first hop
    forged = "SRS0=AAAA" + CODEC.forward("alice@example.net", now)[9:]
    assert not table(rev, forged).startswith("200")
    with pytest.raises(SrsError):
        CODEC.reverse(forged, now)


# -- over loopback -------------------------------------------------------------------------------


ZONES = {
    # Our domain: its SPF names this host (loopback), as `init` publishes it for the real IP.
    "example.com": """$ORIGIN example.com.
$TTL 60
@ IN SOA ns hostmaster 1 3600 600 86400 60
@ IN NS ns
ns IN A 127.0.0.1
@ IN MX 10 mail
mail IN A 127.0.0.1
@ IN TXT "v=spf1 ip4:127.0.0.1 -all"
""",
    # The original sender's domain and the forward target's: both at the sink (loopback); the
    # sender's SPF allows only its own server, so forwarded mail under its name would fail.
    "test": """$ORIGIN test.
$TTL 60
@ IN SOA ns hostmaster 1 3600 600 86400 60
@ IN NS ns
ns IN A 127.0.0.1
orig IN MX 10 mx.orig
orig IN TXT "v=spf1 ip4:192.0.2.25 -all"
mx.orig IN A 127.0.0.1
far IN MX 10 mx.far
mx.far IN A 127.0.0.1
""",
}


@pytest.fixture(scope="module")
def nsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    server = NsdServer(tmp_path_factory.mktemp("nsd"), ZONES)
    try:
        yield server.start()[1]
    finally:
        server.stop()


@dataclasses.dataclass
class Got:
    mail_from: str
    rcpts: list[str]
    content: bytes


class Sink:
    def __init__(self) -> None:
        self.got: list[Got] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's
        self.got.append(Got(envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 ok"


@pytest.fixture
async def sink() -> AsyncIterator[tuple[Sink, int]]:
    handler = Sink()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(handler, hostname="mx.far.test"), "127.0.0.1", 0
    )
    try:
        yield handler, server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


DSN = (
    "From: MAILER-DAEMON@far.test\r\nTo: {to}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status;"
    ' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nfriend is gone\r\n'
    "--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.far.test\r\n\r\n"
    "Final-Recipient: rfc822; friend@far.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n"
)


@pytest.mark.external
async def test_forward_then_bounce_round_trip(
    tmp_path: Path, nsd: int, sink: tuple[Sink, int]
) -> None:
    handler, sink_port = sink
    resolver = {"resolver": f"127.0.0.1:{nsd}", "timeout_s": 5.0}
    async with running_smtp(tmp_path / "state", queue=True, dns=resolver) as h:
        queue = h.ctx.queue
        assert queue is not None
        outbound = dataclasses.replace(queue.config.outbound, mx_port=sink_port)
        queue.config = dataclasses.replace(queue.config, outbound=outbound)
        h.ctx.accounts.add_alias("fwd@example.com", ["friend@far.test"])

        def send(mail_from: str, rcpt: str, body: str) -> tuple[int, bytes]:
            with smtplib.SMTP(h.host, h.port, timeout=30) as client:
                client.ehlo("mx.orig.test")
                assert client.mail(mail_from)[0] == 250
                code, text = client.rcpt(rcpt)
                if code != 250:
                    return code, text
                return client.data(body.encode())

        message = "From: alice@orig.test\r\nTo: fwd@example.com\r\nSubject: hi\r\n\r\nhello\r\n"
        assert (await asyncio.to_thread(send, "alice@orig.test", "fwd@example.com", message))[
            0
        ] == 250
        await queue.run_once()
        (forwarded,) = handler.got
        srs = forwarded.mail_from
        assert srs.startswith("SRS0=") and srs.endswith("=orig.test=alice@example.com"), srs
        assert forwarded.rcpts == ["friend@far.test"]
        assert b"hello" in forwarded.content

        # The next hop's SPF check: the SRS sender passes, the original would have failed.
        spf_client = AuthDns(make_resolver(DnsConfig(resolver=resolver["resolver"])))
        assert check_spf(spf_client, "127.0.0.1", srs, "mail.example.com").result == "pass"
        assert check_spf(spf_client, "127.0.0.1", "alice@orig.test", "x").result == "fail"

        # The bounce comes back to the SRS address and reaches the original sender.
        dsn = DSN.format(to=srs)
        assert (await asyncio.to_thread(send, "", srs, dsn))[0] == 250
        await queue.run_once()
        bounce = handler.got[1]
        assert (bounce.mail_from, bounce.rcpts) == ("<>", ["alice@orig.test"])  # aiosmtpd: null
        parsed = email.message_from_bytes(bounce.content, policy=email.policy.default)
        assert parsed.get_content_type() == "multipart/report"

        # Forged and expired SRS addresses of ours are refused; the secret is 0600.
        codec = SrsCodec(read_or_make_secrets(h.ctx.paths.srs_secret), "example.com")
        assert h.ctx.paths.srs_secret.stat().st_mode & 0o777 == 0o600
        forged = "SRS0=AAAA" + srs[9:]
        expired = codec.forward("alice@orig.test", time.time() - (MAX_AGE_DAYS + 2) * DAY)
        for address, why in ((forged, b"forged"), (expired, b"expired")):
            code, text = await asyncio.to_thread(send, "", address, dsn)
            assert code == 550 and text.startswith(b"5.7.1 Invalid SRS address") and why in text
        assert len(handler.got) == 2  # nothing more went out


def test_check_flags_a_readable_secret(deployment_dir: Path) -> None:
    """Anyone who can read srs.secret can make our SRS addresses relay for them."""
    from tests.checks.conftest import check

    secret = StatePaths(deployment_dir).srs_secret
    read_or_make_secrets(secret)
    _proc, data = check(deployment_dir, "--only", "files")
    assert all(c["status"] == "pass" for c in data["checks"]), data
    os.chmod(secret, 0o644)
    _proc, data = check(deployment_dir, "--only", "files")
    modes = next(c for c in data["checks"] if c["id"] == "files.modes")
    assert modes["status"] == "fail"
    assert f"{secret} is 0644" in modes["message"]
