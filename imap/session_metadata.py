"""GETMETADATA and SETMETADATA (RFC 5464): server and mailbox annotations clients keep settings
in. A mixin of `Session`; storage in delivery/metadata.py.

Whose entry: `/private/...` entries belong to the user who sets them (kept in their own file,
under the name they used for the mailbox, so Bob's private notes on Alice's shared folder are
Bob's); `/shared/...` entries of a folder belong to the folder (kept in its owner's file). On a
shared folder, reading needs the `r` right, setting a private entry `r` and a shared one `w`
(RFC 5464 §3.3 with RFC 4314).

Server entries (mailbox ""): `/shared/admin` is `mailto:postmaster@<first hosted domain>` and
`/shared/comment` absent, both read-only (RFC 5464 §3.2.1); `/private/...` server entries are
the user's own.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from mailstack.delivery import acl
from mailstack.delivery.metadata import Metadata, TooLargeError, TooManyError
from mailstack.imap import commands as c
from mailstack.imap import response
from mailstack.imap.session_base import RefusedError, SessionCore, Write, checked_name
from mailstack.imap.shared import Route, SharedStore

SERVER = ""
_open: dict[Path, Metadata] = {}
_open_lock = threading.Lock()


def metadata_of(maildir: Path) -> Metadata:
    """One `Metadata` per account and process, shared by its sessions."""
    with _open_lock:
        found = _open.get(maildir)
        if found is None:
            found = _open[maildir] = Metadata(maildir)
        return found


class MetadataCommands(SessionCore):
    """GETMETADATA, SETMETADATA."""

    def _meta_route(self, name: str) -> Route | None:
        """None for the server; the folder's route otherwise (it must exist and be readable)."""
        if name == SERVER:
            return None
        user = self._require_user()
        store = self.ctx.store
        name = checked_name(name)
        if isinstance(store, SharedStore):
            route = store.route(user, name)
        else:  # pragma: no cover - ImapService always wraps the store
            route = Route(user, name, acl.ALL_RIGHTS, name)
        if not (acl.folder_dir(self.ctx.paths.maildir(route.owner), route.folder) / "cur").is_dir():
            raise RefusedError(f"no mailbox {name}", "NONEXISTENT")
        return route

    def _server_shared(self) -> dict[str, bytes]:
        domains = sorted(self.ctx.hosted_domains())
        return {"/shared/admin": f"mailto:postmaster@{domains[0]}".encode()} if domains else {}

    def _get_metadata(
        self, name: str, entries: tuple[str, ...], depth: int | None
    ) -> dict[str, bytes]:
        user = self._require_user()
        route = self._meta_route(name)
        if route is not None and "r" not in route.rights:
            raise RefusedError(f"no right to read {name} (needs r)", "NOPERM")
        private = [e for e in entries if e.startswith("/private")]
        shared = [e for e in entries if e.startswith("/shared")]
        out = metadata_of(self.ctx.paths.maildir(user)).get(name, private, depth) if private else {}
        if shared:
            if route is None:
                server = self._server_shared()
                out.update({k: v for k, v in server.items() if _wanted(k, shared, depth)})
            else:
                owner = metadata_of(self.ctx.paths.maildir(route.owner))
                out.update(owner.get(route.folder, shared, depth))
        return out

    def _set_metadata(self, name: str, values: tuple[tuple[str, bytes | None], ...]) -> None:
        user = self._require_user()
        route = self._meta_route(name)
        private = {e: v for e, v in values if e.startswith("/private")}
        shared = {e: v for e, v in values if e.startswith("/shared")}
        if route is not None:
            route.need("r", "annotate")
        if shared and route is None:
            raise RefusedError("server /shared entries are set by the administrator", "NOPERM")
        if shared and route is not None:
            route.need("w", "set shared annotations")
        try:
            if private:
                metadata_of(self.ctx.paths.maildir(user)).set(name, private)
            if shared and route is not None:
                metadata_of(self.ctx.paths.maildir(route.owner)).set(route.folder, shared)
        except TooManyError:
            raise RefusedError("too many annotations on this mailbox", "METADATA TOOMANY") from None
        except TooLargeError as exc:
            raise RefusedError("annotation too large", f"METADATA MAXSIZE {exc}") from None

    async def _metadata_command(self, command: c.Command, write: Write) -> None:
        match command:
            case c.GetMetadata(mailbox=name, entries=entries, maxsize=maxsize, depth=depth):
                found = await asyncio.to_thread(self._get_metadata, name, entries, depth)
                longest = 0
                parts: list[bytes] = []
                for entry, value in sorted(found.items()):
                    if maxsize is not None and len(value) > maxsize:
                        longest = max(longest, len(value))  # RFC 5464 §4.2.1: LONGENTRIES
                        continue
                    parts += [response.astring(entry), response.string(value)]
                if parts:
                    line = b"METADATA " + self._mailbox_out(name) + b" (" + b" ".join(parts) + b")"
                    await write(response.untagged(line))
                code = f"METADATA LONGENTRIES {longest}" if longest else None
                await write(response.ok(command.tag, "GETMETADATA completed", code))
            case c.SetMetadata(mailbox=name, values=values):
                await asyncio.to_thread(self._set_metadata, name, values)
                await write(response.ok(command.tag, "SETMETADATA completed"))

    def _metadata_renamed(self, old: str, new: str) -> None:
        """RENAME of one of the user's folders carries its annotations (RFC 5464 §3.2)."""
        metadata_of(self.ctx.paths.maildir(self._require_user())).rename(old, new, ".")

    def _metadata_deleted(self, name: str) -> None:
        metadata_of(self.ctx.paths.maildir(self._require_user())).drop(name)


def _wanted(entry: str, asked: list[str], depth: int | None) -> bool:
    for a in asked:
        if entry == a:
            return True
        if depth != 0 and entry.startswith(a + "/"):
            rest = entry[len(a) + 1 :]
            if depth is None or "/" not in rest:
                return True
    return False
