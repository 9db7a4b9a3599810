"""delivery.remote against real DNS (nsd on loopback) and real SMTP servers.

Remotes are aiosmtpd servers in the test's loop answering per recipient (doubles of foreign
MTAs: `ok*` 250, `temp*` 451, `perm*` 550, `flaky*` 451 while `double.flaky`, `hang*` waits
at DATA until released), our own MX, and Postfix. Every test domain's MX resolves to
127.0.0.1, so `[outbound] mx_port` picks which server answers; 127.0.0.2 is "a host that is
down" (loopback, nothing listens there).

This module also holds the helpers the queue tests import (`Double`, `ZONES`, `queue_config`).
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.resolver
import pytest
from aiosmtpd.smtp import SMTP
from mailstack.delivery import remote
from mailstack.delivery.remote_session import RcptResult

from mailstack.base.config import Config, config_from_dict
from mailstack.base.dns import make_resolver
from mailstack.keys import dkim_public_record, make_dkim_key
from tests.support import postfix
from tests.support.nsd import NsdServer, _free_port
from tests.support.postfix import MaildirTarget

pytestmark = pytest.mark.external
postfix_instance = postfix.postfix_instance

SENDER_DOMAIN = "sender.test"
SELECTOR = "mailstack"


@functools.cache
def dkim_key() -> bytes:
    return make_dkim_key()


def _txt(value: str) -> str:
    """A TXT value split into <=255-byte strings (RFC 1035 §3.3.14)."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))


def zones() -> dict[str, str]:
    test = f"""$ORIGIN test.
$TTL 60
@ IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60
@ IN NS ns.test.
ns IN A 127.0.0.1
a IN MX 10 mx.a.test.
mx.a IN A 127.0.0.1
b IN MX 10 mx.b.test.
mx.b IN A 127.0.0.1
pf IN MX 10 mx.pf.test.
mx.pf IN A 127.0.0.1
sender IN MX 10 mx.sender.test.
mx.sender IN A 127.0.0.1
{SELECTOR}._domainkey.sender IN TXT ( {_txt(dkim_public_record(dkim_key()))} )
implicit IN A 127.0.0.1
nullmx IN MX 0 .
pref IN MX 20 up.pref.test.
pref IN MX 10 down.pref.test.
down.pref IN A 127.0.0.2
up.pref IN A 127.0.0.1
alldown IN MX 10 down.pref.test.
noaddr IN TXT "no address, no MX"
"""
    example = """$ORIGIN example.com.
$TTL 60
@ IN SOA ns.example.com. hostmaster.example.com. 1 3600 600 86400 60
@ IN NS ns.example.com.
ns IN A 127.0.0.1
@ IN MX 10 mail.example.com.
mail IN A 127.0.0.1
"""
    return {"test": test, "example.com": example}


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """One nsd for the module, serving `zones()` on 127.0.0.1:<port>."""
    server = NsdServer(tmp_path_factory.mktemp("nsd"), zones())
    try:
        yield server.start()
    finally:
        server.stop()


def queue_config(dns_port: int, mx_port: int, **outbound: Any) -> Config:
    return config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": [SENDER_DOMAIN]},
            "dns": {"resolver": f"127.0.0.1:{dns_port}", "timeout_s": 5.0},
            "outbound": {"mx_port": mx_port, **outbound},
        }
    )


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    content: bytes
    mail_options: list[str]


@dataclass
class Double:
    """A foreign MTA whose replies depend on the recipient's local part."""

    received: list[Received] = field(default_factory=list)
    flaky: bool = True
    data_started: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    port: int = 0
    smtputf8: bool = True
    broken_tls: bool = False  # offers STARTTLS with no certificate: every handshake fails

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        local = address.partition("@")[0]
        if local.startswith("temp") or (local.startswith("flaky") and self.flaky):
            return "451 4.7.1 greylisted, try again later"
        if local.startswith("perm"):
            return "550 5.1.1 no such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        # Recorded first: `hang*` is a remote that has stored the message but whose 250 is
        # late (or never arrives, if the client dies meanwhile).
        async with self.changed:
            self.received.append(
                Received(
                    envelope.mail_from,
                    list(envelope.rcpt_tos),
                    envelope.original_content,
                    envelope.mail_options,
                )
            )
            self.changed.notify_all()
        if any(r.startswith("hang") for r in envelope.rcpt_tos):
            self.data_started.set()
            await self.release.wait()
        return "250 2.0.0 queued"

    def to(self, address: str) -> list[Received]:
        return [r for r in self.received if address in r.rcpts]

    async def wait_for(self, address: str, count: int = 1) -> list[Received]:
        async with self.changed:
            await asyncio.wait_for(
                self.changed.wait_for(lambda: len(self.to(address)) >= count), 60
            )
        return self.to(address)


