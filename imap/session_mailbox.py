"""Mailbox commands of the authenticated state: SELECT/EXAMINE, CREATE, DELETE, RENAME,
(UN)SUBSCRIBE, LIST/LSUB (RFC 9051 §6.3, LIST-EXTENDED 5258, LIST-STATUS 5819, SPECIAL-USE
6154, CHILDREN 3348), STATUS and APPEND (UIDPLUS 4315). A mixin of `Session`.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import cast

from mailstack.delivery.store import (
    HIERARCHY_DELIMITER,
    INBOX,
    FolderInfo,
    FolderNotFoundError,
    FolderSnapshot,
    MessageRef,
    SpecialUse,
    StoreError,
)
from mailstack.imap import binary, catenate, condstore, response
from mailstack.imap import commands as c
from mailstack.imap.message_list import MessageList
from mailstack.imap.protocol import State, list_pattern
from mailstack.imap.sequence import compress_ordered
from mailstack.imap.session_base import (
    SYSTEM_FLAGS,
    InvalidCommandError,
    RefusedError,
    Selected,
    SelectionLostError,
    SessionCore,
    Write,
    checked_name,
    storable,
)
from mailstack.imap.shared import OTHER_DELIMITER, SharedStore, delimiter_of

from mailstack.base.flags import Flag


class MailboxCommands(SessionCore):
    """SELECT, CREATE, DELETE, RENAME, (UN)SUBSCRIBE, LIST, LSUB, STATUS, APPEND."""

    async def _mailbox_command(self, command: c.Command, write: Write) -> None:
        user = self._require_user()
        store = self.ctx.store
        tag = command.tag
        match command:
            case c.Select(mailbox=name, readonly=readonly):
                await self._select(tag, checked_name(name), readonly, write, command)
            case c.Create(mailbox=name, special_use=uses):
                name = checked_name(name).rstrip(HIERARCHY_DELIMITER)
                if name.upper() == INBOX:
                    raise RefusedError("INBOX always exists", "ALREADYEXISTS")
                use = _special_use(uses)
                await asyncio.to_thread(store.create_folder, user, name, use)
                await write(response.ok(tag, "CREATE completed"))
            case c.Delete(mailbox=name):
                name = checked_name(name)
                if name == INBOX:
                    raise RefusedError("INBOX cannot be deleted", "CANNOT")
                if self.selected is not None and self.selected.name == name:
                    raise RefusedError("the mailbox is selected; close it first", "INUSE")
                await asyncio.to_thread(store.delete_folder, user, name)
                await asyncio.to_thread(self._metadata_deleted, name)
                await write(response.ok(tag, "DELETE completed"))
            case c.Rename(old=old, new=new):
                old, new = checked_name(old), checked_name(new)
                if new == INBOX:
                    raise RefusedError("INBOX already exists", "ALREADYEXISTS")
                await asyncio.to_thread(store.rename_folder, user, old, new)
                await asyncio.to_thread(self._metadata_renamed, old, new)
                await write(response.ok(tag, "RENAME completed"))
            case c.Subscribe(mailbox=name) | c.Unsubscribe(mailbox=name):
                await asyncio.to_thread(
                    store.set_subscribed, user, checked_name(name), isinstance(command, c.Subscribe)
                )
                await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))
            case c.List():
                await self._list(command, write)
            case c.Lsub():
                await self._lsub(command, write)
            case c.Status(mailbox=name, items=items):
                line = await self._status_line(checked_name(name), items)
                await write(line)
                await write(response.ok(tag, "STATUS completed"))
            case c.Append():
                await self._append(command, write)

    def _open(self, name: str, readonly: bool) -> tuple[bool, FolderSnapshot]:
        """(read-only?, snapshot) of the folder SELECT/EXAMINE opens; in one thread trip."""
        store, user = self.ctx.store, self._require_user()
        if not readonly and isinstance(store, SharedStore):
            # RFC 4314 §4: without a right to change anything the folder opens read-only.
            readonly = not set("stwie") & set(store.route(user, name).rights)
        return readonly, store.snapshot(user, name, claim_recent=self._claims_recent(readonly))

    async def _select(
        self, tag: str, name: str, readonly: bool, write: Write, command: c.Select | None = None
    ) -> None:
        if command is not None and command.qresync is not None and not self.qresync:
            # RFC 7162 §3.2.5: QRESYNC must be enabled before it is used.
            raise InvalidCommandError("ENABLE QRESYNC first")
        had_selection = self.selected is not None
        self.selected = None
        self.proto.state = State.AUTHENTICATED
        if had_selection:
            await write(response.untagged_status("OK", "previous mailbox closed", "CLOSED"))
        try:
            readonly, snap = await self._thread(self._open, name, readonly)
        except FolderNotFoundError:
            raise RefusedError(f"no mailbox {name}", "NONEXISTENT") from None
        sel = Selected(
            name,
            readonly,
            snap.uid_validity,
            snap.uid_next,
            snap.keywords,
            MessageList(snap.messages),
            set() if self.rev2 else set(snap.recent_uids),  # RFC 9051 has no \Recent
            highest_modseq=snap.highest_modseq,
            synced_modseq=snap.highest_modseq,
        )
        if command is not None and (command.condstore or command.qresync is not None):
            self.condstore = True  # RFC 7162 §3.1.8
        permanent = response.flag_list((*SYSTEM_FLAGS, *snap.keywords, "\\*")).decode()
        out = [
            self._flags_response(snap.keywords),
            response.exists(len(sel.messages)),
            # RFC 9051 §6.3.2: no RECENT, and a LIST response with the canonical name.
            response.untagged(b'LIST () "." ' + self._mailbox_out(name))
            if self.rev2
            else response.recent(len(sel.recent)),
            response.untagged_status(
                "OK",
                "flags that can be stored",
                "PERMANENTFLAGS ()" if readonly else f"PERMANENTFLAGS {permanent}",
            ),
            response.untagged_status("OK", "UIDs valid", f"UIDVALIDITY {snap.uid_validity}"),
            response.untagged_status("OK", "predicted next UID", f"UIDNEXT {snap.uid_next}"),
        ]
        unseen = next((i for i, m in enumerate(sel.messages, 1) if Flag.SEEN not in m.flags), None)
        if unseen is not None and not self.rev2:  # RFC 3501 §6.3.1 (IMAP4rev2 dropped it)
            out.append(response.untagged_status("OK", "first unseen", f"UNSEEN {unseen}"))
        # RFC 7162 §3.1.2.1: every successful SELECT/EXAMINE tells the HIGHESTMODSEQ.
        code = condstore.highest_modseq_code(snap.highest_modseq)
        out.append(response.untagged_status("OK", "highest", code))
        if command is not None and command.qresync is not None:
            out.append(await self._qresync_select(sel, command.qresync))
        await write(b"".join(out))
        self.selected = sel
        self.proto.state = State.SELECTED
        await self._prune_cache_once()
        await write(
            response.ok(
                tag,
                "EXAMINE completed" if readonly else "SELECT completed",
                "READ-ONLY" if readonly else "READ-WRITE",
            )
        )

    async def _prune_cache_once(self) -> None:
        """Drop cached structures of messages expunged anywhere in the account, once per
        account and process (the first SELECT): rows are keyed by message, not folder, so
        only a look at every folder tells which are dead."""
        user = self._require_user()
        cache = self._disk_cache(user)
        if cache.is_pruned:
            return
        cache.is_pruned = True
        store = self.ctx.store

        def live_keys() -> set[str] | None:
            keys: set[str] = set()
            try:
                for folder in store.list_folders(user):
                    if folder.is_selectable:
                        keys.update(m.key for m in store.snapshot(user, folder.name).messages)
            except (StoreError, OSError) as exc:
                # A folder we cannot read may hold live messages: prune nothing this time.
                self.log.debug("structure cache not pruned: %s", exc)
                return None
            return keys

        keys = await asyncio.to_thread(live_keys)
        if keys is None:
            return
        dropped = await asyncio.to_thread(cache.prune, keys)
        if dropped:
            self.log.debug("structure cache: dropped %d expunged messages", dropped)

    async def _list(self, command: c.List, write: Write) -> None:
        user = self._require_user()
        tag = command.tag
        if command.patterns == ("",):
            # RFC 9051 §6.3.9: an empty pattern asks for the delimiter and the root.
            await write(response.untagged(b'LIST (\\Noselect) "." ""'))
            await write(response.ok(tag, "LIST completed"))
            return
        folders = await asyncio.to_thread(self.ctx.store.list_folders, user)
        patterns = [
            list_pattern(command.reference, p, HIERARCHY_DELIMITER) for p in command.patterns
        ]
        # The Shared/ and Public/ namespaces use "/" (imap/shared.py): "%" stops there.
        other_patterns = [
            list_pattern(command.reference, p, OTHER_DELIMITER) for p in command.patterns
        ]
        selection, returns = set(command.selection), set(command.returns)
        subscribed_only = "SUBSCRIBED" in selection
        by_name = {f.name: f for f in folders}
        ghosts: set[str] = set()
        if subscribed_only:
            # RFC 5258 §3.1: subscribed names whose mailbox does not exist are listed too.
            names = await asyncio.to_thread(self.ctx.store.subscriptions, user)
            ghosts = set(names) - set(by_name)
            folders = [
                *folders,
                *(
                    FolderInfo(n, None, subscribed=True, has_children=False, is_selectable=False)
                    for n in ghosts
                ),
            ]
        out: list[bytes] = []
        for folder in sorted(folders, key=lambda f: (f.name != INBOX, f.name)):
            delimiter = delimiter_of(folder.name)
            wanted = other_patterns if delimiter == OTHER_DELIMITER else patterns
            if not any(p.fullmatch(folder.name) for p in wanted):
                continue
            child_info = b""
            if subscribed_only and not folder.subscribed:
                # RFC 5258 §3.5 RECURSIVEMATCH: a parent listed for its subscribed children.
                if "RECURSIVEMATCH" in selection and any(
                    n.startswith(folder.name + HIERARCHY_DELIMITER) and f.subscribed
                    for n, f in by_name.items()
                ):
                    child_info = b' ("CHILDINFO" ("SUBSCRIBED"))'
                else:
                    continue
            if "SPECIAL-USE" in selection and folder.special_use is None:
                continue
            attrs = []
            if folder.name in ghosts:
                attrs.append("\\NonExistent")  # RFC 5258 §3: implies \Noselect
            else:
                if not folder.is_selectable:  # a parent implied by its children (§7.3.1)
                    # No such mailbox: RFC 9051 §7.3.1 says \NonExistent (which implies
                    # \Noselect); IMAP4rev1 clients know only \Noselect.
                    attrs.append("\\NonExistent" if self.rev2 else "\\Noselect")
                attrs.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
                if folder.special_use is not None:
                    attrs.append(str(folder.special_use))
            if (subscribed_only or "SUBSCRIBED" in returns) and folder.subscribed:
                attrs.append("\\Subscribed")
            out.append(
                response.untagged(
                    b"LIST "
                    + response.flag_list(attrs)
                    + f' "{delimiter}" '.encode()
                    + self._mailbox_out(folder.name)
                    + child_info
                )
            )
            if "STATUS" in returns and command.status_items and folder.is_selectable:
                # RFC 5819 §2: a mailbox that cannot be opened just gets no STATUS.
                with contextlib.suppress(StoreError, RefusedError):
                    out.append(await self._status_line(folder.name, command.status_items))
        await write(b"".join(out))
        await write(response.ok(tag, "LIST completed"))

    async def _lsub(self, command: c.Lsub, write: Write) -> None:
        """LSUB (RFC 3501 §6.3.9): the subscribed names the pattern matches, and a name
        where "%" stopped short of a subscribed descendant, as \\Noselect ("if "foo/bar" is
        subscribed but "foo" is not, a "%" wildcard to LSUB must return foo")."""
        user = self._require_user()
        folders = await asyncio.to_thread(self.ctx.store.list_folders, user)
        subscribed = set(await asyncio.to_thread(self.ctx.store.subscriptions, user))
        selectable = {f.name for f in folders if f.is_selectable}
        # Shared/ and Public/ names use "/" (imap/shared.py): "%" stops there, not at ".".
        patterns = {
            delimiter: list_pattern(command.reference, command.pattern, delimiter)
            for delimiter in (HIERARCHY_DELIMITER, OTHER_DELIMITER)
        }
        noselect: dict[str, bool] = {}
        for name in subscribed:
            delimiter = delimiter_of(name)
            if patterns[delimiter].fullmatch(name):
                # LSUB predates CHILDREN and \NonExistent: what cannot be selected is \Noselect.
                noselect[name] = name not in selectable
                continue
            levels = name.split(delimiter)
            for depth in range(1, len(levels)):
                parent = delimiter.join(levels[:depth])
                if parent not in subscribed and patterns[delimiter].fullmatch(parent):
                    noselect[parent] = True
        out = [
            response.untagged(
                b"LSUB "
                + response.flag_list(["\\Noselect"] if noselect[name] else [])
                + f' "{delimiter_of(name)}" '.encode()
                + self._mailbox_out(name)
            )
            for name in sorted(noselect, key=lambda n: (n != INBOX, n))
        ]
        await write(b"".join(out))
        await write(response.ok(command.tag, "LSUB completed"))

    async def _status_line(self, name: str, items: tuple[str, ...]) -> bytes:
        try:
            snap = await self._snapshot(name, claim_recent=False)
        except FolderNotFoundError:
            raise RefusedError(f"no mailbox {name}", "NONEXISTENT") from None
        recent = snap.recent_uids
        if self.selected is not None and self.selected.name == name:
            recent = recent | frozenset(self.selected.recent)
        size = sum(m.size for m in snap.messages)
        if "SIZE" in items and not self.utf8_names:  # RFC 8438 §3: the sum of the
            # RFC822.SIZE this client sees (a UTF-8 client: the stored sizes, as summed above)
            user = self._require_user()
            seen = await asyncio.to_thread(self._seen_sizes, user, name, snap.messages)
            if seen is not None:
                size = sum(seen.get(m.uid, m.size) for m in snap.messages)
        values = {
            "MESSAGES": len(snap.messages),
            "RECENT": len(recent),
            "UIDNEXT": snap.uid_next,
            "UIDVALIDITY": snap.uid_validity,
            "UNSEEN": sum(1 for m in snap.messages if Flag.SEEN not in m.flags),
            "DELETED": sum(1 for m in snap.messages if Flag.DELETED in m.flags),
            "SIZE": size,
            "HIGHESTMODSEQ": snap.highest_modseq,  # RFC 7162 §3.1.2.3
        }
        if "APPENDLIMIT" in items:
            values["APPENDLIMIT"] = await self._append_limit()
        body = " ".join(f"{item} {values[item]}" for item in items)
        return response.untagged(
            b"STATUS " + self._mailbox_out(name) + b" (" + body.encode("ascii") + b")"
        )

    async def _append_limit(self) -> int:
        """RFC 7889 §4: the largest APPEND this mailbox takes now, the message size limit or
        what is left of the quota, whichever is smaller."""
        user = self._require_user()
        limit = self.ctx.config.smtp.max_message_size
        quota = await self._thread(self.ctx.accounts.quota_bytes, user)
        if quota > 0:
            used = await self._thread(self.ctx.store.usage_bytes, user)
            limit = min(limit, max(0, quota - used))
        return limit

    async def _append(self, command: c.Append, write: Write) -> None:
        user = self._require_user()
        name = checked_name(command.mailbox)
        messages = [
            (
                binary.store_safe(await self._message_data(m)),
                storable(m.flags),
                m.internal_date.timestamp() if m.internal_date else None,
            )
            for m in command.all_messages()
        ]
        store = self.ctx.store

        def work() -> list[MessageRef]:
            if len(messages) == 1:
                data, flags, when = messages[0]
                return [store.append(user, name, data, flags=flags, internal_date=when)]
            return store.append_many(user, name, messages)  # MULTIAPPEND: all or none

        try:
            if self.selected is not None and self.selected.name == name:
                # The new message reported (EXISTS) in the same thread trip as the write.
                refs = await self._sync_after(work, write, allow_expunge=True)
            else:
                refs = await self._thread(work)
        except FolderNotFoundError:
            raise RefusedError(f"no mailbox {name}", "TRYCREATE") from None
        except SelectionLostError as lost:
            # BYE was sent, but the message is stored: the tagged OK (as LOGOUT's follows its
            # BYE) keeps a client that reads it from sending the message again.
            refs = cast("list[MessageRef]", lost.done)
        # RFC 4315 §3: APPENDUID with a uid-set for a MULTIAPPEND, in the messages' order.
        uids = compress_ordered([ref.uid for ref in refs])
        await write(
            response.ok(command.tag, "APPEND completed", f"APPENDUID {refs[0].uid_validity} {uids}")
        )

    async def _message_data(self, message: c.AppendMessage) -> bytes:
        """The bytes of one APPENDed message: its literal, or its CATENATE parts joined
        (RFC 4469 §5), each URL read with this user's rights; nothing is stored unless every
        part resolves (NO [BADURL url]) and the whole fits (NO [TOOBIG])."""
        if not message.catenate:
            return message.message
        user = self._require_user()
        selected = self.selected.name if self.selected is not None else None
        limit = self.ctx.config.smtp.max_message_size
        pieces: list[bytes] = []
        size = 0
        for part in message.catenate:
            if part.url is None:
                piece = part.text or b""
            else:
                try:
                    piece = await asyncio.to_thread(
                        catenate.resolve,
                        self.ctx.store,
                        user,
                        selected,
                        part.url,
                        utf8=self.utf8_names,  # message/global parts as FETCH shows them
                    )
                except catenate.BadUrlError as exc:
                    # RFC 4469 §6: resp-text-code =/ "BADURL" SP url-resp-text, where
                    # url-resp-text is 1*(TEXT-CHAR except "]"): anything else %-encoded.
                    url = "".join(
                        ch if " " <= ch <= "~" and ch != "]" else _percent(ch) for ch in part.url
                    )
                    raise RefusedError(str(exc), f"BADURL {url or '%20'}") from None
            size += len(piece)
            if size > limit:  # RFC 4469 §5: [TOOBIG] when the result is too large
                raise RefusedError("the joined message is too large", "TOOBIG")
            pieces.append(piece)
        return b"".join(pieces)


def _percent(ch: str) -> str:
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))


def _special_use(uses: tuple[str, ...]) -> SpecialUse | None:
    if not uses:
        return None
    if len(uses) > 1:
        raise RefusedError("only one special use per mailbox", "USEATTR")
    try:
        return SpecialUse(uses[0])
    except ValueError:
        raise RefusedError(f"{uses[0]} is not a supported special use", "USEATTR") from None
