"""NOTIFY (RFC 5465) in a session: a mixin of `Session` (imap/notify.py has the rules).

What a session with NOTIFY holds: one `EventHub.listen` per account whose folders it watches
(its own, and the owners of shared folders it named), and through the service's
`MaildirWatcher` the inotify watches of those folders (one per folder per process, shared
with every other session and IDLE). No thread, no timer, no polling: a change calls
`_notify_heard` on the loop, which only notes the folder (a set, so a burst costs one STATUS)
and sets `notify_wake`; the transport (imap/server.py) waits for that between commands and
during IDLE and calls `notify_flush`, which writes the responses (§5: at any time but in
the middle of a command's responses). More than `MAX_PENDING` changes unread end NOTIFY with
`* OK [NOTIFICATIONOVERFLOW]` (§5.8).

Mailbox-level events reach other sessions through `EventHub.publish_change`: after our own
CREATE/DELETE/RENAME/(UN)SUBSCRIBE (`_notify_after`), as `LIST` responses (§5.4, §5.5; the
session that made the change is not told, it knows).

Changes nobody in this process announces (another program or `serve` process making or
removing folders or editing `subscriptions`, `mailstack share`/`mailbox add`, the owner of a
shared folder making a child of it) are found by looking again: a plan with MailboxName or
SubscriptionChange watches the Maildir roots of the account and of the owners of the shared
folders it sees (`MaildirWatcher.watch_account`), and on each `FOLDER_TREE_CHANGED` lists the
folders and subscriptions again and tells the difference (a folder renamed by another hand
keeps its identity, `FolderInfo.ident`: told with OLDNAME). The session keeps the view it has
told (`_Active.names`, `subscribed`): every change, announced or found, is told only if it
changes that view, so one heard both ways is told once, and our own are applied to it untold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import dataclass, field

from mailstack.delivery.events import FolderTreeChange, Listener
from mailstack.delivery.store import FolderInfo, StoreError
from mailstack.delivery.watch import MaildirWatcher
from mailstack.imap import commands as c
from mailstack.imap import fetch, notify, response, utf7
from mailstack.imap.session_base import RefusedError, Write
from mailstack.imap.session_mailbox import MailboxCommands
from mailstack.imap.session_select import SelectedCommands
from mailstack.imap.shared import delimiter_of


@dataclass
class _Active:
    """One NOTIFY SET's state; `stack` holds its listeners and watches."""

    plan: notify.Plan
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    watched: dict[notify.Key, tuple[str, frozenset[str]]] = field(default_factory=dict)
    subscribed: frozenset[str] = frozenset()
    names: frozenset[str] | None = None  # the selectable folders it sees (None: not yet)
    idents: dict[str, int] = field(default_factory=dict)  # their FolderInfo.ident, as of then
    selected_key: notify.Key | None = None
    selected_watch: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    pending: dict[notify.Key, None] = field(default_factory=dict)  # an ordered set
    changes: list[object] = field(default_factory=list)
    # The last STATUS told per folder: our own write and inotify both report one change.
    told: dict[notify.Key, bytes] = field(default_factory=dict)
    must_rewatch: bool = False
    is_overflowed: bool = False


