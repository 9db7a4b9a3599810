"""The status and self-service pages: login, an account page for every user, an admin page.

Server-rendered HTML from templates/web/pages/ (Jinja with autoescaping), one CSS file, no
JavaScript. Every page goes through `Pages.route`, which finds the visitor's session
(mailstack/web/session.py), refuses a POST whose CSRF token does not match (403), checks the
role, and adds the security headers. Forms answer with a redirect to a page (POST/redirect/GET)
carrying a one-time message, so a reload never repeats an action.

Logins use the one login path of IMAP and SMTP (`deps.logins`, mailstack/base/login.py): the
same throttle, per account and client network, so guessing on the web page slows and locks
out IMAP and submission from that network too, and the other way round.
Who is admin: the accounts listed in `[web] admins`; the admin pages live in
mailstack/web/admin.py.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from jinja2 import Environment, PackageLoader, StrictUndefined

from mailstack.base import vacation
from mailstack.base.config import format_size
from mailstack.base.errors import UsageError
from mailstack.base.login import Outcome
from mailstack.base.users import normalize_address
from mailstack.web.autoconfig import profile_response
from mailstack.web.deps import WebDeps
from mailstack.web.session import COOKIE, Session, SessionStore, is_valid_csrf
from mailstack.web.session_db import SessionDb

log = logging.getLogger(__name__)

Handler = Callable[[web.Request, "Visit"], Awaitable[web.StreamResponse]]
PAGES_KEY = web.AppKey("mailstack_pages", object)

MIN_PASSWORD_CHARS = 10  # NIST SP 800-63B §5.1.1.2 asks for at least 8; we ask a little more
MAX_FIELD_CHARS = 10_000  # no form field needs more (the auto-reply body is the longest)

# No script, no frames, no outside resources; forms post only here (CSP Level 3).
_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",  # pages show account data: never cached
    "Strict-Transport-Security": "max-age=31536000",  # RFC 6797: served over HTTPS only
}


def password_problem(address: str, password: str) -> str | None:
    """Why a new password is refused, or None: long enough, and not the address itself."""
    if len(password) < MIN_PASSWORD_CHARS:
        return f"the new password needs at least {MIN_PASSWORD_CHARS} characters"
    if password.strip().casefold() in {address.casefold(), address.partition("@")[0]}:
        return "the new password may not be your address"
    return None


@dataclass(frozen=True, slots=True)
class Visit:
    """One request's visitor: their session, its cookie token, their address."""

    session: Session
    token: str | None
    ip: str