@pytest.fixture
async def double() -> AsyncIterator[Double]:
    d = Double()

    def protocol() -> SMTP:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER) if d.broken_tls else None
        return SMTP(d, hostname="mx.double.test", enable_SMTPUTF8=d.smtputf8, tls_context=tls)

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    d.port = server.sockets[0].getsockname()[1]
    try:
        yield d
    finally:
        d.release.set()
        server.close()
        await server.wait_closed()


def attempt(
    config: Config,
    domain: str,
    rcpts: list[str],
    message: bytes = b"",
    mail_from: str = "alice@sender.test",
) -> list[RcptResult]:
    body = message or b"From: alice@sender.test\r\nSubject: hi\r\n\r\nhello\r\n"
    return remote.deliver(config, domain, mail_from, rcpts, body)


async def test_classifies_each_recipient(dns_server: tuple[str, int], double: Double) -> None:
    config = queue_config(dns_server[1], double.port)
    results = await asyncio.to_thread(
        attempt, config, "a.test", ["ok@a.test", "temp@a.test", "perm@a.test"]
    )
    assert [(r.address, r.kind) for r in results] == [
        ("ok@a.test", "delivered"),
        ("temp@a.test", "temporary"),
        ("perm@a.test", "permanent"),
    ]
    assert results[2].reply == "550 5.1.1 no such user here"
    assert results[0].remote_mta == "mx.a.test"
    (got,) = double.received
    assert got.rcpts == ["ok@a.test"]
    assert b"hello" in got.content


async def test_null_mx_fails_permanently(dns_server: tuple[str, int], double: Double) -> None:
    config = queue_config(dns_server[1], double.port)
    (result,) = await asyncio.to_thread(attempt, config, "nullmx.test", ["x@nullmx.test"])
    assert result.kind == "permanent"
    assert result.reply.startswith("556 5.1.10")
    assert double.received == []


async def test_no_mx_uses_the_domain_itself(dns_server: tuple[str, int], double: Double) -> None:
    config = queue_config(dns_server[1], double.port)
    (result,) = await asyncio.to_thread(attempt, config, "implicit.test", ["ok@implicit.test"])
    assert result.kind == "delivered"
    assert double.to("ok@implicit.test")


@pytest.mark.parametrize(
    ("domain", "kind", "reply"),
    [
        pytest.param("nosuch.test", "permanent", "550 5.1.2", id="nxdomain"),
        pytest.param("noaddr.test", "permanent", "550 5.1.2", id="no-mx-no-address"),
        pytest.param("alldown.test", "temporary", "451 4.4.1", id="every-host-down"),
        pytest.param("a..test", "permanent", "553 5.1.3", id="empty-label"),
        pytest.param("x" * 64 + ".test", "permanent", "553 5.1.3", id="label-too-long"),
    ],
)
async def test_unreachable_domains(
    dns_server: tuple[str, int], double: Double, domain: str, kind: str, reply: str
) -> None:
    config = queue_config(dns_server[1], double.port)
    (result,) = await asyncio.to_thread(attempt, config, domain, [f"ok@{domain}"])
    assert (result.kind, result.reply[:9]) == (kind, reply)
    assert double.received == []


async def test_next_mx_when_the_preferred_one_is_down(
    dns_server: tuple[str, int], double: Double, caplog: pytest.LogCaptureFixture
) -> None:
    config = queue_config(dns_server[1], double.port)
    resolver = make_resolver(config.dns)
    targets = remote.route(config, "pref.test", resolver)
    assert targets == [("down.pref.test", "127.0.0.2"), ("up.pref.test", "127.0.0.1")]
    caplog.set_level("INFO", logger="mailstack.delivery.remote")
    (result,) = await asyncio.to_thread(attempt, config, "pref.test", ["ok@pref.test"])
    assert (result.kind, result.remote_mta) == ("delivered", "up.pref.test")
    assert "down.pref.test[127.0.0.2]" in caplog.text


async def test_dns_down_is_temporary(double: Double) -> None:
    config = queue_config(_free_port(), double.port)  # nothing answers DNS there
    config = config_from_dict(
        {**_as_dict(config), "dns": {"resolver": config.dns.resolver, "timeout_s": 0.5}}
    )
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok@a.test"])
    assert result.kind == "temporary"
    assert result.reply.startswith("451 4.4.3")


