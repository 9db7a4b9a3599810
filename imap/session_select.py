"""Message commands of the selected state: FETCH (imap/session_fetch.py), STORE, SEARCH, COPY,
MOVE, EXPUNGE, CLOSE, UNSELECT (RFC 9051 §6.4; ESEARCH 4731, SEARCHRES 5182, MOVE 6851,
UIDPLUS 4315). A mixin of `Session`.

SEARCH reads only headers for header keys, a batch of messages per store call, and answers
header keys from the stored header rows (imap/header_index.py) once they are filled.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import operator

from mailstack.delivery.store import (
    FlagChange,
    FolderNotFoundError,
    MessageGoneError,
)
from mailstack.imap import commands as c
from mailstack.imap import condstore, downgrade_size, header_index, response, search, sort
from mailstack.imap.protocol import State
from mailstack.imap.sequence import SeqRange, SequenceSet, compress, compress_ordered
from mailstack.imap.session_base import (
    RefusedError,
    Write,
    checked_name,
    flags_of,
    storable,
)
from mailstack.imap.session_fetch import FetchCommands

FULLTEXT_MIN = 100  # messages: below this a scan is as fast as asking the full-text index
HEADER_BATCH = 100  # headers per store call in SEARCH: ~100 open files, a few dozen KB
_UID = operator.attrgetter("uid")


class SelectedCommands(FetchCommands):
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
                    await self._thread(store.expunge, user, sel.name)
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
                await self._sync_after(
                    functools.partial(store.expunge, user, sel.name, wanted),
                    write,
                    allow_expunge=True,
                )
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
        # lock) per batch, not per message. A batch starts at the message asked for, found by
        # bisection (messages are in UID order): a map of every UID to its position cost
        # about 10 MB a session on 100,000 messages, and searches from stored fields never
        # read a header block at all.
        headers: dict[int, bytes] = {}

        def read_header(uid: int) -> bytes:
            if uid not in headers:
                headers.clear()
                start = bisect.bisect_left(messages, uid, key=_UID)
                if start < len(messages) and messages[start].uid == uid:
                    batch = [m.uid for m in messages[start : start + HEADER_BATCH]]
                else:
                    batch = [uid]
                headers.update(self.ctx.store.read_headers(user, name, batch))
            return headers.get(uid, b"")  # b"": expunged meanwhile, matches no text key

        messages = sel.messages.frozen()
        terms = search.required_texts(key)
        fulltext = (
            self.ctx.store.fulltext(user, name) if terms and len(messages) >= FULLTEXT_MIN else None
        )

        def run() -> list[search.Candidate]:
            # LARGER/SMALLER compare the RFC822.SIZE this client sees (RFC 9051 §6.4.4).
            sizes = self._seen_sizes(user, name, messages) if search.reads_size(key) else None
            if header_index.answers(key):  # stored header fields, no file reads once filled
                stored = header_index.search_stored(
                    self.ctx.store, user, name, key, messages, scope, frozenset(sel.recent), sizes
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
                    sizes=sizes,
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
                sizes=sizes,
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

    async def _store_flags(self, command: c.Store, write: Write) -> None:
        sel = self._sel()
        if sel.readonly:
            raise RefusedError("the mailbox is read-only", "READ-ONLY")
        targets = self._targets(command.seqset, uid=command.uid)
        flags = storable(command.flags)
        change = FlagChange({})
        if targets:
            # What others changed comes along (expunges wait: `targets` are numbered).
            change = await self._sync_after(
                functools.partial(
                    self.ctx.store.change_flags,
                    self._require_user(),
                    sel.name,
                    [m.uid for _, m in targets],
                    flags,
                    command.mode,
                    unchanged_since=command.unchanged_since,
                ),
                write,
                allow_expunge=False,
                then=lambda done: self._update_flags(done.done),
            )
        changed = change.done
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
            # ... and so is their size for a client without UTF8=ACCEPT (imap/downgrade_size.py).
            copied += [(a + downgrade_size.SUFFIX, b + downgrade_size.SUFFIX) for a, b in copied]
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
