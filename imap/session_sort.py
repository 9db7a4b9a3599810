"""SORT and THREAD in the selected state (RFC 5256, RFC 5957 SORT=DISPLAY). A mixin of
`Session`.

The searched messages are found as SEARCH finds them (imap/search.py); then each one's
header fields come from the stored header rows (imap/header_index.py, filled on first use),
or, when the key reads other fields, its header block is read through the store, a batch of
messages per store call (one folder lock per batch); either is reduced to what imap/sort.py
sorts and imap/thread.py threads by. SORT by ARRIVAL and SIZE alone reads no message (for a
client without UTF8=ACCEPT, SIZE is the downgraded size: each message read once, ever;
imap/downgrade_size.py).
"""

from __future__ import annotations

import asyncio

from mailstack.delivery.store import MessageGoneError
from mailstack.imap import commands as c
from mailstack.imap import header_index, response, search, sort, thread
from mailstack.imap.session_base import RefusedError, SessionCore, Write
from mailstack.imap.session_select import HEADER_BATCH, _resolve_saved

# RFC 5256 §3: US-ASCII and UTF-8 must be supported; search strings in either need no
# conversion, and every other charset is refused with the list of these two.
CHARSETS = ("UTF-8", "US-ASCII")


class SortCommands(SessionCore):
    """SORT, THREAD and their UID forms."""

    async def _sort_or_thread(self, command: c.Sort | c.Thread, write: Write) -> None:
        if command.charset not in CHARSETS:
            raise RefusedError(
                f"charset {command.charset} is not supported", "BADCHARSET (UTF-8 US-ASCII)"
            )
        criteria = (
            [sort.Criterion(k.key, k.reverse) for k in command.criteria]
            if isinstance(command, c.Sort)
            else None
        )
        with_headers = criteria is None or sort.needs_header(criteria)
        if isinstance(command, c.Sort):
            self._context_check(command)  # RFC 5267 §4 CONTEXT=SORT (imap/session_context.py)
        sized = any(k.key == "SIZE" for k in criteria or [])
        messages = await asyncio.to_thread(self._sortable, command.key, with_headers, sized)

        def number(m: sort.Message) -> int:
            return m.info.uid if command.uid else m.seq

        refused = b""
        if isinstance(command, c.Sort) and command.is_esort:  # RFC 5267 §3: ESEARCH form
            ordered = sort.sort(messages, criteria or [])
            numbers = [number(m) for m in ordered]
            tag = response.string(command.tag).decode("ascii")
            items = sort.esort_items(numbers, command.returns, command.partial)
            line = " ".join([f"ESEARCH (TAG {tag})", *(["UID"] if command.uid else []), *items])
            key = _resolve_saved(command.key, self._sel().saved)
            refused = self._context_start_sort(command, key, criteria or [], ordered)
        elif isinstance(command, c.Sort):
            ordered = sort.sort(messages, criteria or [])
            line = " ".join(["SORT", *(str(number(m)) for m in ordered)])
        else:
            algorithm = (
                thread.references if command.algorithm == "REFERENCES" else thread.ordered_subject
            )
            threads = algorithm(messages)
            line = "THREAD" + (" " + thread.render(threads, number) if threads else "")
        await write(response.untagged(line) + refused)
        name = type(command).__name__.upper()
        await write(response.ok(command.tag, f"{'UID ' if command.uid else ''}{name} completed"))

    def _sortable(self, key: c.SearchKey, with_headers: bool, sized: bool) -> list[sort.Message]:
        """The messages `key` selects, with what SORT/THREAD need (runs in a worker thread);
        `sized`: SORT by SIZE, the RFC822.SIZE this client sees (imap/downgrade_size.py)."""
        sel = self._sel()
        user = self._require_user()
        store = self.ctx.store
        name = sel.name
        snapshot = list(sel.messages)
        order = [m.uid for m in snapshot]
        position = {uid: i for i, uid in enumerate(order)}
        headers: dict[int, bytes] = {}
        key = _resolve_saved(key, sel.saved)
        names = header_index.key_fields(key)
        # Stored header rows (imap/header_index.py) hold every field SORT/THREAD read; they
        # stand in for the header block when the key reads no other field (nor the body).
        rows = (
            header_index.stored_headers(store, user, name, snapshot)
            if with_headers and names is not None and names <= header_index.INDEXED
            else None
        )

        def read_header(uid: int) -> bytes:
            if rows is not None and uid in rows:
                return rows[uid][0]
            if uid not in headers:
                headers.clear()  # at most one batch in memory
                start = position.get(uid, 0)
                batch = order[start : start + HEADER_BATCH] if uid in position else [uid]
                headers.update(store.read_headers(user, name, batch))
            return headers.get(uid, b"")  # b"": expunged meanwhile

        def read(uid: int) -> bytes:
            try:
                return store.read_message(user, name, uid)
            except MessageGoneError:
                return b""

        sizes = None
        if search.reads_size(key):
            sizes = self._seen_sizes(user, name, snapshot)
        found = search.search(
            key,
            snapshot,
            search.Scope(len(snapshot), sel.largest_uid),
            read,
            recent_uids=frozenset(sel.recent),
            read_header=read_header,
            sizes=sizes,
        )
        if sized and sizes is None:  # only the messages found
            sizes = self._seen_sizes(user, name, [f.info for f in found])
        out = []
        for candidate in found:
            header = read_header(candidate.info.uid) if with_headers else b""
            size = None if sizes is None else sizes.get(candidate.info.uid)
            out.append(sort.Message.of(candidate.seq, candidate.info, header, size))
        return out
