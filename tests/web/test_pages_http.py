"""The web pages over real HTTPS with an HTTP client: cookies, CSRF refusal, roles, the
throttle shared with IMAP, password change and auto-reply storage (tests/web/stack.py runs
the pages beside IMAP and SMTP on one loop, as serve does)."""

from __future__ import annotations

import asyncio
import imaplib
import json
import plistlib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import scramp
import yarl

from tests.conftest import run_cli
from tests.web.stack import ADMIN, ADMIN_PASSWORD, USER, USER_PASSWORD, WebStack, make_deployment

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# One line of the admin page's recent events: (kind, text).
EVENT = re.compile(
    r'<li class="(\w+)"><time [^>]*>[^<]*</time> <span class="kind">\w+</span> ([^<]*)</li>'
)


@pytest.fixture
def stack(web_dir: Path) -> Iterator[WebStack]:
    make_deployment(web_dir)
    with WebStack(web_dir) as running:
        yield running


class Browser:
    """An HTTP client with a cookie jar, as a browser would keep it."""

    def __init__(self, stack: WebStack) -> None:
        self.stack = stack
        # unsafe=True: keep cookies of an IP-address host (127.0.0.1).
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.http = aiohttp.ClientSession(
            base_url=stack.url,
            cookie_jar=self.jar,
            connector=aiohttp.TCPConnector(ssl=stack.client_tls()),
        )

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(path, allow_redirects=False) as r:
            return r.status, await r.text()

    async def csrf(self, path: str = "/login") -> str:
        status, text = await self.get(path)
        assert status == 200, (path, status)
        m = _CSRF.search(text)
        assert m is not None, text
        return m[1]

    async def post(self, path: str, **form: str) -> tuple[int, str, str]:
        async with self.http.post(path, data=form, allow_redirects=False) as r:
            return r.status, r.headers.get("Location", ""), await r.text()

    async def log_in(self, address: str, password: str) -> tuple[int, str, str]:
        token = await self.csrf("/login")
        return await self.post("/login", csrf=token, address=address, password=password)


async def test_login_sets_a_secure_cookie_and_a_new_session(stack: WebStack) -> None:
    async with Browser(stack) as b:
        async with b.http.get("/login") as r:
            cookie = r.headers["Set-Cookie"]
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
        assert cookie.startswith("__Host-mailstack=")
        for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/"):
            assert flag in cookie, flag
        before = {c.key: c.value for c in b.jar}["__Host-mailstack"]
        status, location, _ = await b.log_in(ADMIN, ADMIN_PASSWORD)
        assert (status, location) == (303, "/")
        after = {c.key: c.value for c in b.jar}["__Host-mailstack"]
        assert after != before  # no session fixation: the login gets a fresh token
        assert (await b.get("/"))[0] == 303
        status, text = await b.get("/admin")
        assert status == 200
        assert "<h1>Server status</h1>" in text


async def test_a_wrong_password_is_refused(stack: WebStack) -> None:
    async with Browser(stack) as b:
        status, _, text = await b.log_in(USER, "not the password")
        assert status == 401
        assert "Wrong address or password." in text
        assert (await b.get("/account"))[0] == 303  # still not logged in