class NotifyCommands(MailboxCommands, SelectedCommands):
    """NOTIFY SET/NONE and the notifications; see the module docstring."""

    watcher: MaildirWatcher | None = None  # the service's, set by the transport
    notify_wake: asyncio.Event | None = None  # set while notifications wait to be written
    _notify: _Active | None = None

    @property
    def notify_pending(self) -> bool:
        return self.notify_wake is not None and self.notify_wake.is_set()

    # -- the command ---------------------------------------------------------------------------
    async def _notify_command(self, command: c.Notify, write: Write) -> None:
        self._notify_stop()
        if command.groups is None:  # NOTIFY NONE (§3.2)
            await write(response.ok(command.tag, "NOTIFY NONE completed"))
            return
        groups = command.groups
        if self.utf8_names:  # RFC 9051 §5.1, RFC 6855 §3: names in UTF-8; the store: mUTF-7
            groups = tuple(
                g.__class__(g.filter, tuple(map(_to_utf7, g.mailboxes)), g.events, g.fetch)
                for g in groups
            )
        try:
            active = _Active(notify.plan(groups))
        except notify.BadEventError as exc:
            supported = " ".join(notify.SUPPORTED_EVENTS)
            raise RefusedError(f"event {exc} is not supported", f"BADEVENT ({supported})") from None
        self._notify = active
        self.notify_wake = asyncio.Event()
        await self._notify_rewatch(active)  # the first view: nothing to tell
        self._notify_track_selected()
        if command.status:  # §3.1: STATUS for each mailbox with message events, now
            for name, events in list(active.watched.values()):
                if events & notify.MESSAGE_EVENTS and not self._is_selected(name):
                    await write(await self._notify_status(name, is_initial=True))
        await write(response.ok(command.tag, "NOTIFY completed"))

    def _notify_stop(self) -> None:
        active, self._notify = self._notify, None
        self.notify_wake = None
        if active is not None:
            active.selected_watch.close()
            active.stack.close()

    async def _notify_rewatch(self, active: _Active) -> list[notify.Change]:
        """(Re)compute which folders the plan covers; listen to their owners and watch them.
        Returns how the folders and subscriptions differ from the view told so far."""
        user = self._require_user()
        store = self.ctx.store

        def load() -> tuple[list[FolderInfo], list[str]]:
            return store.list_folders(user), store.subscriptions(user)

        folders, subscriptions = await asyncio.to_thread(load)
        if self._notify is not active:  # NOTIFY NONE/SET came meanwhile
            return []
        subscribed = frozenset(subscriptions)
        names = frozenset(info.name for info in folders if info.is_selectable)
        idents = {info.name: info.ident for info in folders if info.is_selectable and info.ident}
        found = _differences(active, names, subscribed, idents)
        active.subscribed, active.names, active.idents = subscribed, names, idents
        watched: dict[notify.Key, tuple[str, frozenset[str]]] = {}
        for info in folders:
            if not info.is_selectable:
                continue
            events = notify.events_for(active.plan, info.name, active.subscribed)
            if events & notify.MESSAGE_EVENTS:
                watched[notify.key_of(user, info.name)] = (info.name, events)
        owners = {user} | {owner for owner, _ in watched}
        trees = set()
        if _wants_tree(active.plan):  # whose Maildir roots show what we list (docstring)
            trees = {user} | {notify.key_of(user, name)[0] for name in names}
        stack = contextlib.ExitStack()
        for owner in sorted(owners | trees):
            stack.enter_context(self.ctx.events.listen(owner, self._listener(owner)))
        if self.watcher is not None:
            for key in watched:
                stack.enter_context(self.watcher.watch(*key))
            for owner in sorted(trees):
                stack.enter_context(self.watcher.watch_account(owner))
        old, active.stack = active.stack, stack
        old.close()  # after the new watches exist: shared watches are kept, not redone
        active.watched = watched
        return found

    def _listener(self, owner: str) -> Listener:
        return functools.partial(self._notify_heard, owner)

    def _notify_track_selected(self) -> None:
        """Watch the selected folder while the plan has events for it (call after SELECT,
        CLOSE and friends; cheap when nothing changed)."""
        active = self._notify
        if active is None:
            return
        user = self._require_user()
        key = None
        if self.selected is not None and active.plan.wants_selected:
            key = notify.key_of(user, self.selected.name)
        if key == active.selected_key:
            return
        active.selected_watch.close()
        active.selected_watch, active.selected_key = contextlib.ExitStack(), key
        if key is None:
            return
        # A listener of its own even if a watched folder shares the owner: a later rewatch
        # may drop that one (the callback is cheap, and `pending` is a set).
        active.selected_watch.enter_context(self.ctx.events.listen(key[0], self._listener(key[0])))
        if self.watcher is not None:
            active.selected_watch.enter_context(self.watcher.watch(*key))

    def _is_selected(self, name: str) -> bool:
        return self.selected is not None and self.selected.name == name

    # -- hearing and telling -------------------------------------------------------------------
    def _notify_heard(self, owner: str, folder: str, change: object) -> None:
        """The EventHub listener (on the loop): note what changed, wake the transport."""
        active, wake = self._notify, self.notify_wake
        if active is None or wake is None:
            return
        if change is None:
            key = (owner, folder)
            if key != active.selected_key and key not in active.watched:
                return
            active.pending[key] = None
        elif isinstance(change, notify.MetadataChange) and owner != self.user:
            shown = self._foreign_metadata(active, owner, change)
            if shown is None:
                return
            active.changes.append(shown)
        elif isinstance(change, FolderTreeChange) or owner != self.user:
            # Seen on disk, or another owner's change in names of theirs: look again.
            active.must_rewatch = True
        elif getattr(change, "origin", None) == id(self):
            active.must_rewatch = True  # our own CREATE/RENAME/...: new folders to watch
        else:
            active.changes.append(change)
            active.must_rewatch = True
        if len(active.pending) + len(active.changes) > notify.MAX_PENDING:
            active.is_overflowed = True
        wake.set()

    def _foreign_metadata(
        self, active: _Active, owner: str, change: notify.MetadataChange
    ) -> notify.MetadataChange | None:
        """Another owner's METADATA change as this user sees it: only `/shared` entries
        (RFC 5464 §3.2: `/private` ones are that user's alone) of a folder this user sees,
        under the name it has here; None if nothing of it is ours to hear."""
        entries = tuple(e for e in change.entries if e.lower().startswith("/shared/"))
        if not change.mailbox or not entries or active.names is None:
            return None
        user = self._require_user()
        for name in active.names:
            if notify.key_of(user, name) == (owner, change.mailbox):
                return notify.MetadataChange(name, entries, 0)
        return None

    async def notify_flush(self, write: Write) -> None:
        """Write what `_notify_heard` noted (the transport calls this between commands)."""
        active, wake = self._notify, self.notify_wake
        if active is None or wake is None:
            return
        wake.clear()
        if active.is_overflowed:  # §5.8: as if NOTIFY NONE, and say so
            self._notify_stop()
            await write(
                response.untagged_status(
                    "OK", "too many changes; NOTIFY is off", "NOTIFICATIONOVERFLOW"
                )
            )
            return
        changes, active.changes = active.changes, []
        pending, active.pending = list(active.pending), {}
        out = []
        for change in changes:
            if isinstance(change, notify.Change) and _apply(active, change):
                out.extend(self._told(active, change))
        if active.must_rewatch:
            active.must_rewatch = False
            for found in await self._notify_rewatch(active):
                out.extend(self._told(active, found))
        for key in pending:
            if key == active.selected_key:
                if out:
                    await write(b"".join(out))
                    out = []
                await self._notify_selected(write, active.plan)
                continue
            watched = active.watched.get(key)
            if watched is not None and not self._is_selected(watched[0]):
                with contextlib.suppress(RefusedError, StoreError):  # gone, or no right r
                    line = await self._notify_status(watched[0])
                    if active.told.get(key) != line:
                        active.told[key] = line
                        out.append(line)
        if out:
            await write(b"".join(out))

    async def _notify_status(self, name: str, *, is_initial: bool = False) -> bytes:
        items = notify.status_items(condstore=self.condstore, is_initial=is_initial)
        return await self._status_line(name, items)

    async def _notify_selected(self, write: Write, plan: notify.Plan) -> None:
        """The selected mailbox's changes as RFC 9051 reports them, now (§5.1-§5.3), and the
        MessageNew fetch attributes of the new messages (§5.2: read as by .PEEK)."""
        sel = self.selected
        if sel is None:
            return
        largest = sel.largest_uid
        await self._sync(write, allow_expunge=not plan.is_delayed)
        sel = self.selected  # None if the folder went away (BYE sent)
        if sel is None or not plan.fetch or "MessageNew" not in plan.selected:
            return
        new = [(seq, m) for seq, m in enumerate(sel.messages, 1) if m.uid > largest]
        if not new:
            return
        # Deviation from a FETCH: nothing here sets \\Seen (an unasked-for read is no read).
        attrs = tuple(
            c.FetchAttr(a.name, a.section, a.partial, peek=True) if a.section else a
            for a in plan.fetch
        )
        rendered, _ = await asyncio.to_thread(
            self._render_batch,
            self._require_user(),
            sel,
            new,
            attrs,
            fetch.needs_message(attrs),
            any(
                a.name in fetch.STRUCTURE_ITEMS - {"RFC822.SIZE"}
                or (a.name == "BODY" and a.section is None)
                for a in attrs
            ),
        )
        await write(b"".join(rendered))

    def _told(self, active: _Active, change: notify.Change) -> list[bytes]:
        """The LIST/METADATA line for `change` if the plan wants it, else nothing."""
        names = active.subscribed
        if isinstance(change, notify.SubscriptionChange):
            names = names | {change.name}  # an unsubscribed name still matches
        if notify.wants_change(active.plan, change, names):
            return [self._change_line(change)]
        return []

    def _change_line(self, change: notify.Change) -> bytes:
        """§5.4: LIST for a created, deleted (\\NonExistent) or renamed (OLDNAME, RFC 5258
        §3.6) mailbox; §5.5: LIST with or without \\Subscribed; §5.6, §5.7: the unsolicited
        METADATA of RFC 5464 §4.4.2 (the entries' names, not their values)."""
        if isinstance(change, notify.MetadataChange):
            entries = b" ".join(response.astring(e) for e in change.entries)
            mailbox = self._mailbox_out(change.mailbox) if change.mailbox else b'""'
            return response.untagged(b"METADATA " + mailbox + b" " + entries)
        if isinstance(change, notify.SubscriptionChange):
            attrs, name, extra = ("\\Subscribed" if change.is_subscribed else ""), change.name, b""
        else:
            name = change.new or change.old or ""
            attrs = "\\NonExistent" if change.new is None else ""
            extra = b""
            if change.old is not None and change.new is not None:
                extra = b' ("OLDNAME" (' + self._mailbox_out(change.old) + b"))"
        delimiter = response.string(delimiter_of(name))
        return response.untagged(
            b"LIST (" + attrs.encode() + b") " + delimiter + b" " + self._mailbox_out(name) + extra
        )

    def _notify_after(self, command: c.Command) -> None:
        """Tell this account's other sessions about a mailbox change we just made."""
        user = self._require_user()
        me = id(self)
        change: object
        match command:
            case c.Create(mailbox=name):
                change = notify.MailboxNameChange(None, name.rstrip("."), me)
            case c.Delete(mailbox=name):
                change = notify.MailboxNameChange(name, None, me)
            case c.Rename(old=old, new=new):
                change = notify.MailboxNameChange(old, new, me)
            case c.Subscribe(mailbox=name) | c.Unsubscribe(mailbox=name):
                change = notify.SubscriptionChange(name, isinstance(command, c.Subscribe), me)
            case c.SetMetadata(mailbox=name, values=values):
                change = notify.MetadataChange(name, tuple(e for e, _ in values), me)
            case _:
                return
        if self._notify is not None:
            _apply(self._notify, change)  # ours: in the view, never told to us
        self.ctx.events.publish_change(user, "", change)


