"""The submission checks, ready for when submission lands.

`mailstack check` skips them while `mailstack.app._resolve("submission")` is None (asserted
in test_check_live). Here the same code runs against aiosmtpd test doubles of a *foreign*
submission server (STARTTLS on one port, implicit TLS on another), so the checks are proven
against a real protocol implementation now, both the good and the bad configuration.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from mailstack.base.config import load_config
from mailstack.base.paths import StatePaths
from mailstack.checks import Status
from mailstack.checks.listeners import check_submission
from tests.checks.conftest import free_ports, set_listen


class Sink:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"


def deny_all(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
    return AuthResult(success=False)


def server_tls(root: Path) -> ssl.SSLContext:
    paths = StatePaths(root)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(paths.tls_cert, paths.tls_key)
    return ctx


@pytest.fixture
def doubles(deployment_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """587 (STARTTLS) and 465 (implicit TLS) doubles; param: does 587 require TLS for AUTH?"""
    auth_require_tls: bool = request.param
    starttls_port, tls_port = free_ports(2)
    common: dict[str, Any] = {
        "hostname": "127.0.0.1",
        "server_hostname": "mail.example.com",
        "authenticator": deny_all,
    }
    submission = Controller(
        Sink(),
        port=starttls_port,
        tls_context=server_tls(deployment_dir),
        auth_require_tls=auth_require_tls,
        **common,
    )
    submissions = Controller(
        Sink(), port=tls_port, ssl_context=server_tls(deployment_dir), **common
    )
    submission.start()
    submissions.start()
    try:
        set_listen(deployment_dir, "submission", f'["127.0.0.1:{starttls_port}"]')
        set_listen(deployment_dir, "submissions", f'["127.0.0.1:{tls_port}"]')
        yield deployment_dir
    finally:
        submission.stop()
        submissions.stop()


def run(root: Path) -> dict[str, tuple[Status, str, str | None]]:
    cfg = load_config(StatePaths(root).config)
    return {
        f.id: (f.status, f.message, f.fix) for f in check_submission(cfg, StatePaths(root), 10.0)
    }


@pytest.mark.parametrize("doubles", [True], indirect=True)
def test_tls_first_submission_passes(doubles: Path) -> None:
    found = run(doubles)
    assert {k: v[0] for k, v in found.items()} == {
        "submission.starttls": Status.PASS,
        "submission.auth": Status.PASS,
        "submission.tls": Status.PASS,
    }
    assert "AUTH before TLS is refused (538)" in found["submission.auth"][1]


@pytest.mark.parametrize("doubles", [False], indirect=True)
def test_auth_offered_in_clear_text_fails(doubles: Path) -> None:
    found = run(doubles)
    status, message, fix = found["submission.auth"]
    assert status is Status.FAIL
    assert message.endswith(
        "AUTH is offered before STARTTLS: passwords could cross the network in clear text"
    )
    assert fix == "offer AUTH only after STARTTLS (RFC 6409, RFC 8314)"
    assert found["submission.starttls"][0] is Status.PASS