async def test_a_post_without_the_right_csrf_token_changes_nothing(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(ADMIN, ADMIN_PASSWORD)
        token = await b.csrf("/admin")
        form = {"address": "eve@example.com", "password": "eve password 1"}
        for bad in ({"csrf": token[:-2] + "xx"}, {}, {"csrf": ""}):
            status, _, text = await b.post("/admin/users/add", **form, **bad)
            assert status == 403, bad
            assert "Form expired" in text
        assert stack.accounts.get_user("eve@example.com") is None
        status, location, _ = await b.post("/admin/users/add", **form, csrf=token)
        assert (status, location) == (303, "/admin")
        assert stack.accounts.get_user("eve@example.com") is not None


async def test_the_login_form_needs_its_csrf_token_too(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.csrf("/login")  # a session, but its token is not sent
        status, _, _ = await b.post("/login", address=ADMIN, password=ADMIN_PASSWORD)
        assert status == 403
        assert (await b.get("/admin"))[0] == 303


async def test_a_user_is_no_admin_and_a_visitor_is_sent_to_log_in(stack: WebStack) -> None:
    async with Browser(stack) as b:
        assert (await b.get("/account"))[0] == 303
        assert (await b.get("/admin"))[0] == 303
        await b.log_in(USER, USER_PASSWORD)
        status, text = await b.get("/admin")
        assert status == 403
        assert "Not an administrator" in text
        token = await b.csrf("/account")
        status, _, _ = await b.post("/admin/users/add", csrf=token, address="x@example.com")
        assert status == 403
        assert (await b.get("/account"))[0] == 200


async def test_logout_ends_the_session_on_the_server(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(USER, USER_PASSWORD)
        cookie = {c.key: c.value for c in b.jar}["__Host-mailstack"]
        token = await b.csrf("/account")
        status, location, _ = await b.post("/logout", csrf=token)
        assert (status, location) == (303, "/login")
    async with Browser(stack) as replay:  # the old cookie, sent again by someone who kept it
        replay.jar.update_cookies({"__Host-mailstack": cookie}, response_url=yarl.URL(stack.url))
        assert (await replay.get("/account"))[0] == 303


async def test_bad_web_logins_throttle_the_web_and_imap_alike(stack: WebStack) -> None:
    """[auth] free_failures = 2, lockout_failures = 4 (tests/web/stack.py)."""
    async with Browser(stack) as b:
        started = time.monotonic()
        for _ in range(4):
            status, _, _ = await b.log_in(USER, "a wrong guess")
            assert status == 401
        assert time.monotonic() - started >= 1.5  # the 3rd and 4th waited 1 s each
        status, _, text = await b.log_in(USER, USER_PASSWORD)  # right, but locked out
        assert status == 429
        assert "Too many failed logins" in text
    answer = await _imap_login(stack, USER, USER_PASSWORD)
    assert answer != "OK"  # the same network is refused on IMAP too
    assert await _imap_login(stack, ADMIN, ADMIN_PASSWORD) == "OK"  # another account is not


async def test_bad_imap_logins_throttle_the_web_login(stack: WebStack) -> None:
    for _ in range(4):
        assert await _imap_login(stack, USER, "a wrong guess") != "OK"
    async with Browser(stack) as b:
        status, _, _ = await b.log_in(USER, USER_PASSWORD)
        assert status == 429


async def _imap_login(stack: WebStack, address: str, password: str) -> str:
    import asyncio

    return await asyncio.to_thread(stack.imap_login, address, password)


def _scram_login(stack: WebStack, address: str, password: str) -> str:
    """IMAPS AUTHENTICATE SCRAM-SHA-256 (scramp's client): 'OK', or the server's NO text."""
    client = scramp.ScramClient(["SCRAM-SHA-256"], address, password)
    answers = iter(
        [
            lambda _: client.get_client_first().encode(),
            lambda c: (client.set_server_first(c.decode()), client.get_client_final().encode())[1],
            lambda c: (client.set_server_final(c.decode()), b"")[1],
        ]
    )
    tls = stack.client_tls()
    with imaplib.IMAP4_SSL("127.0.0.1", stack.port("imaps"), ssl_context=tls) as imap:
        try:
            imap.authenticate("SCRAM-SHA-256", lambda c: next(answers)(c))
        except imaplib.IMAP4.error as exc:
            return str(exc)
        imap.logout()
        return "OK"


async def test_changing_the_password_applies_to_imap_and_ends_other_sessions(
    stack: WebStack,
) -> None:
    async with Browser(stack) as other:
        await other.log_in(USER, USER_PASSWORD)
        async with Browser(stack) as b:
            await b.log_in(USER, USER_PASSWORD)
            token = await b.csrf("/account")
            new = "a new password 2"
            for old, pw, confirm, error in (
                ("wrong", new, new, "the current password is wrong"),
                (USER_PASSWORD, "short", "short", "at least 10 characters"),
                (USER_PASSWORD, new, new + "x", "the two new passwords differ"),
            ):
                status, location, _ = await b.post(
                    "/account/password",
                    csrf=token,
                    old_password=old,
                    new_password=pw,
                    confirm_password=confirm,
                )
                assert (status, location) == (303, "/account")
                assert error in (await b.get("/account"))[1]
            assert await _imap_login(stack, USER, USER_PASSWORD) == "OK"
            await b.post(
                "/account/password",
                csrf=token,
                old_password=USER_PASSWORD,
                new_password=new,
                confirm_password=new,
            )
            assert "Password changed." in (await b.get("/account"))[1]
            assert await _imap_login(stack, USER, new) == "OK"
            assert await _imap_login(stack, USER, USER_PASSWORD) != "OK"
            # The page's change wrote the new SCRAM keys too (mailstack/base/users.py).
            scram = await asyncio.to_thread(_scram_login, stack, USER, new)
            assert scram == "OK"
            scram = await asyncio.to_thread(_scram_login, stack, USER, USER_PASSWORD)
            assert "AUTHENTICATIONFAILED" in scram
        assert (await other.get("/account"))[0] == 303  # the other browser was logged out


async def test_the_auto_reply_is_stored_in_the_maildir(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(USER, USER_PASSWORD)
        token = await b.csrf("/account")
        status, _, _ = await b.post(
            "/account/vacation", csrf=token, enabled="on", subject="Away", body="", days="7"
        )
        assert status == 303
        assert "an auto-reply needs a message" in (await b.get("/account"))[1]
        await b.post(
            "/account/vacation",
            csrf=token,
            enabled="on",
            subject="Away <b>now</b>",
            body="Back on Monday.",
            days="3",
        )
        text = (await b.get("/account"))[1]
        assert "Auto-reply saved (on)." in text
        assert "Away &lt;b&gt;now&lt;/b&gt;" in text  # escaped, never markup
    saved = json.loads((stack.root / "mail/example.com/alice/mailstack-vacation.json").read_text())
    assert saved == {
        "enabled": True,
        "subject": "Away <b>now</b>",
        "body": "Back on Monday.",
        "days": 3,
    }


async def test_admin_forms_report_library_errors_on_the_page(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(ADMIN, ADMIN_PASSWORD)
        token = await b.csrf("/admin")
        cases = [
            ("/admin/users/add", {"address": "x@elsewhere.test"}, "mailstack domain add"),
            (
                "/admin/aliases/add",
                {"address": "a@example.com", "targets": "typo@exmaple.com"},
                "--external",
            ),
            (
                "/admin/aliases/add",
                {"address": "b@example.com", "targets": "nobody@example.com"},
                "does not exist",
            ),
            ("/admin/users/delete", {"address": ADMIN}, "cannot delete your own account"),
            ("/admin/domains/add", {"domain": "not a domain"}, "is not a domain name"),
        ]
        for path, form, message in cases:
            status, location, _ = await b.post(path, csrf=token, **form)
            assert (status, location) == (303, "/admin"), path
            assert message in (await b.get("/admin"))[1], path
        await b.post(
            "/admin/aliases/add", csrf=token, address="team@example.com", targets=f"{USER} {ADMIN}"
        )
        await b.post("/admin/domains/add", csrf=token, domain="example.net")
        text = (await b.get("/admin"))[1]
        assert f"team@example.com -&gt; {ADMIN}, {USER}" in text
        assert "Now hosting example.net" in text
        assert "example.net" in stack.accounts.domains()
        assert (stack.root / "dkim/test.example.net.key").exists()


def _send(stack: WebStack, rcpt: str) -> str:
    """One message to our MX on loopback; '' when accepted, else the refusal."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", stack.port("smtp"), timeout=30) as smtp:
        try:
            smtp.sendmail("sender@example.org", [rcpt], b"Subject: hi\r\n\r\nhello\r\n")
        except smtplib.SMTPRecipientsRefused as exc:
            return str(exc)
    return ""


async def test_the_admin_page_shows_listeners_deliveries_and_rejections(stack: WebStack) -> None:
    import asyncio

    assert await asyncio.to_thread(_send, stack, USER) == ""
    assert "550" in await asyncio.to_thread(_send, stack, "nobody@example.com")
    async with Browser(stack) as b:
        await b.log_in(ADMIN, ADMIN_PASSWORD)
        status, text = await b.get("/admin")
    assert status == 200
    assert "serve      running (pid" in text
    for service in ("smtp", "submission", "submissions", "imap", "imaps"):
        port = stack.port(service)
        assert f'<td>{service}</td><td>127.0.0.1:{port}</td><td class="ok">accepting' in text
    events = EVENT.findall(text)
    assert any(kind == "delivered" and USER in line for kind, line in events), events
    assert any(kind == "rejected" and "nobody@example.com" in line for kind, line in events)
    # The user's storage grew by the message, as `user list` would show it.
    assert re.search(rf"<td>{re.escape(USER)}</td>\s*<td>\d+ B \(0%\)</td>", text)


async def test_deleting_an_account_ends_its_web_login(stack: WebStack) -> None:
    async with Browser(stack) as b:
        await b.log_in(USER, USER_PASSWORD)
        assert (await b.get("/account"))[0] == 200
        done = run_cli(stack.root, "user", "del", USER)  # the CLI, beside the running serve
        assert done.returncode == 0, done.stderr
        status, _ = await b.get("/account")
        assert status == 303
        assert (await b.get("/login"))[0] == 200


async def test_a_user_downloads_their_own_apple_profile_from_their_page(stack: WebStack) -> None:
    async with Browser(stack) as b:
        async with b.http.get("/account/mobileconfig", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/login")  # login first
        await b.log_in(USER, USER_PASSWORD)
        status, text = await b.get("/account")
        assert status == 200
        assert 'href="/account/mobileconfig" download' in text
        async with b.http.get("/account/mobileconfig", allow_redirects=False) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/x-apple-aspen-config"
            assert f'filename="{USER}.mobileconfig"' in r.headers["Content-Disposition"]
            body = await r.read()
    profile = plistlib.loads(body)
    (account,) = profile["PayloadContent"]
    assert account["EmailAddress"] == USER
    assert account["IncomingMailServerUsername"] == USER
    assert not {"IncomingPassword", "OutgoingPassword"} & account.keys()  # the device asks
    assert USER_PASSWORD.encode() not in body