class Pages:
    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.sessions = SessionStore(
            idle_s=float(deps.config.web.session_idle_s),
            max_age_s=float(deps.config.web.session_max_s),
            db=open_session_db(deps.paths.web_sessions_db),
        )
        self.admins = {canonical(a) for a in deps.config.web.admins}
        self.env = Environment(
            loader=PackageLoader("mailstack.templates", "web/pages"),
            autoescape=True,  # every value shown is escaped: addresses and subjects are input
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["size"] = lambda n: "unlimited" if not n else format_size(int(n))
        self.env.filters["bytes"] = human_bytes
        self.env.filters["utc"] = lambda t, fmt: time.strftime(fmt, time.gmtime(float(t)))
        self.css = resources.files("mailstack.templates").joinpath("web/pages/mailstack.css")

    # -- plumbing ------------------------------------------------------------------------------
    def route(self, handler: Handler, *, role: str | None = None) -> Callable[..., Any]:
        """Wrap a page handler: session, CSRF on POST, role ("user" or "admin"), headers."""

        async def wrapped(request: web.Request) -> web.StreamResponse:
            token = request.cookies.get(COOKIE)
            session = self.sessions.get(token)
            is_new = session is None
            if session is None:
                token, session = self.sessions.new()
            if request.method == "POST":
                form = await request.post()
                csrf = form.get("csrf")
                if is_new or not is_valid_csrf(session, csrf if isinstance(csrf, str) else None):
                    # OWASP CSRF cheat sheet: refuse, change nothing, say why.
                    log.warning("web: %s %s refused: bad CSRF token", request.method, request.path)
                    response: web.StreamResponse = self.render(
                        "error.html",
                        session,
                        status=403,
                        title="Form expired",
                        message="This form is out of date or did not come from this site. "
                        "Reload the page and try again.",
                    )
                    return self._finish(response, token if is_new else None)
            if session.address is not None and not self._still_valid(session):
                # Deleted, disabled or given a new password meanwhile (CLI or another admin):
                # the login ends here, and the account's other ones with it.
                self.sessions.drop_account(session.address)
                token, session = self.sessions.new()
                is_new = True
            if role is not None and session.address is None:
                response = see_other("/login")
            elif role == "admin" and not session.is_admin:
                response = self.render(
                    "error.html",
                    session,
                    status=403,
                    title="Not an administrator",
                    message="This page is for the administrators listed in [web] admins.",
                )
            else:
                try:
                    response = await handler(request, Visit(session, token, _peer_ip(request)))
                except web.HTTPException as exc:  # a redirect to /login, a field too long
                    response = web.Response(
                        status=exc.status, reason=exc.reason, headers=exc.headers, text=exc.text
                    )
            return self._finish(response, token if is_new else None)

        return wrapped

    def _still_valid(self, session: Session) -> bool:
        """Does the session's account still exist, enabled, with the password of the login?
        One indexed SQLite read."""
        address = session.address
        return address is not None and (
            self.deps.accounts.credential_stamp(address) == session.stamp
        )

    def _finish(self, response: web.StreamResponse, new_token: str | None) -> web.StreamResponse:
        if new_token is not None:
            set_session_cookie(response, new_token)
        response.headers.update(_SECURITY_HEADERS)
        return response

    def render(
        self, template: str, session: Session, *, status: int = 200, **context: Any
    ) -> web.Response:
        flash, session.flash = session.flash, []
        html = self.env.get_template(template).render(
            session=session, flash=flash, hostname=self.deps.config.server.hostname, **context
        )
        return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")

    # -- pages ---------------------------------------------------------------------------------
    async def home(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        if session.address is None:
            return see_other("/login")
        return see_other("/admin" if session.is_admin else "/account")

    async def login_form(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        if session.address is not None:
            return see_other("/")
        return self.render("login.html", session, address="", error="")

    async def login(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        form = await request.post()
        address, password = form_field(form, "address"), form_field(form, "password")
        result = await self.deps.logins.login(address, password, visit.ip)
        if result.outcome is Outcome.OK and result.address is not None:
            stamp = await asyncio.to_thread(self.deps.accounts.credential_stamp, result.address)
            token, _ = self.sessions.log_in(
                visit.token,
                result.address,
                is_admin=result.address in self.admins,
                stamp=stamp or "",
            )
            response = see_other("/")
            set_session_cookie(response, token)
            return response
        status, error = {
            Outcome.FAILED: (401, "Wrong address or password."),
            Outcome.THROTTLED: (429, "Too many failed logins from your network. Try later."),
            Outcome.BUSY: (503, "The server is busy. Try again in a moment."),
        }.get(result.outcome, (401, "Wrong address or password."))
        return self.render("login.html", session, status=status, address=address, error=error)

    async def logout(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        self.sessions.drop(visit.token)
        response = see_other("/login")
        response.del_cookie(COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
        return response

    async def account(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        address = _logged_in(session)
        used, settings = await asyncio.gather(
            asyncio.to_thread(self.deps.store.usage_bytes, address),
            asyncio.to_thread(vacation.load, self.deps.paths.maildir(address)),
        )
        quota = self.deps.accounts.quota_bytes(address)
        return self.render(
            "account.html",
            session,
            address=address,
            used=used,
            quota=quota,
            percent=min(100, round(100 * used / quota)) if quota else None,
            vacation=settings,
            max_days=vacation.MAX_DAYS,
        )

    async def change_password(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        address = _logged_in(session)
        form = await request.post()
        old, new = form_field(form, "old_password"), form_field(form, "new_password")
        if new != form_field(form, "confirm_password"):
            return self.back(session, "/account", "error: the two new passwords differ")
        if (problem := password_problem(address, new)) is not None:
            return self.back(session, "/account", f"error: {problem}")
        # The old password goes through the throttled login path: a stolen session cannot
        # be used to guess it faster than a login form.
        result = await self.deps.logins.login(address, old, visit.ip)
        if result.outcome is not Outcome.OK:
            return self.back(session, "/account", "error: the current password is wrong")
        await asyncio.to_thread(self.deps.accounts.set_password, address, new)
        stamp = await asyncio.to_thread(self.deps.accounts.credential_stamp, address)
        self.sessions.restamp(visit.token, stamp or "")
        ended = self.sessions.drop_account(address, keep=visit.token)
        log.info("web: %s changed their password (%d other session(s) ended)", address, ended)
        return self.back(session, "/account", "Password changed.")

    async def set_vacation(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        address = _logged_in(session)
        form = await request.post()
        try:
            days = int(form_field(form, "days") or vacation.DEFAULT_DAYS)
        except ValueError:
            return self.back(session, "/account", "error: days must be a whole number")
        settings = vacation.Vacation(
            enabled=form_field(form, "enabled") == "on",
            subject=form_field(form, "subject").strip(),
            body=form_field(form, "body").replace("\r\n", "\n"),
            days=days,
        )
        if (problem := vacation.validate(settings)) is not None:
            return self.back(session, "/account", f"error: {problem}")
        if not settings.subject:
            settings = replace(settings, subject=vacation.Vacation().subject)
        await asyncio.to_thread(vacation.save, self.deps.paths.maildir(address), settings)
        state = "on" if settings.enabled else "off"
        return self.back(session, "/account", f"Auto-reply saved ({state}).")

    async def apple_profile(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        """The logged-in user's own Apple profile (the same as /mobileconfig?email=)."""
        return profile_response(self.deps.config, _logged_in(visit.session))

    def back(self, session: Session, where: str, message: str) -> web.StreamResponse:
        """Redirect to a page that shows `message` once (POST/redirect/GET)."""
        session.flash.append(message)
        return see_other(where)

    async def stylesheet(self, request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=self.css.read_bytes(),
            content_type="text/css",
            headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
        )


def see_other(location: str) -> web.Response:
    """303: the answer to a form (RFC 9110 §15.4.4): the browser GETs `location`."""
    return web.Response(status=303, headers={"Location": location})


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def set_session_cookie(response: web.StreamResponse, token: str) -> None:
    # No Max-Age: the browser forgets it when it closes; the server ends it earlier anyway.
    response.set_cookie(COOKIE, token, path="/", secure=True, httponly=True, samesite="Strict")


def open_session_db(path: Path) -> SessionDb | None:
    """The stored logins, or None (logins then last until serve stops) if the file is broken."""
    try:
        return SessionDb(path)
    except (sqlite3.Error, OSError) as exc:
        log.warning("web sessions: cannot open %s: %s; logins end when serve stops", path, exc)
        return None


def canonical(address: str) -> str:
    try:
        return normalize_address(address)
    except UsageError:
        return address.strip().lower()


def form_field(form: Any, name: str) -> str:
    value = form.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_FIELD_CHARS:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_FIELD_CHARS, actual_size=len(value))
    return value


def _logged_in(session: Session) -> str:
    if session.address is None:
        raise web.HTTPSeeOther("/login")
    return session.address


def _peer_ip(request: web.Request) -> str:
    # The TCP peer, never a header: X-Forwarded-For would let a guesser pick its throttle key.
    return request.remote or "unknown"


def setup(app: web.Application, deps: WebDeps) -> None:
    """Add the pages to the HTTPS app (called by mailstack.web.app.make_app)."""
    from mailstack.web import admin

    pages = Pages(deps)
    app[PAGES_KEY] = pages
    r = pages.route
    app.router.add_get("/", r(pages.home))
    app.router.add_get("/login", r(pages.login_form))
    app.router.add_post("/login", r(pages.login))
    app.router.add_post("/logout", r(pages.logout, role="user"))
    app.router.add_get("/account", r(pages.account, role="user"))
    app.router.add_post("/account/password", r(pages.change_password, role="user"))
    app.router.add_post("/account/vacation", r(pages.set_vacation, role="user"))
    app.router.add_get("/account/mobileconfig", r(pages.apple_profile, role="user"))
    app.router.add_get("/static/mailstack.css", pages.stylesheet)
    admin.setup(app, pages)

    async def close_sessions(_app: web.Application) -> None:
        if pages.sessions.db is not None:
            pages.sessions.db.close()

    app.on_cleanup.append(close_sessions)
