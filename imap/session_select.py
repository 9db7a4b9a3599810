"""Message commands of the selected state: FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE,
UNSELECT (RFC 9051 §6.4; ESEARCH 4731, SEARCHRES 5182, MOVE 6851, UIDPLUS 4315, BINARY 3516).
A mixin of `Session`.

FETCH answers ENVELOPE/BODY/BODYSTRUCTURE from `response.RenderedStructure`s (a rendered
`fetch.Structure`) cached in the session's memory and in the account's on-disk cache
(imap/cache.py), so a folder's messages are read, parsed and rendered once, not on every
open; SEARCH reads only headers for header keys, a batch of messages per store call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Generator

from mailstack.delivery.store import (
    FlagChange,
    FolderNotFoundError,
    MessageGoneError,
    MessageInfo,
)
from mailstack.imap import commands as c
from mailstack.imap import condstore, downgrade_size, fetch, header_index, response, search, sort
from mailstack.imap.downgrade import downgrade, downgrade_fields
from mailstack.imap.protocol import State
from mailstack.imap.sequence import SeqRange, SequenceSet, compress, compress_ordered
from mailstack.imap.session_base import (
    FETCH_BATCH,
    STRUCTURE_CACHE_SIZE,
    InvalidCommandError,
    RefusedError,
    Selected,
    SessionCore,
    Write,
    checked_name,
    flags_of,
    storable,
)

from mailstack.base.flags import Flag, FlagMode

FULLTEXT_MIN = 100  # messages: below this a scan is as fast as asking the full-text index
MEMORY_BATCH = 500  # messages rendered per event-loop turn when nothing is read (about 2 ms)
HEADER_BATCH = 100  # headers per store call in SEARCH: ~100 open files, a few dozen KB


class SelectedCommands(SessionCore):
    """FETCH, STORE, SEARCH, COPY, MOVE, EXPUNGE, CLOSE, UNSELECT."""

    async def _message_command(self, command: c.Command, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        store = self.ctx.store
        tag = command.tag
        match command:
            case c.Close() | c.Unselect():
                if isinstance(command, c.Close) and not sel.readonly:
                    # RFC 9051 §6.4.1: CLOSE expunges silently.
                    await asyncio.to_thread(store.expunge, user, sel.name)
                self.selected = None
                self.proto.state = State.AUTHENTICATED
                await write(response.ok(tag, f"{type(command).__name__.upper()} completed"))
            case c.Expunge(uids=uids):
                if sel.readonly:
                    raise RefusedError("the mailbox is read-only", "READ-ONLY")
                wanted = None if uids is None else [m.uid for _, m in self._targets(uids, uid=True)]
                if wanted == []:
                    await write(response.ok(tag, "EXPUNGE completed (nothing to do)"))
                    return
                await asyncio.to_thread(store.expunge, user, sel.name, wanted)
                await self._sync(write, allow_expunge=True)
                await write(response.ok(tag, "EXPUNGE completed"))
            case c.Search():
                await self._search(command, write)
            case c.Fetch():
                await self._fetch(command, write)
            case c.Store():
                await self._store_flags(command, write)
            case c.Copy() | c.Move():
                await self._copy_move(command, write)

    async def _search(self, command: c.Search, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        if command.charset not in (None, "UTF-8", "US-ASCII"):
            raise RefusedError(
                f"charset {command.charset} is not supported", "BADCHARSET (UTF-8 US-ASCII)"
            )
        key = _resolve_saved(command.key, sel.saved)
        self._context_check(command)  # RFC 5267 §4.3 (imap/session_context.py)
        scope = search.Scope(len(sel.messages), sel.largest_uid)
        name = sel.name

        def read(uid: int) -> bytes:
            try:
                return self.ctx.store.read_message(user, name, uid)
            except MessageGoneError:
                return b""  # expunged meanwhile: matches no text key

        # Header keys read headers HEADER_BATCH messages at a time: one store call (one folder
        # lock) per batch, not per message. A batch starts at the message asked for.
        order = [m.uid for m in sel.messages]
        position = {uid: i for i, uid in enumerate(order)}
        headers: dict[int, bytes] = {}

        def read_header(uid: int) -> bytes:
            if uid not in headers:
                headers.clear()
                start = position.get(uid, 0)
                batch = order[start : start + HEADER_BATCH] if uid in position else [uid]
                headers.update(self.ctx.store.read_headers(user, name, batch))
            return headers.get(uid, b"")  # b"": expunged meanwhile, matches no text key

        messages = list(sel.messages)
        terms = search.required_texts(key)
        fulltext = (
            self.ctx.store.fulltext(user, name) if terms and len(messages) >= FULLTEXT_MIN else None
        )

        def run() -> list[search.Candidate]:
            if header_index.answers(key):  # stored header fields, no file reads once filled
                stored = header_index.search_stored(
                    self.ctx.store, user, name, key, messages, scope, frozenset(sel.recent)
                )
                if stored is not None:
                    return stored
            if fulltext is None:
                return search.search(
                    key,
                    messages,
                    scope,
                    read,
                    recent_uids=frozenset(sel.recent),
                    read_header=read_header,
                )
            # The pre-filter (delivery/fulltext.py) answers for the messages it has indexed;
            # the rest are read, matched, and indexed on the way.
            live = {m.uid for m in messages}
            indexed = fulltext.indexed(sel.uid_validity, live)
            hits = fulltext.candidates(sel.uid_validity, terms)
            only = None if indexed is None or hits is None else hits | (live - indexed)
            fresh: list[tuple[int, str]] = []

            def learn(uid: int, text: search.MessageText) -> None:
                if indexed is not None and uid not in indexed:
                    fresh.append((uid, text.fulltext()))

            found = search.search(
                key,
                messages,
                scope,
                read,
                recent_uids=frozenset(sel.recent),
                read_header=read_header,
                only_uids=only,
                on_loaded=learn,
            )
            fulltext.add(sel.uid_validity, fresh)
            return found

        found = await asyncio.to_thread(run)
        numbers = [f.info.uid if command.uid else f.seq for f in found]
        # RFC 7162 §3.1.5: a search with MODSEQ reports the highest MODSEQ of what it found.
        top = (
            max(f.info.modseq for f in found)
            if found and condstore.has_modseq_key(command.key)
            else None
        )
        if "SAVE" in command.returns:
            saved = [f.info.uid for f in found]
            extremes = {"MIN", "MAX"} & set(command.returns)
            if saved and extremes and not {"ALL", "COUNT"} & set(command.returns):
                # RFC 5182 §2.4: SAVE with only MIN/MAX saves just those messages.
                saved = sorted(
                    {
                        saved[0] if "MIN" in extremes else saved[-1],
                        saved[-1] if "MAX" in extremes else saved[0],
                    }
                )
            sel.saved = tuple(saved)
        if not command.is_esearch and not self.rev2:  # RFC 9051 §7.3.4: ESEARCH only
            words = ["SEARCH", *map(str, numbers)]
            if top is not None:
                words.append(f"(MODSEQ {top})")
            await write(response.untagged(" ".join(words)))
        else:
            returns = [r for r in command.returns if r != "SAVE"] or (
                [] if command.returns else ["ALL"]
            )
            if returns or "SAVE" not in command.returns:
                parts = ["ESEARCH (TAG " + response.string(command.tag).decode("ascii") + ")"]
                if command.uid:
                    parts.append("UID")
                if numbers and "MIN" in returns:
                    parts.append(f"MIN {min(numbers)}")
                if numbers and "MAX" in returns:
                    parts.append(f"MAX {max(numbers)}")
                if numbers and "ALL" in returns:
                    parts.append(f"ALL {compress(numbers)}")
                if command.partial is not None:  # RFC 5267 §4.4 (where ALL goes, as Dovecot)
                    parts.append(sort.partial_item(numbers, command.partial, ordered=False))
                if "COUNT" in returns:
                    parts.append(f"COUNT {len(numbers)}")
                if top is not None:
                    parts.append(f"MODSEQ {top}")
                await write(response.untagged(" ".join(parts)))
        if refused := self._context_start(command, key, [f.info.uid for f in found]):
            await write(refused)
        await write(response.ok(command.tag, "SEARCH completed"))

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
            targets = [(seq, m) for seq, m in targets if m.modseq > since]
        wants_modseq = since is not None or any(a.sets_seen for a in attrs)
        if self.condstore and wants_modseq and not any(a.name == "MODSEQ" for a in attrs):
            attrs = (*attrs, c.FetchAttr("MODSEQ"))
        sets_seen = not sel.readonly and any(a.sets_seen for a in attrs)
        if sets_seen:
            unseen = [m.uid for _, m in targets if Flag.SEEN not in m.flags]
            if unseen:
                change = await asyncio.to_thread(
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
        # (imap/header_index.py), filled for the whole command at once when nothing else
        # needs the files.
        stored = header_index.stored_fields(attrs)
        needs_bytes = fetch.needs_message(tuple(a for a in attrs if a not in stored))
        if stored and not needs_bytes:
            infos = [m for _, m in targets]
            await asyncio.to_thread(
                functools.partial(
                    header_index.ensure,
                    self.ctx.store,
                    user,
                    sel.name,
                    infos,
                    envelopes=any(a.name == "ENVELOPE" for a in stored),
                )
            )
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
            sizes = await asyncio.to_thread(
                downgrade_size.sizes_seen,
                self._disk_cache(user),
                self.ctx.store,
                user,
                sel.name,
                [m for _, m in targets],
            )
        step = MEMORY_BATCH if in_memory else FETCH_BATCH
        for start in range(0, len(targets), step):
            batch = targets[start : start + step]
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
                rendered, batch_gone = await asyncio.to_thread(render)
            gone = gone or batch_gone
            await write(b"".join(rendered))
        if gone:
            raise RefusedError("some messages were expunged meanwhile", "EXPUNGEISSUED")
        await write(response.ok(command.tag, "FETCH completed"))

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
        new_rows: list[tuple[str, int, str]] = []
        size_rows: list[tuple[str, int, str]] = []
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
                    if needs_structure and structure is None:
                        structure = response.RenderedStructure.of(fetch.Structure.of(parsed))
                        self._remember(sel, info, structure)
                        new_rows.append((info.key, info.size, structure.to_json()))
                    if self.utf8_names:
                        lowered = parsed.for_utf8()  # message/global opened, if any
                    else:
                        lowered = downgrade(parsed)
                        size = lowered.size
                        if sized:  # remembered for the next FETCH (imap/downgrade_size.py)
                            size_rows.append(downgrade_size.size_row(info, size))
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
                sel.messages[i] = dataclasses.replace(m, flags=new.flags, modseq=new.modseq)
                sel.highest_modseq = max(sel.highest_modseq, new.modseq)

    async def _store_flags(self, command: c.Store, write: Write) -> None:
        sel = self._sel()
        if sel.readonly:
            raise RefusedError("the mailbox is read-only", "READ-ONLY")
        targets = self._targets(command.seqset, uid=command.uid)
        flags = storable(command.flags)
        change = FlagChange({})
        if targets:
            change = await asyncio.to_thread(
                functools.partial(
                    self.ctx.store.change_flags,
                    self._require_user(),
                    sel.name,
                    [m.uid for _, m in targets],
                    flags,
                    command.mode,
                    unchanged_since=command.unchanged_since,
                )
            )
        changed = change.done
        self._update_flags(changed)
        new_keywords = [f for f in flags if not f.startswith("\\") and f not in sel.keywords]
        if new_keywords and changed:  # RFC 9051 §7.3.5: FLAGS grows with new keywords
            sel.keywords = (*sel.keywords, *dict.fromkeys(new_keywords))
            await write(self._keywords_response(sel))
        out = []
        for seq, m in targets:
            if m.uid not in changed:
                continue
            info = sel.messages[seq - 1]
            items = []
            if not command.silent:
                items.append(b"FLAGS " + flags_of(info, sel.recent))
            if self.condstore and (not command.silent or info.modseq != m.modseq):
                # RFC 7162 §3.1.3: MODSEQ is reported, even for .SILENT, once enabled.
                items.append(condstore.modseq_item(info.modseq))
            if items:
                if command.uid:
                    items.insert(0, b"UID %d" % info.uid)
                out.append(response.fetch(seq, items))
        await write(b"".join(out))
        code = None
        if change.modified:
            # RFC 7162 §3.1.3: MODIFIED names the messages that failed UNCHANGEDSINCE.
            failed = set(change.modified)
            numbers = [m.uid if command.uid else seq for seq, m in targets if m.uid in failed]
            code = f"MODIFIED {compress(numbers)}"
        if len(changed) + len(change.modified) < len(targets):
            raise RefusedError("some messages were expunged meanwhile", "EXPUNGEISSUED")
        await write(response.ok(command.tag, "STORE completed", code))

    async def _copy_move(self, command: c.Copy | c.Move, write: Write) -> None:
        sel = self._sel()
        user = self._require_user()
        is_move = isinstance(command, c.Move)
        if is_move and sel.readonly:
            raise RefusedError("the mailbox is read-only", "READ-ONLY")
        dest = checked_name(command.mailbox)
        targets = self._targets(command.seqset, uid=command.uid)
        verb = "MOVE" if is_move else "COPY"
        if not targets:
            await write(response.ok(command.tag, f"{verb} completed (no messages)"))
            return
        uids = [m.uid for _, m in targets]
        try:
            if is_move:
                pairs = await asyncio.to_thread(self.ctx.store.move, user, sel.name, uids, dest)
            else:
                pairs = await asyncio.to_thread(self.ctx.store.copy, user, sel.name, uids, dest)
        except FolderNotFoundError:
            raise RefusedError(f"no mailbox {dest}", "TRYCREATE") from None
        dest_snap = await self._snapshot(dest, claim_recent=False) if pairs else None
        if pairs and dest_snap is not None:
            # The copies have new file names but the same bytes: their structure is known.
            source_key = {m.uid: m.key for _, m in targets}
            copy_key = {m.uid: m.key for m in dest_snap.messages}
            copied = [
                (source_key[old], copy_key[new])
                for old, new in pairs
                if old in source_key and new in copy_key
            ]
            await asyncio.to_thread(self._disk_cache(user).copy_rows, copied)
        code = None
        if pairs and dest_snap is not None:
            code = (
                f"COPYUID {dest_snap.uid_validity} "
                f"{compress_ordered([p[0] for p in pairs])} "
                f"{compress_ordered([p[1] for p in pairs])}"
            )
        if is_move:
            # RFC 6851 §4.3: COPYUID goes in an untagged OK before the EXPUNGEs.
            if code:
                await write(response.untagged_status("OK", "moved", code))
            await self._sync(write, allow_expunge=True)
            await write(response.ok(command.tag, "MOVE completed"))
        else:
            if dest == sel.name:
                await self._sync(write, allow_expunge=False)
            await write(response.ok(command.tag, "COPY completed", code))
        if len(pairs) < len(uids):
            self.log.info(
                "%s: %d of %d messages were gone", verb, len(uids) - len(pairs), len(uids)
            )


def _resolve_saved(key: c.SearchKey, saved: tuple[int, ...]) -> c.SearchKey:
    """Replace "$" (RFC 5182) with the saved UIDs."""
    match key:
        case c.SearchSeq(seqset=seqset) if seqset.is_saved:
            ranges = tuple(SeqRange(u, u) for u in saved)
            return (
                c.SearchSeq(SequenceSet(ranges), uid=True) if ranges else c.SearchNot(c.SearchAll())
            )
        case c.SearchNot(key=inner):
            return c.SearchNot(_resolve_saved(inner, saved))
        case c.SearchOr(left=left, right=right):
            return c.SearchOr(_resolve_saved(left, saved), _resolve_saved(right, saved))
        case c.SearchAnd(keys=keys):
            return c.SearchAnd(tuple(_resolve_saved(k, saved) for k in keys))
    return key
