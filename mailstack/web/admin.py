"""The admin page: the `mailstack status` view of the server, recent deliveries and refusals,
and forms to add and remove users, aliases and domains.

Status comes from mailstack.status.collect (what `mailstack status` prints), accounts change
through the same library calls the CLI makes (mailstack/cli_accounts.py): the same checks, the
same errors (their message and hint are shown on the page), effective at once for IMAP and
SMTP. Only accounts in `[web] admins` get here (Pages.route checks the role).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from mailstack import status as server_status
from mailstack.base.config import format_size, is_fqdn, parse_size
from mailstack.base.errors import MailstackError
from mailstack.base.users import generate_password
from mailstack.web import events
from mailstack.web.pages import Pages, Visit, canonical, form_field, password_problem
from mailstack.web.session import Session

log = logging.getLogger(__name__)


class Admin:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.deps = pages.deps

    async def page(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        from mailstack.init import hosted_domains

        deps = self.deps
        now = time.time()
        state = await asyncio.to_thread(server_status.collect, deps.paths.root, now=now)
        users = await asyncio.to_thread(self._users)
        recent = await asyncio.to_thread(events.latest, deps.paths.events_db)
        return self.pages.render(
            "admin.html",
            session,
            state=state,
            summary=server_status.render(state, now=now),
            users=users,
            aliases=deps.accounts.aliases(),
            domains=hosted_domains(deps.config, deps.accounts),
            config_domains=deps.config.server.domains,
            events=recent,
            now=now,
        )

    def _users(self) -> list[dict[str, Any]]:
        rows = []
        for user in self.deps.accounts.users():
            used = self.deps.store.usage_bytes(user.address)
            quota = user.quota_bytes
            rows.append(
                {
                    "address": user.address,
                    "used": used,
                    "quota": quota,
                    "percent": min(100, round(100 * used / quota)) if quota else None,
                    "enabled": user.enabled,
                }
            )
        return rows

    async def act(self, session: Session, what: str, action: Any, *args: Any) -> web.StreamResponse:
        """Run one library call in a thread; its MailstackError becomes the page's message."""
        try:
            message = await asyncio.to_thread(action, *args)
        except MailstackError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            return self.pages.back(session, "/admin", f"error: {exc.message}{hint}")
        log.info("web: %s by %s: %s", what, session.address, message)
        return self.pages.back(session, "/admin", message)

    # -- users ---------------------------------------------------------------------------------
    async def add_user(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        form = await request.post()
        address, password = form_field(form, "address").strip(), form_field(form, "password")
        quota_text = form_field(form, "quota").strip()
        try:
            quota = parse_size(quota_text) if quota_text else self.deps.config.default_quota_bytes
        except ValueError as exc:
            return self.pages.back(session, "/admin", f"error: quota: {exc}")
        if password and (problem := password_problem(address, password)) is not None:
            return self.pages.back(session, "/admin", f"error: {problem}")
        return await self.act(session, "user add", self._add_user, address, password, quota)

    def _add_user(self, address: str, password: str, quota: int) -> str:
        deps = self.deps
        generated = not password
        password = password or generate_password()
        account = deps.accounts.add_user(address, password, quota_bytes=quota)
        try:
            deps.store.create_account(account.address)
        except BaseException:
            deps.accounts.delete_user(account.address)  # no account without its Maildir
            raise
        shown = "unlimited" if quota == 0 else format_size(quota)
        message = f"Added {account.address} (quota {shown})."
        # Shown once, on the next page only, as `user add` prints it once.
        return message + (f" Its password: {password}" if generated else "")

    async def delete_user(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        form = await request.post()
        address = form_field(form, "address")
        keep_mail = form_field(form, "keep_mail") == "on"
        if self.deps.accounts.get_user(address) is not None and (
            self.deps.accounts.require_user(address).address == session.address
        ):
            return self.pages.back(session, "/admin", "error: you cannot delete your own account")
        response = await self.act(session, "user del", self._delete_user, address, keep_mail)
        # Here on the loop, not in act's thread, which would race requests over the session
        # dict. (Their next request would end them anyway: the account is gone.)
        if self.deps.accounts.get_user(address) is None:
            self.pages.sessions.drop_account(canonical(address))
        return response

    def _delete_user(self, address: str, keep_mail: bool) -> str:
        account = self.deps.accounts.require_user(address)
        self.deps.accounts.delete_user(account.address)
        if not keep_mail:
            self.deps.store.delete_account(account.address)
        return f"Deleted {account.address}" + (" (mail kept)." if keep_mail else ".")

    # -- aliases -------------------------------------------------------------------------------
    async def add_alias(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        form = await request.post()
        address = form_field(form, "address").strip()
        targets = form_field(form, "targets").replace(",", " ").split()
        external = form_field(form, "external") == "on"
        if not targets:
            return self.pages.back(session, "/admin", "error: an alias needs at least one target")
        return await self.act(session, "alias add", self._add_alias, address, targets, external)

    def _add_alias(self, address: str, targets: list[str], external: bool) -> str:
        all_targets = self.deps.accounts.add_alias(
            address, targets, allow_external=external, allow_unknown=False
        )
        return f"Alias {address} -> {', '.join(all_targets)}"

    async def delete_alias(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        form = await request.post()
        address = form_field(form, "address")
        targets = tuple(form_field(form, "target").split())
        return await self.act(session, "alias del", self._delete_alias, address, targets)

    def _delete_alias(self, address: str, targets: tuple[str, ...]) -> str:
        left = self.deps.accounts.delete_alias(address, targets)
        if left:
            return f"Alias {address} -> {', '.join(left)}"
        return f"Deleted alias {address}."

    # -- domains -------------------------------------------------------------------------------
    async def add_domain(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        session = visit.session
        name = form_field(await request.post(), "domain").strip()
        if not is_fqdn(name):
            return self.pages.back(session, "/admin", f"error: {name!r} is not a domain name")
        return await self.act(session, "domain add", self._add_domain, name)

    async def delete_domain(self, request: web.Request, visit: Visit) -> web.StreamResponse:
        name = form_field(await request.post(), "domain").strip()
        return await self.act(visit.session, "domain del", self._delete_domain, name)

    def _delete_domain(self, name: str) -> str:
        from mailstack.init import remove_domain

        removed = remove_domain(self.deps.paths, name)
        return f"No longer hosting {removed}: remove its DNS records."

    def _add_domain(self, name: str) -> str:
        from mailstack.init import add_domain

        add_domain(self.deps.paths, name)
        return f"Now hosting {name}: publish its DNS records (`mailstack dns`)."


def setup(app: web.Application, pages: Pages) -> None:
    admin = Admin(pages)
    r = pages.route
    app.router.add_get("/admin", r(admin.page, role="admin"))
    app.router.add_post("/admin/users/add", r(admin.add_user, role="admin"))
    app.router.add_post("/admin/users/delete", r(admin.delete_user, role="admin"))
    app.router.add_post("/admin/aliases/add", r(admin.add_alias, role="admin"))
    app.router.add_post("/admin/aliases/delete", r(admin.delete_alias, role="admin"))
    app.router.add_post("/admin/domains/add", r(admin.add_domain, role="admin"))
    app.router.add_post("/admin/domains/delete", r(admin.delete_domain, role="admin"))
