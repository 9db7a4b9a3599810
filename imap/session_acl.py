"""The ACL commands of RFC 4314: GETACL, SETACL, DELETEACL, LISTRIGHTS, MYRIGHTS. A mixin of
`Session`.

Rights are read and written in the folder's dovecot-acl file (delivery/acl.py) through the
route the shared store gives a name (imap/shared.py), so they work on personal folders and on
shared folders the user administers (right `a`); writes go through the registry of shared
folders (delivery/acl_registry.py), so the grantee's next LIST, in any process, sees them. On
the wire an `owner` entry is shown under the owner's address and `user=ADDRESS` as the
address, as Dovecot shows them; `anyone` and `authenticated` as they are. SETACL to an
identifier that is no account (or one of those two) is refused: a typo must not create an
entry that grants nobody anything silently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from mailstack.delivery import acl
from mailstack.imap import commands as c
from mailstack.imap import response
from mailstack.imap.session_base import RefusedError, SessionCore, Write, checked_name
from mailstack.imap.shared import Route, SharedStore

from mailstack.base.errors import UsageError
from mailstack.base.users import normalize_address

# RFC 4314 §3.7 LISTRIGHTS: nothing is always granted; every right can be given on its own.
_OPTIONAL = " ".join(acl.ALL_RIGHTS)


class AclCommands(SessionCore):
    """GETACL, SETACL, DELETEACL, LISTRIGHTS, MYRIGHTS."""

    def _shared(self) -> SharedStore:
        store = self.ctx.store
        if not isinstance(store, SharedStore):  # pragma: no cover - ImapService wraps it
            raise RefusedError("ACLs are not available here", "CANNOT")
        return store

    def _route(self, name: str) -> Route:
        route = self._shared().route(self._require_user(), checked_name(name))
        folder_dir = self._folder_dir(route)
        if not (folder_dir / "cur").is_dir():
            raise RefusedError(f"no mailbox {name}", "NONEXISTENT")
        return route

    def _folder_dir(self, route: Route) -> Path:
        return acl.folder_dir(self.ctx.paths.maildir(route.owner), route.folder)

    def _identifier(self, route: Route, name: str) -> str:
        """The dovecot-acl identifier of an IMAP identifier."""
        if name.lower() in (acl.ANYONE, acl.AUTHENTICATED):
            return name.lower()
        try:
            address = normalize_address(name)
        except UsageError:
            raise RefusedError(f"{name} is not an account", "CANNOT") from None
        if address == route.owner:
            return acl.OWNER
        if self.ctx.accounts.get_user(address) is None:
            raise RefusedError(f"{name} is not an account", "CANNOT")
        return f"user={address}"

    def _wire_name(self, route: Route, identifier: str) -> str:
        if identifier == acl.OWNER:
            return route.owner
        return identifier[5:] if identifier.startswith("user=") else identifier

    async def _acl_command(self, command: c.Command, write: Write) -> None:
        tag = command.tag
        match command:
            case c.MyRights(mailbox=name):
                route = await asyncio.to_thread(self._route, name)
                line = (
                    b"MYRIGHTS " + self._mailbox_out(name) + b" " + response.astring(route.rights)
                )
                await write(response.untagged(line))
                await write(response.ok(tag, "MYRIGHTS completed"))
            case c.GetAcl(mailbox=name):
                route = await asyncio.to_thread(self._route, name)
                self._need_admin(route)
                entries = await asyncio.to_thread(acl.read_acl, self._folder_dir(route))
                if entries is None:  # the no-file default, spelled out
                    entries = [acl.Entry(acl.OWNER, acl.ALL_RIGHTS)]
                parts = [b"ACL", self._mailbox_out(name)]
                for e in entries:
                    if e.rights is not None:
                        parts += [
                            response.astring(self._wire_name(route, e.identifier)),
                            response.astring(e.rights),
                        ]
                await write(response.untagged(b" ".join(parts)))
                await write(response.ok(tag, "GETACL completed"))
            case c.ListRights(mailbox=name, identifier=who):
                route = await asyncio.to_thread(self._route, name)
                self._need_admin(route)
                self._identifier(route, who)
                line = b" ".join(
                    [b"LISTRIGHTS", self._mailbox_out(name), response.astring(who), b'""']
                )
                await write(response.untagged(line + b" " + _OPTIONAL.encode()))
                await write(response.ok(tag, "LISTRIGHTS completed"))
            case c.SetAcl(mailbox=name, identifier=who, rights=text):
                route = await asyncio.to_thread(self._route, name)
                self._need_admin(route)
                identifier = self._identifier(route, who)
                await asyncio.to_thread(self._set, route, identifier, text)
                await asyncio.to_thread(self._touch_views, identifier)
                await write(response.ok(tag, "SETACL completed"))
            case c.DeleteAcl(mailbox=name, identifier=who):
                route = await asyncio.to_thread(self._route, name)
                self._need_admin(route)
                identifier = self._identifier(route, who)
                await asyncio.to_thread(self._set_rights, route, identifier, "")
                await asyncio.to_thread(self._touch_views, identifier)
                await write(response.ok(tag, "DELETEACL completed"))

    def _touch_views(self, identifier: str) -> None:
        """Tell the grantees' NOTIFY sessions, in every `serve` process, that what is shared
        with them changed (delivery/acl.py `touch_views`, RFC 5465 §5.4)."""
        if identifier == acl.OWNER:
            return
        if identifier.startswith("user="):
            addresses = [identifier[5:]]
        else:  # anyone, authenticated
            addresses = [user.address for user in self.ctx.accounts.users()]
        acl.touch_views(self.ctx.paths.maildir(a) for a in addresses)

    @staticmethod
    def _need_admin(route: Route) -> None:
        if "a" not in route.rights:
            raise RefusedError(f"no right to administer {route.visible} (needs a)", "NOPERM")

    def _set(self, route: Route, identifier: str, text: str) -> None:
        """RFC 4314 §3.1: "+" adds, "-" removes, otherwise replaces."""
        mode, letters = (text[0], text[1:]) if text[:1] in ("+", "-") else ("", text)
        try:
            wanted = acl.parse_rights(letters, allow_obsolete=True)
        except UsageError as exc:
            raise RefusedError(exc.message, "CANNOT") from None
        directory = self._folder_dir(route)
        entries = acl.read_acl(directory)
        if entries is None:  # the no-file default: the owner has everything
            current = set(acl.ALL_RIGHTS) if identifier == acl.OWNER else set()
        else:
            current = next(
                (set(e.rights) for e in entries if e.identifier == identifier and e.rights),
                set(),
            )
        if mode == "+":
            current |= set(wanted)
        elif mode == "-":
            current -= set(wanted)
        else:
            current = set(wanted)
        self._set_rights(route, identifier, "".join(ch for ch in acl.ALL_RIGHTS if ch in current))

    def _set_rights(self, route: Route, identifier: str, rights: str) -> None:
        """Write the folder's file and the registry of shared folders (what LIST looks at)."""
        self._shared().acls.set_rights(route.owner, route.folder, identifier, rights)