async def test_mail_looping_back_to_us_fails(dns_server: tuple[str, int], double: Double) -> None:
    config = config_from_dict(
        {
            **_as_dict(queue_config(dns_server[1], double.port)),
            "server": {"hostname": "mx.a.test", "domains": [SENDER_DOMAIN]},
        }
    )
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok@a.test"])
    assert (result.kind, result.reply[:9]) == ("permanent", "554 5.4.6")
    assert double.received == []


def _as_dict(config: Config) -> dict[str, Any]:
    from mailstack.base.config import config_to_dict

    return config_to_dict(config)


async def test_relay_skips_mx(double: Double) -> None:
    # No resolver at all: a relay is used as given, whatever the recipient domain.
    config = config_from_dict(
        {
            "server": {"hostname": "mail.sender.test", "domains": [SENDER_DOMAIN]},
            "outbound": {"relay": f"127.0.0.1:{double.port}"},
        }
    )
    (result,) = await asyncio.to_thread(attempt, config, "nowhere.invalid", ["ok@nowhere.invalid"])
    assert result.kind == "delivered"
    assert double.to("ok@nowhere.invalid")


async def test_8bit_and_smtputf8(dns_server: tuple[str, int], double: Double) -> None:
    config = queue_config(dns_server[1], double.port)
    body = "From: alice@sender.test\r\nSubject: grüße\r\n\r\nähm\r\n".encode()
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok-jörg@a.test"], body)
    assert result.kind == "delivered", result.reply
    (got,) = double.received
    assert "SMTPUTF8" in got.mail_options
    assert "BODY=8BITMIME" in got.mail_options
    assert "ähm".encode() in got.content
    double.smtputf8 = False
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok-jörg@a.test"], body)
    assert (result.kind, result.reply[:9]) == ("permanent", "553 5.6.7")
    assert len(double.received) == 1
    ascii_body = b"From: alice@sender.test\r\nSubject: plain\r\n\r\nhm\r\n"
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok@a.test"], ascii_body)
    assert result.kind == "delivered", result.reply
    assert "BODY=8BITMIME" not in double.received[-1].mail_options  # 7-bit stays unlabelled


async def test_failed_starttls_falls_back_to_plain_text(
    dns_server: tuple[str, int], double: Double, caplog: pytest.LogCaptureFixture
) -> None:
    double.broken_tls = True
    caplog.set_level("INFO", logger="mailstack.delivery.remote")
    config = queue_config(dns_server[1], double.port)
    (result,) = await asyncio.to_thread(attempt, config, "a.test", ["ok@a.test"])
    assert result.kind == "delivered", result.reply
    assert "TLS handshake failed" in caplog.text
    assert "retrying without TLS" in caplog.text
    assert len(double.to("ok@a.test")) == 1


def test_our_resolver_is_used(dns_server: tuple[str, int]) -> None:
    resolver = make_resolver(queue_config(dns_server[1], 25).dns)
    assert [str(r) for r in resolver.resolve("mx.a.test", "A")] == ["127.0.0.1"]
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("nosuch.test", "MX")


async def test_postfix_as_the_remote(
    dns_server: tuple[str, int], tmp_path: Path, postfix_instance: Any
) -> None:
    # The virtual agent writes as `postfix`: the Maildir base must be reachable by it.
    top = Path(tempfile.mkdtemp(prefix="mailstack-pf-maildirs-"))
    try:
        top.chmod(0o711)
        pf = postfix_instance(maildir=MaildirTarget("pf.test", top / "base", ["ok"]))
        _, port = await asyncio.to_thread(pf.start)
        config = queue_config(dns_server[1], port)
        results = await asyncio.to_thread(
            attempt, config, "pf.test", ["ok@pf.test", "nobody@pf.test"]
        )
        assert [r.kind for r in results] == ["delivered", "permanent"], results
        assert results[1].reply.startswith("550 5.1.1")
        new = top / "base" / "pf.test" / "ok" / "new"
        deadline = time.monotonic() + 60  # Postfix's queue manager delivers after its 250
        while not (new.is_dir() and any(new.iterdir())):
            assert time.monotonic() < deadline, pf.log()
            await asyncio.sleep(0.05)
        (path,) = new.iterdir()
        assert b"hello" in path.read_bytes()
    finally:
        shutil.rmtree(top, ignore_errors=True)
