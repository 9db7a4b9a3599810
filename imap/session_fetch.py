"""FETCH (RFC 9051 §6.4.5; BINARY 3516, CONDSTORE 7162 §3.1.4): the items of a batch of
messages rendered from what is cached, reading the files only for what needs them. A mixin
of `Session` through `SelectedCommands`.

ENVELOPE/BODY/BODYSTRUCTURE come from `response.RenderedStructure`s (a rendered
`fetch.Structure`) cached in the session's memory and in the account's on-disk cache
(imap/cache.py), so a folder's messages are read, parsed and rendered once, not on every
open; BODY[HEADER.FIELDS] of indexed names and ENVELOPE alone come from the stored header
rows (imap/header_index.py); UID, FLAGS, INTERNALDATE, RFC822.SIZE and MODSEQ from memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Generator, Sequence

from mailstack.delivery.store import MessageInfo
from mailstack.imap import commands as c
from mailstack.imap import downgrade_size, fetch, header_index, response
from mailstack.imap.cache import CacheRow
from mailstack.imap.downgrade import downgrade, downgrade_fields
from mailstack.imap.session_base import (
    FETCH_BATCH,
    STRUCTURE_CACHE_SIZE,
    InvalidCommandError,
    RefusedError,
    Selected,
    SessionCore,
    Targets,
    Write,
    flags_of,
)

from mailstack.base.flags import Flag, FlagMode

MEMORY_BATCH = 500  # messages rendered per event-loop turn when nothing is read (about 2 ms)
FILL_FIRST = 5_000  # messages whose header rows are made before the first batch renders
FILL_AHEAD = 10_000  # messages per later fill, each made while the one before renders
QUICK_BATCH_S = 0.005  # a worker-thread batch faster than this doubles the next (up to 500)


class FetchCommands(SessionCore):
    async def _fetch(self, command: c.Fetch, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        targets = self._targets(command.seqset, uid=command.uid)
        attrs = command.attrs
        if command.uid and not any(a.name == "UID" for a in attrs):
            attrs = (c.FetchAttr("UID"), *attrs)
        since = command.changed_since
        if since is not None:
            if command.vanished:
                if not self.qresync:  # RFC 7162 §3.2.6
                    raise InvalidCommandError("VANISHED needs ENABLE QRESYNC first")
                if not command.seqset.is_saved:
                    line, _ = await self._resync_lines(sel, since, command.seqset)
                    await write(line)
            # RFC 7162 §3.1.4.1: only messages changed since, and MODSEQ goes with them.
            targets = await self._changed_since(user, targets, since)
        wants_modseq = since is not None or any(a.sets_seen for a in attrs)
        if self.condstore and wants_modseq and not any(a.name == "MODSEQ" for a in attrs):
            attrs = (*attrs, c.FetchAttr("MODSEQ"))
        sets_seen = not sel.readonly and any(a.sets_seen for a in attrs)
        if sets_seen:
            unseen = [m.uid for _, m in targets if Flag.SEEN not in m.flags]
            if unseen:
                change = await self._thread(
                    self.ctx.store.change_flags,
                    user,
                    sel.name,
                    unseen,
                    [Flag.SEEN.value],
                    FlagMode.ADD,
                )
                self._update_flags(change.done)
                targets = [(seq, sel.messages[seq - 1]) for seq, _ in targets]
                if not any(a.name == "FLAGS" for a in attrs):
                    # RFC 9051 §6.4.5: the \Seen we just set must be reported.
                    attrs = (*attrs, c.FetchAttr("FLAGS"))
        # BODY[HEADER.FIELDS] of indexed names and ENVELOPE come from stored header rows
        # (imap/header_index.py), filled ahead of the batches that render them when nothing
        # else needs the files.
        stored = header_index.stored_fields(attrs)
        needs_bytes = fetch.needs_message(tuple(a for a in attrs if a not in stored))
        ahead: _FillAhead | None = None
        if stored and not needs_bytes:
            sizes_to = None
            if not self.utf8_names and any(a.name == "RFC822.SIZE" for a in attrs):
                # Rows still to fill read their files whole, for the sizes too: stored in
                # the structure cache, so the batches below read no file for them.
                sizes_to = self._disk_cache(user).writer()
            envelopes = any(a.name == "ENVELOPE" for a in stored)
            fill = functools.partial(
                header_index.ensure,
                self.ctx.store,
                user,
                sel.name,
                envelopes=envelopes,
                sizes=sizes_to,
            )
            # Every row there (a folder seen before): nothing to fill ahead of.
            done = await self._thread(
                functools.partial(
                    header_index.complete,
                    self.ctx.store,
                    user,
                    sel.name,
                    [m for _, m in targets],
                    envelopes=envelopes,
                )
            )
            if not done:
                ahead = _FillAhead(targets, lambda infos: self._thread(fill, infos))
        needs_structure = any(
            a.name in fetch.STRUCTURE_ITEMS - {"RFC822.SIZE"}
            or (a.name == "BODY" and a.section is None)
            for a in attrs
            if a not in stored
        )
        gone = False
        # UID/FLAGS/INTERNALDATE/RFC822.SIZE/MODSEQ come from memory: a thread trip per batch
        # cost more than rendering the batch (a third of a `FETCH 1:* (FLAGS)`), so render
        # them here, yielding to other sessions between batches.
        in_memory = not (needs_bytes or needs_structure or stored)
        sizes = None
        if in_memory and not self.utf8_names and any(a.name == "RFC822.SIZE" for a in attrs):
            # The downgraded sizes (imap/downgrade_size.py) take the cache, maybe files: one
            # thread trip for the whole command, then the batches render from memory.
            sizes = await self._thread(
                downgrade_size.sizes_seen,
                self._disk_cache(user),
                self.ctx.store,
                user,
                sel.name,
                [m for _, m in targets],
            )
        step = MEMORY_BATCH if in_memory else FETCH_BATCH
        start = 0
        try:
            while start < len(targets):
                batch = list(targets[start : start + step])
                if ahead is not None:
                    await ahead.through(start + len(batch))
                began = time.perf_counter()
                render = functools.partial(
                    self._render_batch,
                    user,
                    sel,
                    batch,
                    attrs,
                    needs_bytes,
                    needs_structure,
                    stored,
                    sizes=sizes,
                )
                if in_memory:
                    if start:
                        await asyncio.sleep(0)
                    rendered, batch_gone = render()
                else:
                    rendered, batch_gone = await self._thread(render)
                    if step < MEMORY_BATCH and time.perf_counter() - began < QUICK_BATCH_S:
                        # Nothing was read (rows and structures cached): fewer, bigger thread
                        # trips. Each costs two GIL hand-offs, a quarter of a warm header fetch
                        # at 50 messages a trip.
                        step = min(step * 2, MEMORY_BATCH)
                start += len(batch)
                gone = gone or batch_gone
                await write(b"".join(rendered))
        finally:
            if ahead is not None:
                ahead.abandon()
        if gone:
            raise RefusedError("some messages were expunged meanwhile", "EXPUNGEISSUED")
        await write(response.ok(command.tag, "FETCH completed"))

    async def _changed_since(
        self, user: str, targets: Sequence[tuple[int, MessageInfo]], since: int
    ) -> list[tuple[int, MessageInfo]]:
        """The targets whose MODSEQ is above `since`, as this session knows them. The store
        finds what changed through its MODSEQ index, so a resync of a big folder after a few
        changes costs the few, not a look at every message. A message this session has
        above `since` is in the store's answer too (MODSEQs only grow); ones it answers
        that the session does not have yet (new since its last sync) are left out."""
        sel = self._sel()
        if not isinstance(targets, Targets):  # a saved result ($): a short list
            return [(seq, m) for seq, m in targets if m.modseq > since]
        changes = await self._thread(self.ctx.store.changes, user, sel.name, since)
        if changes is None or len(changes.changed) * 8 > len(targets):
            return targets.changed_since(since)  # most of them: one pass is cheaper
        out: list[tuple[int, MessageInfo]] = []
        for info in changes.changed:
            i = sel.position(info.uid)
            if i is not None and targets.covers(i + 1) and sel.messages[i].modseq > since:
                out.append((i + 1, sel.messages[i]))
        return out

    def _structures_for(
        self, user: str, sel: Selected, batch: list[tuple[int, MessageInfo]]
    ) -> dict[int, response.RenderedStructure]:
        """Cached rendered structures of the batch's messages, by UID: the session's memory
        first, then the account's on-disk cache (imap/cache.py). Misses are absent; the
        caller parses those and hands them to `_remember`. An undecodable value is a miss."""
        found: dict[int, response.RenderedStructure] = {}
        missing: list[MessageInfo] = []
        for _, info in batch:
            structure = self._structures.get((sel.name, sel.uid_validity, info.uid))
            if structure is not None:
                found[info.uid] = structure
            else:
                missing.append(info)
        if not missing:
            return found
        cache = self._disk_cache(user)
        cached = cache.get_many([(m.key, m.size) for m in missing])
        unusable = []
        for info in missing:
            text = cached.get(info.key)
            if text is None:
                continue
            try:
                structure = response.RenderedStructure.from_json(text)
            except ValueError:
                unusable.append(info.key)
                continue
            found[info.uid] = structure
            self._remember(sel, info, structure)
        if unusable:
            self.log.info("dropping %d unreadable structure cache entries", len(unusable))
            cache.forget(unusable)
        return found

    def _remember(
        self, sel: Selected, info: MessageInfo, structure: response.RenderedStructure
    ) -> None:
        self._structures[(sel.name, sel.uid_validity, info.uid)] = structure
        while len(self._structures) > STRUCTURE_CACHE_SIZE:
            del self._structures[next(iter(self._structures))]

    def _render_batch(
        self,
        user: str,
        sel: Selected,
        batch: list[tuple[int, MessageInfo]],
        attrs: tuple[c.FetchAttr, ...],
        needs_bytes: bool,
        needs_structure: bool,
        stored: frozenset[c.FetchAttr] = frozenset(),
        *,
        sizes: dict[int, int] | None = None,
    ) -> tuple[list[bytes], bool]:
        """FETCH responses for a batch of messages (runs in a worker thread).

        ENVELOPE/BODY/BODYSTRUCTURE come from rendered structures cached in memory and on disk
        (a message's bytes never change), so clients that re-fetch them on every open do not
        make us read and parse each message again; RFC822.SIZE, FLAGS, INTERNALDATE and UID
        come from the folder scan. Only BODY[...]/BINARY/RFC822* read the message file."""
        out: list[bytes] = []
        gone = False
        structures = self._structures_for(user, sel, batch) if needs_structure else {}
        new_rows: list[CacheRow] = []
        size_rows: list[CacheRow] = []
        infos = [info for _, info in batch]
        fields = (
            header_index.stored_headers(
                self.ctx.store,
                user,
                sel.name,
                infos,
                envelopes=any(a.name == "ENVELOPE" for a in stored),
            )
            if stored and not needs_bytes
            else {}
        )
        # A client without UTF8=ACCEPT gets 8-bit headers downgraded (imap/downgrade.py); the
        # cached structure shows which messages have them (it holds their 8-bit text).
        # A UTF-8 client sees message/global parts opened (RFC 9051 §7.5.2); the cached
        # structure is the IMAP4rev1 form, so those few messages are parsed again.
        lower = {
            u for u, s in structures.items() if (s.has_global if self.utf8_names else s.has_8bit)
        }
        to_read = [
            info.uid
            for _, info in batch
            if needs_bytes or (needs_structure and info.uid not in structures) or info.uid in lower
        ]

        # RFC 3501 §2.3.4: RFC822.SIZE is the size BODY[] has for this client, which the
        # downgrade changes for a client without UTF8=ACCEPT (imap/downgrade_size.py); the
        # messages read below get theirs from the bytes.
        sized = not self.utf8_names and any(a.name == "RFC822.SIZE" for a in attrs)
        if sizes is None and sized:  # else `sizes` came with the call, or is not needed
            reading = set(to_read)
            sizes = downgrade_size.sizes_seen(
                self._disk_cache(user),
                self.ctx.store,
                user,
                sel.name,
                [info for _, info in batch if info.uid not in reading],
            )

        # One store call (one folder lock) for the batch; it yields in our order, skipping
        # messages expunged meanwhile, and reads each file only when we get to it.
        def read_all() -> Generator[tuple[int, bytes]]:
            if to_read:  # FLAGS-only batches take no lock at all
                yield from self.ctx.store.read_messages(user, sel.name, to_read)

        # Per attribute, not per message: hashing one costs as much as rendering a small item.
        attr_stored = [
            (attr, attr in stored, attr.response_name().encode("ascii") + b" ") for attr in attrs
        ]
        with contextlib.closing(read_all()) as files:
            next_file = next(files, None)
            for seq, info in batch:
                parsed = None
                size = (sizes or {}).get(info.uid, info.size)
                structure = structures.get(info.uid)
                if needs_bytes or (needs_structure and structure is None) or info.uid in lower:
                    if next_file is None or next_file[0] != info.uid:
                        gone = True
                        continue
                    parsed = fetch.ParsedMessage.parse(next_file[1])
                    next_file = next(files, None)
                    is_new = needs_structure and structure is None
                    if is_new:
                        structure = response.RenderedStructure.of(fetch.Structure.of(parsed))
                        self._remember(sel, info, structure)
                        new_rows.append((info.key, info.size, structure.to_json()))
                    if self.utf8_names:
                        lowered = parsed.for_utf8()  # message/global opened, if any
                        if is_new:  # the bytes are at hand: see below
                            seen = downgrade(parsed).size  # an ASCII message: no work
                            size_rows.append(downgrade_size.size_row(info.key, info.size, seen))
                    else:
                        lowered = downgrade(parsed)
                        size = lowered.size
                        if sized or is_new:
                            # Remembered for the next FETCH, SEARCH LARGER/SMALLER, SORT SIZE
                            # and STATUS SIZE of such a client (imap/downgrade_size.py), which
                            # then read no file for this message.
                            size_rows.append(downgrade_size.size_row(info.key, info.size, size))
                    if lowered is not parsed:
                        parsed = lowered  # never cached: the stored bytes stay the truth
                        if needs_structure:
                            structure = response.RenderedStructure.of(fetch.Structure.of(parsed))
                elif stored and not needs_bytes and info.uid not in fields:
                    gone = True  # expunged before its fields could be read
                    continue
                items: list[bytes] = []
                for attr, is_stored, label in attr_stored:
                    match attr.name:
                        case "UID":
                            value = b"%d" % info.uid
                        case "FLAGS":
                            value = flags_of(info, sel.recent)
                        case "INTERNALDATE":
                            value = response.date_time(info.internal_date)
                        case "RFC822.SIZE":
                            value = b"%d" % size
                        case "MODSEQ":  # RFC 7162 §3.1.4.1
                            value = b"(%d)" % info.modseq
                        case "ENVELOPE" | "BODYSTRUCTURE" | "BODY" if (
                            structure is not None and attr.section is None
                        ):
                            value = structure.item(attr.name)
                        case "BODY" if is_stored and info.uid in fields:
                            raw = fields[info.uid][0]
                            if not self.utf8_names and not raw.isascii():
                                raw = downgrade_fields(raw)  # imap/downgrade.py
                            value = response.value(header_index.fields_item(attr, raw))
                        case "ENVELOPE" if is_stored and info.uid in fields:
                            raw, env = fields[info.uid]
                            if not self.utf8_names and not raw.isascii():
                                raw, env = downgrade_fields(raw), None
                            value = env if env is not None else header_index.render_envelope(raw)
                        case "ENVELOPE" if parsed is not None:
                            value = header_index.message_envelope(parsed.data)
                        case _ if parsed is not None:
                            try:
                                value = response.value(fetch.fetch_item(attr, parsed))
                            except fetch.UnknownCteError:
                                raise RefusedError(
                                    "unknown content-transfer-encoding", "UNKNOWN-CTE"
                                ) from None
                        case _:  # pragma: no cover - needs_bytes covers every other item
                            raise AssertionError(f"{attr.name} needs the message")
                    items.append(label + value)
                out.append(response.fetch(seq, items))
        if new_rows or size_rows:
            self._disk_cache(user).put_many([*new_rows, *size_rows])
        return out, gone

    def _update_flags(self, changed: dict[int, MessageInfo]) -> None:
        """Take the store's new flags and MODSEQs of messages this session just changed."""
        sel = self._sel()
        for uid, new in changed.items():
            i = sel.position(uid)
            if i is not None:
                m = sel.messages[i]
                # (not dataclasses.replace: a tenth of a one-message STORE's CPU)
                sel.messages[i] = MessageInfo(
                    m.uid, new.flags, m.internal_date, m.size, m.key, new.modseq
                )
                sel.highest_modseq = max(sel.highest_modseq, new.modseq)


class _FillAhead:
    """Header rows filled a part ahead of the batches that render them. A never-seen
    folder's first header fetch reads and parses every message (in worker processes when
    there are many: `MailStore.map_messages`); filling them all first kept the client
    waiting for the whole fill and then for the whole rendering, with a core idle in each.
    Now the next part fills while this session renders and sends the one before."""

    def __init__(
        self,
        targets: Sequence[tuple[int, MessageInfo]],
        run: Callable[[list[MessageInfo]], Awaitable[None]],
    ) -> None:
        self._targets = targets
        self._run = run
        self._done = 0  # targets[:_done] have their rows
        self._task: asyncio.Future[None] | None = None
        self._task_end = 0

    def _start(self) -> asyncio.Future[None]:
        end = min(self._done + (FILL_AHEAD if self._done else FILL_FIRST), len(self._targets))
        infos = [m for _, m in self._targets[self._done : end]]
        self._task = asyncio.ensure_future(self._run(infos))
        self._task_end = end
        return self._task

    async def through(self, end: int) -> None:
        """Return when targets[:end] have their rows; the next part is started meanwhile."""
        while self._done < end:
            await (self._task or self._start())
            self._done, self._task = self._task_end, None
        if self._task is None and self._done < len(self._targets):
            self._start()

    def abandon(self) -> None:
        """The command ends: a fill still running finishes in its thread, unwanted (its
        error, if any, is retrieved here, not logged as lost)."""
        if self._task is not None:
            self._task.add_done_callback(_retrieve)
            self._task = None


def _retrieve(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
