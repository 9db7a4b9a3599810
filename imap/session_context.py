"""CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4): SEARCH RETURN (UPDATE) and SORT RETURN
(UPDATE) keep the search alive and tell the client how its result changes, as
`* ESEARCH (TAG "t") [UID] ADDTO (position set)` and `REMOVEFROM (position set)`, until
CANCELUPDATE or until the mailbox is no longer selected. A mixin of `Session`, in front of the
others: it wraps `_sync`, where every change to the selected mailbox is learnt (before a
command, during IDLE, on a NOTIFY wake-up).

- UPDATE (and CONTEXT) are no result items: `RETURN (UPDATE)` alone answers with the
  correlator only, as Dovecot does; clients add ALL or COUNT for the first result.
- SEARCH: context position 0 throughout (§4.3.3: allowed for SEARCH; updates in mailbox order).
- SORT: real positions (§4.3.2), one (position number) pair per message, each pair applying
  to the result as the pairs before it left it (§4.3.2's example adds three messages at
  position 1 in turn): REMOVEFROM from the highest position down, ADDTO from the lowest up,
  so every position is also the message's place in the result before (REMOVEFROM) or after
  (ADDTO) the whole update. The context keeps its sorted result; a message that enters is
  read (its header fields, not the body) and placed by `sort.sort`, ties by UID as SORT
  breaks them by mailbox order. No sort key reads flags, so a message that still matches
  after a flag change keeps its place. A PARTIAL window does not narrow the updates, as for
  SEARCH.
- REMOVEFROM for expunged messages comes before the EXPUNGEs (their numbers are still
  valid), ADDTO for new messages after EXISTS (§4.3.3, §4.3.4); a message whose flags changed
  is searched again and moves in or out.
- Cost: nothing while no context lives; with one, each sync compares the selected folder with
  its state before (a dict of the folder) and searches only the messages that changed.
- At most `MAX_CONTEXTS` per session: more get `* NO [NOUPDATE "tag"]` and a plain answer
  (§4.3.1); an UPDATE whose tag is already a live context's is BAD (§4.3).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from mailstack.delivery.store import MessageGoneError, MessageInfo
from mailstack.imap import commands as c
from mailstack.imap import response, search, sort
from mailstack.imap.sequence import compress
from mailstack.imap.session_base import (
    InvalidCommandError,
    RefusedError,
    Selected,
    SessionCore,
    Write,
)

MAX_CONTEXTS = 10  # §4.3.1: at least one per client; a few cover every client we know


@dataclass
class _Context:
    tag: str
    key: c.SearchKey  # "$" already resolved (it named the saved set of that moment)
    uid: bool
    selected: Selected  # the selection it belongs to: updates stop with it
    results: set[int] = field(default_factory=set)  # UIDs
    criteria: list[sort.Criterion] | None = None  # a SORT context (CONTEXT=SORT)
    ordered: list[sort.Message] = field(default_factory=list)  # SORT's result; seq = UID


class ContextCommands(SessionCore):
    """UPDATE contexts and CANCELUPDATE; see the module docstring."""

    _contexts: dict[str, _Context] | None = None

    def _context_check(self, command: c.Search | c.Sort) -> bool:
        """Before a SEARCH or SORT runs: may it have an UPDATE context? BAD on a reused tag."""
        if "UPDATE" not in command.returns:
            return False
        live = self._live_contexts()
        if command.tag in live:
            raise InvalidCommandError(f"tag {command.tag} names a live update context")
        return len(live) < MAX_CONTEXTS

    def _context_start(self, command: c.Search, key: c.SearchKey, uids: list[int]) -> bytes:
        """After the SEARCH: keep it (or say NOUPDATE) and return what to write."""
        if "UPDATE" not in command.returns or self.selected is None:
            return b""
        live = self._live_contexts()
        if len(live) >= MAX_CONTEXTS:
            code = "NOUPDATE " + response.string(command.tag).decode("ascii")
            return response.untagged_status("NO", "too many update contexts", code)
        live[command.tag] = _Context(command.tag, key, command.uid, self.selected, set(uids))
        return b""

    def _context_start_sort(
        self,
        command: c.Sort,
        key: c.SearchKey,
        criteria: list[sort.Criterion],
        ordered: list[sort.Message],
    ) -> bytes:
        """After an ESORT: keep its UPDATE context (CONTEXT=SORT) or say NOUPDATE."""
        search_like = c.Search(command.tag, key, command.uid, returns=command.returns)
        refused = self._context_start(search_like, key, [m.info.uid for m in ordered])
        if not refused and (ctx := self._live_contexts().get(command.tag)) is not None:
            ctx.criteria = criteria
            # Ties go by mailbox order (RFC 5256 §3), i.e. by UID, which unlike the sequence
            # number stays put while the context lives.
            ctx.ordered = [dataclasses.replace(m, seq=m.info.uid) for m in ordered]
        return refused

    def _live_contexts(self) -> dict[str, _Context]:
        if self._contexts is None:
            self._contexts = {}
        for tag in [t for t, ctx in self._contexts.items() if ctx.selected is not self.selected]:
            del self._contexts[tag]  # §4.3: the mailbox is no longer selected
        return self._contexts

    async def _cancel_update(self, command: c.CancelUpdate, write: Write) -> None:
        """§4.3.5. A tag that names no live context is refused, as Dovecot does (the others
        named are cancelled all the same)."""
        live = self._live_contexts()
        unknown = [tag for tag in command.tags if live.pop(tag, None) is None]
        if unknown:
            raise RefusedError(f"no update context {unknown[0]!r}")
        await write(response.ok(command.tag, "CANCELUPDATE completed"))

    async def _sync(self, write: Write, *, allow_expunge: bool) -> None:
        sel = self.selected
        contexts = list(self._live_contexts().values()) if self._contexts else []
        if sel is None or not contexts:
            await super()._sync(write, allow_expunge=allow_expunge)
            return
        before = {m.uid: (seq, m) for seq, m in enumerate(sel.messages, 1)}
        held: list[bytes] = []

        async def hold(data: bytes) -> None:
            held.append(data)

        await super()._sync(hold, allow_expunge=allow_expunge)
        now = self.selected
        if now is not sel:  # the selection was lost (BYE said): no more updates
            await write(b"".join(held))
            return
        current = {m.uid for m in sel.messages}
        gone = sorted(set(before) - current)
        changed = [
            m for m in sel.messages if (old := before.get(m.uid)) is None or old[1].flags != m.flags
        ]
        out = []
        for ctx in contexts:  # §4.3.4: before the EXPUNGEs, with the numbers they had
            removed = [u for u in gone if u in ctx.results]
            ctx.results.difference_update(removed)
            if ctx.criteria is not None:
                pairs = _sort_remove(ctx, set(removed))
                out.append(_sort_update(ctx, "REMOVEFROM", pairs, lambda u: before[u][0]))
                continue
            numbers = removed if ctx.uid else [before[u][0] for u in removed]
            if numbers:
                out.append(_update(ctx, "REMOVEFROM", numbers))
        out.extend(held)
        if changed:
            matching = await asyncio.to_thread(self._context_match, sel, contexts, changed)
            for ctx, hits in zip(contexts, matching, strict=True):
                if ctx.criteria is None:
                    out.extend(self._context_moves(ctx, sel, changed, hits))
                else:
                    out.extend(await self._sort_moves(ctx, sel, changed, hits))
        if out:
            await write(b"".join(out))

    async def _sort_moves(
        self, ctx: _Context, sel: Selected, changed: list[MessageInfo], hits: set[int]
    ) -> list[bytes]:
        """REMOVEFROM and ADDTO with positions for a SORT context (see the docstring)."""
        added = [m for m in changed if m.uid in hits and m.uid not in ctx.results]
        left = {m.uid for m in changed if m.uid not in hits and m.uid in ctx.results}
        ctx.results.update(m.uid for m in added)
        ctx.results.difference_update(left)

        def number(uid: int) -> int:
            return (sel.position(uid) or 0) + 1

        out = [_sort_update(ctx, "REMOVEFROM", _sort_remove(ctx, left), number)]
        if added:
            entering = await asyncio.to_thread(self._sort_entries, sel, ctx, added)
            ctx.ordered = sort.sort([*ctx.ordered, *entering], ctx.criteria or [])
            new = {m.info.uid for m in entering}
            pairs = [(i, m.info.uid) for i, m in enumerate(ctx.ordered, 1) if m.info.uid in new]
            out.append(_sort_update(ctx, "ADDTO", pairs, number))
        return [line for line in out if line]

    def _sort_entries(
        self, sel: Selected, ctx: _Context, infos: list[MessageInfo]
    ) -> list[sort.Message]:
        """What SORT orders `infos` by (in a worker thread); seq = UID as in `ordered`."""
        headers: dict[int, bytes] = {}
        if sort.needs_header(ctx.criteria or []):
            uids = [m.uid for m in infos]
            headers = self.ctx.store.read_headers(self._require_user(), sel.name, uids)
        sizes = None
        if any(k.key == "SIZE" for k in ctx.criteria or []):  # the size this client sees
            sizes = self._seen_sizes(self._require_user(), sel.name, infos)
        return [
            sort.Message.of(m.uid, m, headers.get(m.uid, b""), (sizes or {}).get(m.uid))
            for m in infos
        ]

    def _context_moves(
        self, ctx: _Context, sel: Selected, changed: list[MessageInfo], hits: set[int]
    ) -> list[bytes]:
        """ADDTO for changed messages that match now, REMOVEFROM for those that stopped."""
        added = [m.uid for m in changed if m.uid in hits and m.uid not in ctx.results]
        left = [m.uid for m in changed if m.uid not in hits and m.uid in ctx.results]
        ctx.results.update(added)
        ctx.results.difference_update(left)
        out = []
        for item, uids in (("REMOVEFROM", left), ("ADDTO", added)):
            if uids:
                numbers = (
                    uids if ctx.uid else [p + 1 for u in uids if (p := sel.position(u)) is not None]
                )
                out.append(_update(ctx, item, numbers))
        return out

    def _context_match(
        self, sel: Selected, contexts: list[_Context], changed: list[MessageInfo]
    ) -> list[set[int]]:
        """For each context, the UIDs among `changed` its key matches (in a worker thread)."""
        user, name = self._require_user(), sel.name
        only = {m.uid for m in changed}
        messages = list(sel.messages)
        scope = search.Scope(len(messages), sel.largest_uid)

        def read(uid: int) -> bytes:
            try:
                return self.ctx.store.read_message(user, name, uid)
            except MessageGoneError:
                return b""

        def read_header(uid: int) -> bytes:
            return self.ctx.store.read_headers(user, name, [uid]).get(uid, b"")

        sizes = None
        if any(search.reads_size(ctx.key) for ctx in contexts):  # LARGER/SMALLER
            sizes = self._seen_sizes(user, name, changed)

        return [
            {
                found.info.uid
                for found in search.search(
                    ctx.key,
                    messages,
                    scope,
                    read,
                    recent_uids=frozenset(sel.recent),
                    read_header=read_header,
                    only_uids=only,
                    sizes=sizes,
                )
            }
            for ctx in contexts
        ]


def _sort_remove(ctx: _Context, uids: set[int]) -> list[tuple[int, int]]:
    """Take `uids` out of a SORT context's result: (position, UID) pairs, highest first."""
    if not uids:
        return []
    pairs = [(i, m.info.uid) for i, m in enumerate(ctx.ordered, 1) if m.info.uid in uids]
    ctx.ordered = [m for m in ctx.ordered if m.info.uid not in uids]
    return pairs[::-1]


def _sort_update(
    ctx: _Context, item: str, pairs: list[tuple[int, int]], number: Callable[[int], int]
) -> bytes:
    """`* ESEARCH (TAG t) [UID] ADDTO|REMOVEFROM (position n position n ...)`; b"" if none.

    RFC 5267 §6: "ADDTO" SP "(" context-position SP sequence-set *(SP context-position SP
    sequence-set) ")"; each set here is one message (UID, or its sequence number)."""
    if not pairs:
        return b""
    tag = response.string(ctx.tag).decode("ascii")
    uid = " UID" if ctx.uid else ""
    text = " ".join(f"{pos} {u if ctx.uid else number(u)}" for pos, u in pairs)
    return response.untagged(f"ESEARCH (TAG {tag}){uid} {item} ({text})")


def _update(ctx: _Context, item: str, numbers: list[int]) -> bytes:
    tag = response.string(ctx.tag).decode("ascii")
    uid = " UID" if ctx.uid else ""
    return response.untagged(f"ESEARCH (TAG {tag}){uid} {item} (0 {compress(numbers)})")