def _wants_tree(plan: notify.Plan) -> bool:
    """Does the plan report folders made, removed or (un)subscribed (§5.4, §5.5)?"""
    return any({"MailboxName", "SubscriptionChange"} & set(g.events) for g in plan.others)


def _apply(active: _Active, change: notify.Change) -> bool:
    """Put `change` into the view told so far; False if the view had it already."""
    if isinstance(change, notify.MailboxNameChange) and active.names is not None:
        names = set(active.names)
        is_new = (change.old is not None and change.old in names) or (
            change.new is not None and change.new not in names
        )
        names.discard(change.old or "")
        if change.new is not None:
            names.add(change.new)
        if change.old is not None and change.new is not None:
            # RENAME takes the children along (RFC 9051 §6.3.6): the client infers them.
            below = change.old + delimiter_of(change.old)
            names = {change.new + n[len(change.old) :] if n.startswith(below) else n for n in names}
        active.names = frozenset(names)
        return is_new
    if isinstance(change, notify.SubscriptionChange):
        is_new = (change.name in active.subscribed) != change.is_subscribed
        if change.is_subscribed:
            active.subscribed = active.subscribed | {change.name}
        else:
            active.subscribed = active.subscribed - {change.name}
        return is_new
    return True


def _differences(
    active: _Active, names: frozenset[str], subscribed: frozenset[str], idents: dict[str, int]
) -> list[notify.Change]:
    """What changed from the view told so far to (names, subscribed), found by looking.

    A name gone whose folder identity (`FolderInfo.ident`, a Maildir++ directory's inode)
    a new name has was renamed: told as a RENAME here is, with OLDNAME (RFC 5465 §5.4), once
    for a folder and its children (RFC 9051 §6.3.6: the client infers theirs). A folder
    deleted and another created between two looks whose new directory got the old inode
    number reads as a rename too: rare, and the client's UIDVALIDITY check still holds."""
    if active.names is None:
        return []
    gone, made = active.names - names, names - active.names
    by_ident = {idents[name]: name for name in made if name in idents}
    renamed = {
        old: by_ident[ident]
        for old in gone
        if (ident := active.idents.get(old)) is not None and ident in by_ident
    }
    found: list[notify.Change] = [
        notify.MailboxNameChange(old, new, 0)
        for old, new in sorted(renamed.items())
        if not _is_implied(old, new, renamed)
    ]
    found += [notify.MailboxNameChange(name, None, 0) for name in sorted(gone - renamed.keys())]
    found += [
        notify.MailboxNameChange(None, name, 0) for name in sorted(made - set(renamed.values()))
    ]
    found += [
        notify.SubscriptionChange(name, name in subscribed, 0)
        for name in sorted(active.subscribed ^ subscribed)
    ]
    return found


def _is_implied(old: str, new: str, renamed: dict[str, str]) -> bool:
    """Is old -> new a child's rename that its parent's (also in `renamed`) implies?"""
    return any(
        old.startswith(parent + delimiter_of(parent)) and new == to + old[len(parent) :]
        for parent, to in renamed.items()
    )


def _to_utf7(name: str) -> str:
    return name if name == "INBOX" else utf7.encode(name)
