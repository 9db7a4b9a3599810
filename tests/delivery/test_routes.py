"""Per-destination routes ([outbound] routes, route_credentials) over loopback.

The relay is an aiosmtpd server with STARTTLS (a certificate for "localhost" from a trustme
CA that `[outbound] ca_file` names) and AUTH; mail for other domains still goes to the MX
double of test_remote.py through the real nsd there.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from mailstack.delivery import remote

from mailstack.base.config import config_from_dict
from mailstack.base.errors import ConfigError
from tests.conftest import Cli
from tests.delivery.test_remote import (
    SENDER_DOMAIN,
    Double,
    attempt,
    dns_server,
    double,
    queue_config,
)
from tests.smtp.test_submission import ALICE, message, running, thread
from tests.smtp.test_submission import PASSWORD as ALICE_PW

pytestmark = pytest.mark.external
_fixtures = (dns_server, double)  # used by name

PASSWORD = "s3cret-route-pw"


@dataclass
class Relay:
    """A smarthost: STARTTLS, AUTH PLAIN/LOGIN only inside TLS, records who logged in."""

    ca: trustme.CA
    port: int = 0
    logins: list[str] = field(default_factory=list)
    received: list[tuple[str, list[str], bool]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.received.append(
            (
                envelope.mail_from,
                list(envelope.rcpt_tos),
                server.transport.get_extra_info("ssl_object") is not None,
            )
        )
        return "250 2.0.0 relayed"

    def authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and data == (b"route-user", PASSWORD.encode())
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd answers 535


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    ca = trustme.CA()
    tls = ca.issue_cert("localhost").configure_cert  # type: ignore[attr-defined]
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls(ctx)
    r = Relay(ca)

    def protocol() -> SMTP:
        return SMTP(
            r,
            hostname="relay.test",
            tls_context=ctx,
            require_starttls=True,
            authenticator=r.authenticate,
            auth_require_tls=True,
        )

    server = await asyncio.get_running_loop().create_server(protocol, "127.0.0.1", 0)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def smtps_relay() -> AsyncIterator[Relay]:
    """The same relay on implicit TLS (what port 465 speaks, RFC 8314)."""
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    r = Relay(ca)

    def protocol() -> SMTP:
        # aiosmtpd counts only STARTTLS as TLS for auth_require_tls; this socket is all TLS
        return SMTP(r, hostname="relay.test", authenticator=r.authenticate, auth_require_tls=False)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", 0, ssl=ctx)
    r.port = server.sockets[0].getsockname()[1]
    try:
        yield r
    finally:
        server.close()
        await server.wait_closed()


async def test_a_route_to_port_465_uses_implicit_tls(
    dns_server: tuple[str, int],
    double: Double,
    smtps_relay: Relay,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The relay cannot listen on 465 in a test: the port that means "implicit TLS" is
    # pointed at the test relay's port instead.
    monkeypatch.setattr(remote, "SUBMISSIONS_PORT", smtps_relay.port)
    config = queue_config(
        dns_server[1],
        double.port,
        routes={"routed.test": f"localhost:{smtps_relay.port}"},
        ca_file=_ca_file(smtps_relay, tmp_path),
        route_credentials=_credentials(tmp_path, smtps_relay),
    )
    (result,) = await asyncio.to_thread(attempt, config, "routed.test", ["bob@routed.test"])
    assert result.kind == "delivered", result.reply
    assert smtps_relay.logins == ["route-user"]
    assert [over_tls for _, _, over_tls in smtps_relay.received] == [True]


def _ca_file(relay: Relay, tmp_path: Path) -> str:
    path = tmp_path / "relay-ca.pem"
    relay.ca.cert_pem.write_to_path(str(path))
    return str(path)


def _credentials(tmp_path: Path, relay: Relay, password: str = PASSWORD, mode: int = 0o600) -> str:
    path = tmp_path / "routes.secret"
    path.write_text(
        f'["localhost:{relay.port}"]\nusername = "route-user"\npassword = "{password}"\n'
    )
    path.chmod(mode)
    return str(path)


async def test_a_route_is_used_for_its_domain_only(
    dns_server: tuple[str, int], double: Double, relay: Relay, tmp_path: Path
) -> None:
    config = queue_config(
        dns_server[1],
        double.port,
        routes={"routed.test": f"localhost:{relay.port}"},
        ca_file=_ca_file(relay, tmp_path),
        route_credentials=_credentials(tmp_path, relay),
    )
    (routed,) = await asyncio.to_thread(attempt, config, "routed.test", ["bob@routed.test"])
    assert routed.kind == "delivered", routed.reply
    assert routed.remote_mta == "localhost"
    assert relay.received == [("alice@sender.test", ["bob@routed.test"], True)]  # inside TLS
    assert relay.logins == ["route-user"]
    assert double.received == []
    # Any other domain still goes to its MX (here the double of a.test), not to the relay.
    (direct,) = await asyncio.to_thread(attempt, config, "a.test", ["ok@a.test"])
    assert (direct.kind, direct.remote_mta) == ("delivered", "mx.a.test")
    assert len(relay.received) == 1
    assert double.to("ok@a.test")


async def test_a_relay_without_a_trusted_certificate_gets_nothing(
    dns_server: tuple[str, int], double: Double, relay: Relay, tmp_path: Path
) -> None:
    # No ca_file: the relay's certificate chains to nothing we trust. The password must not
    # be sent, nor the mail in plain text: it stays queued (temporary).
    config = queue_config(
        dns_server[1],
        double.port,
        routes={"routed.test": f"localhost:{relay.port}"},
        route_credentials=_credentials(tmp_path, relay),
    )
    (result,) = await asyncio.to_thread(attempt, config, "routed.test", ["bob@routed.test"])
    assert (result.kind, result.reply[:9]) == ("temporary", "451 4.4.1"), result.reply
    assert "certificate verify failed" in result.reply
    assert relay.received == [] and relay.logins == []


async def test_a_refused_password_keeps_the_mail_queued(
    dns_server: tuple[str, int], double: Double, relay: Relay, tmp_path: Path
) -> None:
    config = queue_config(
        dns_server[1],
        double.port,
        routes={"routed.test": f"localhost:{relay.port}"},
        ca_file=_ca_file(relay, tmp_path),
        route_credentials=_credentials(tmp_path, relay, password="wrong"),
    )
    (result,) = await asyncio.to_thread(attempt, config, "routed.test", ["bob@routed.test"])
    assert result.kind == "temporary"
    assert "AUTH as route-user refused: 535" in result.reply
    assert "wrong" not in result.reply
    assert relay.received == []


def _base() -> dict[str, Any]:
    return {"server": {"hostname": "mail.sender.test", "domains": [SENDER_DOMAIN]}}


@pytest.mark.parametrize(
    ("outbound", "expected"),
    [
        pytest.param({"routes": {"x.test": "nope"}}, 'outbound.routes."x.test": expected', id="hp"),
        pytest.param({"routes": {"not a domain": "r.test:587"}}, "is not a domain", id="domain"),
        pytest.param(
            {"routes": {"x.test": 587}}, 'outbound.routes."x.test": expected str', id="ty"
        ),
        pytest.param({"routes": ["x.test"]}, "outbound.routes: expected a table", id="list"),
        pytest.param({"mta_sts_port": 0}, "outbound.mta_sts_port: port 0", id="port"),
        pytest.param({"ca_file": "/nonexistent.pem"}, "outbound.ca_file: /nonex", id="ca"),
        pytest.param({"route_credentials": "rel.toml"}, "must be an absolute path", id="rel"),
    ],
)
def test_bad_outbound_keys_are_named(outbound: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({**_base(), "outbound": outbound})
    assert expected in str(err.value)


def test_credentials_file_must_be_private(tmp_path: Path, relay: Relay) -> None:
    loose = _credentials(tmp_path, relay, mode=0o644)
    with pytest.raises(ConfigError) as err:
        config_from_dict({**_base(), "outbound": {"route_credentials": loose}})
    assert "outbound.route_credentials:" in str(err.value)
    assert "chmod 600" in str(err.value)
    assert PASSWORD not in str(err.value)


def test_config_show_never_prints_the_password(
    cli: Cli, deployment_dir: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "routes.secret"
    secret.write_text(f'["relay.example.net:587"]\nusername = "u"\npassword = "{PASSWORD}"\n')
    secret.chmod(0o600)
    config = deployment_dir / "mailstack.toml"
    text = config.read_text()
    text = text.replace(
        "routes = {}", '# routes\nroutes = {"outlook.com" = "relay.example.net:587"}'
    )
    text = text.replace('route_credentials = ""', f'route_credentials = "{secret}"')
    config.write_text(text)
    shown = cli("config", "show")
    assert shown.returncode == 0, shown.stderr
    assert 'routes = {"outlook.com" = "relay.example.net:587"}' in shown.stdout
    assert PASSWORD not in shown.stdout
    assert cli("config", "validate").returncode == 0
    secret.chmod(0o640)
    bad = cli("config", "validate")
    assert bad.returncode == 1
    assert "outbound.route_credentials" in bad.stderr and "Traceback" not in bad.stderr


async def test_submitted_mail_takes_the_route_end_to_end(
    dns_server: tuple[str, int], double: Double, relay: Relay, tmp_path: Path
) -> None:
    # Submission (465, AUTH) -> the outbound queue -> the route's relay (STARTTLS, AUTH):
    # what serve does, in this test's loop.

    outbound = {
        "mx_port": double.port,
        "routes": {"routed.test": f"localhost:{relay.port}"},
        "ca_file": _ca_file(relay, tmp_path),
        "route_credentials": _credentials(tmp_path, relay),
    }
    async with running(
        tmp_path / "state",
        dns={"resolver": f"127.0.0.1:{dns_server[1]}", "timeout_s": 5.0},
        outbound=outbound,
    ) as h:

        def client() -> dict[str, tuple[int, bytes]]:
            smtp = h.smtps()
            smtp.login(ALICE, ALICE_PW)
            refused = smtp.sendmail(
                ALICE, ["bob@routed.test", "ok@a.test"], message(to="bob@routed.test")
            )
            smtp.quit()
            return refused

        assert await thread(client) == {}
        await h.queue.run_once()
        assert h.queue.list() == []
    assert [(f, r) for f, r, _ in relay.received] == [(ALICE, ["bob@routed.test"])]
    assert relay.logins == ["route-user"]
    assert [r.rcpts for r in double.received] == [["ok@a.test"]]
