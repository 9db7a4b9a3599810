"""Removing a hosted domain: `mailstack domain del` and the admin page's button, one library
call (mailstack.init.remove_domain) with the same refusals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Cli
from tests.web.stack import ADMIN, ADMIN_PASSWORD, WebStack, make_deployment
from tests.web.test_pages_http import Browser


def test_domain_del_refuses_while_addresses_remain(cli: Cli, deployment_dir: Path) -> None:
    assert cli("domain", "add", "example.net").returncode == 0
    zone = deployment_dir / "dns/example.net.zone"
    assert zone.exists()
    assert (
        cli("user", "add", "x@example.net", "--password-stdin", input="pw x 123456\n").returncode
        == 0
    )
    assert cli("alias", "add", "@example.net", "x@example.net").returncode == 0
    done = cli("domain", "del", "example.net")
    assert done.returncode == 1
    assert "error: domain example.net still has 1 user(s) and 1 alias(es)" in done.stderr
    assert "mailstack user del" in done.stderr
    assert cli("user", "del", "x@example.net").returncode == 0  # takes its alias targets along
    done = cli("domain", "del", "Example.NET.")
    assert done.returncode == 0, done.stderr
    assert "no longer hosting example.net" in done.stdout
    assert not zone.exists()
    assert (deployment_dir / "dkim/test.example.net.key").exists()  # kept for a re-add
    assert "example.net" not in cli("domain", "list").stdout.split()
    assert cli("user", "add", "y@example.net").returncode == 1  # no longer hosted


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("example.com", "is in mailstack.toml (server.domains)"),
        ("nothere.test", "domain nothere.test is not hosted here"),
    ],
)
def test_domain_del_refusals(cli: Cli, deployment_dir: Path, name: str, message: str) -> None:
    done = cli("domain", "del", name)
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr


@pytest.fixture
def stack(web_dir: Path) -> Iterator[WebStack]:
    make_deployment(web_dir)
    with WebStack(web_dir) as running:
        yield running


async def test_the_admin_page_adds_and_removes_a_domain(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(ADMIN, ADMIN_PASSWORD)
        token = await b.csrf("/admin")
        await b.post("/admin/domains/add", csrf=token, domain="example.net")
        text = (await b.get("/admin"))[1]
        assert 'aria-label="Stop hosting example.net"' in text
        assert 'aria-label="Stop hosting example.com"' not in text  # the config's: no button
        await b.post("/admin/domains/delete", csrf=token, domain="example.com")
        assert "is in mailstack.toml" in (await b.get("/admin"))[1]
        status, location, _ = await b.post(
            "/admin/domains/delete", csrf=token, domain="example.net"
        )
        assert (status, location) == (303, "/admin")
        text = (await b.get("/admin"))[1]
        assert "No longer hosting example.net" in text
        assert "example.net" not in stack.accounts.domains()
