"""Web logins outlive a restart of `serve` (web-sessions.sqlite3) and still end on logout,
`user passwd` and `user del` from the CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import yarl

from tests.conftest import run_cli
from tests.web.stack import ADMIN, ADMIN_PASSWORD, USER, USER_PASSWORD, WebStack, make_deployment
from tests.web.test_pages_http import Browser

COOKIE = "__Host-mailstack"


@pytest.fixture
def root(web_dir: Path) -> Path:
    make_deployment(web_dir)
    return web_dir


def _cookie(b: Browser) -> str:
    return {c.key: c.value for c in b.jar}[COOKIE]


def _carry(b: Browser, cookie: str) -> None:
    b.jar.update_cookies({COOKIE: cookie}, response_url=yarl.URL(b.stack.url))


async def test_a_login_survives_a_restart_and_logout_still_ends_it(root: Path) -> None:
    with WebStack(root) as stack:
        async with Browser(stack) as b:
            assert (await b.log_in(ADMIN, ADMIN_PASSWORD))[0] == 303
            cookie = _cookie(b)
            token = await b.csrf("/admin")
    with WebStack(root) as stack:
        async with Browser(stack) as b:
            _carry(b, cookie)
            status, text = await b.get("/admin")
            assert status == 200, text
            # The CSRF token of the page loaded before the restart still works.
            status, location, _ = await b.post(
                "/admin/users/add", csrf=token, address="eve@example.com", password=""
            )
            assert (status, location) == (303, "/admin")
            assert stack.accounts.get_user("eve@example.com") is not None
            assert (await b.post("/logout", csrf=token))[:2] == (303, "/login")
    with WebStack(root) as stack:
        async with Browser(stack) as b:
            _carry(b, cookie)
            assert (await b.get("/admin"))[0] == 303  # logged out stays logged out


async def test_user_passwd_and_user_del_end_web_logins_even_across_a_restart(
    root: Path,
) -> None:
    with WebStack(root) as stack:
        async with Browser(stack) as user, Browser(stack) as admin:
            await user.log_in(USER, USER_PASSWORD)
            await admin.log_in(ADMIN, ADMIN_PASSWORD)
            user_cookie, admin_cookie = _cookie(user), _cookie(admin)
    done = run_cli(root, "user", "passwd", USER, "--password-stdin", input="a new password 9\n")
    assert done.returncode == 0, done.stderr
    with WebStack(root) as stack:
        async with Browser(stack) as user, Browser(stack) as admin:
            _carry(user, user_cookie)
            _carry(admin, admin_cookie)
            assert (await user.get("/account"))[0] == 303  # the new password ended it
            assert (await admin.get("/admin"))[0] == 200  # another account's login lives on
            # While serve runs: the CLI changes the password again, the next request is out.
            await user.log_in(USER, "a new password 9")
            assert (await user.get("/account"))[0] == 200
            done = run_cli(
                root, "user", "passwd", USER, "--password-stdin", input="and another one 9\n"
            )
            assert done.returncode == 0, done.stderr
            assert (await user.get("/account"))[0] == 303
            await user.log_in(USER, "and another one 9")
            assert (await user.get("/account"))[0] == 200
            assert run_cli(root, "user", "del", USER).returncode == 0
            assert (await user.get("/account"))[0] == 303


async def test_an_admin_deleting_an_account_ends_its_stored_logins(root: Path) -> None:
    def stored(address: str) -> int:
        with sqlite3.connect(root / "web-sessions.sqlite3") as db:
            query = "SELECT count(*) FROM sessions WHERE address=?"
            return int(db.execute(query, (address,)).fetchone()[0])

    with WebStack(root) as stack:
        async with Browser(stack) as user, Browser(stack) as admin:
            await user.log_in(USER, USER_PASSWORD)
            await admin.log_in(ADMIN, ADMIN_PASSWORD)
            assert stored(USER) == 1
            token = await admin.csrf("/admin")
            status, _, _ = await admin.post("/admin/users/delete", csrf=token, address=USER)
            assert status == 303
            assert "Deleted alice@example.com." in (await admin.get("/admin"))[1]
            assert stored(USER) == 0  # at once, not at the user's next click
            assert (await user.get("/account"))[0] == 303
