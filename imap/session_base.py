"""What the session's parts share: errors that become responses, the selected folder, and
`SessionCore`, the state and helpers the command mixins (imap/session_mailbox.py,
imap/session_select.py) work on. `imap/session.py` puts them together as `Session`; its
docstring states the invariants.

`_sync` is here because every selected-state command starts with it: it brings the selected
folder up to date and reports the differences (EXISTS, EXPUNGE, FETCH FLAGS) as RFC 9051 §7.5.1
allows at that moment. Once the client enabled CONDSTORE (RFC 7162 §3.1) those FETCHes carry
MODSEQ; once it enabled QRESYNC, expunges are reported as `* VANISHED uids` (§3.2.10).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from mailstack.delivery.services import ServerContext
from mailstack.delivery.store import (
    FolderChanges,
    FolderNotFoundError,
    FolderSnapshot,
    MessageInfo,
)
from mailstack.imap import commands as c
from mailstack.imap import condstore, downgrade_size, response, sort, utf7
from mailstack.imap.cache import StructureCache, StructureCaches
from mailstack.imap.commands import Command, List, Lsub
from mailstack.imap.message_list import MessageList
from mailstack.imap.protocol import ImapProtocol, State
from mailstack.imap.sequence import SequenceSet

from mailstack.base.flags import Flag

Write = Callable[[bytes], Awaitable[None]]
_T = TypeVar("_T")


def _nothing() -> None:
    """`_sync_after`'s work for a plain sync."""


Sizes = dict[int, int] | None  # `SessionCore._seen_sizes`: None means the stored sizes

SYSTEM_FLAGS = tuple(f.value for f in Flag)
RECENT = "\\Recent"
STRUCTURE_CACHE_SIZE = 5000  # per session; a rendered structure is a few hundred bytes
FETCH_BATCH = 50  # messages rendered per worker-thread trip, so big FETCHes stream


class RefusedError(Exception):
    """Answer the command with `NO [code] text`."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


class InvalidCommandError(Exception):
    """Answer the command with `BAD text`."""


class SelectionLostError(Exception):
    """The selected folder went away or was renumbered during the command; BYE was sent
    (`_lose_selection`): the command says nothing more. Except where sending it again would
    duplicate mail: APPEND, COPY and MOVE still send their tagged OK after the BYE (as LOGOUT
    does); a STORE or EXPUNGE repeated changes nothing. `done`: what the store call returned."""

    def __init__(self, done: object = None) -> None:
        super().__init__("the selected mailbox is gone")
        self.done = done


@dataclass
class Selected:
    """The selected folder as this session has reported it to the client."""

    name: str
    readonly: bool
    uid_validity: int
    uid_next: int
    keywords: tuple[str, ...]
    messages: MessageList  # index = sequence number - 1 (the snapshot's, until changed)
    recent: set[int]
    saved: tuple[int, ...] = ()  # SEARCHRES "$": UIDs (RFC 5182)
    highest_modseq: int = 0  # RFC 7162 HIGHESTMODSEQ as last reported
    # The MODSEQ `_sync` has caught up to (own STOREs do not move it: a change another
    # session made just before ours must still be found), and expunges seen but not yet
    # reported (RFC 9051 §7.5.1 forbids them during FETCH/STORE/SEARCH by number).
    synced_modseq: int = 0
    pending_expunges: set[int] = dataclasses.field(default_factory=set)

    @property
    def largest_uid(self) -> int:
        return self.messages[-1].uid if self.messages else 0

    def position(self, uid: int) -> int | None:
        """Index of `uid` in `messages` (sequence number - 1), by bisection (UID order)."""
        return self.messages.position(uid)

    def info(self, uid: int) -> MessageInfo | None:
        """The message `uid` as this session knows it, if it does."""
        i = self.position(uid)
        return None if i is None else self.messages[i]


def _first_of(run: tuple[int, Sequence[MessageInfo]]) -> int:
    return run[0]


class Targets(Sequence[tuple[int, MessageInfo]]):
    """The (sequence number, message) pairs of a command, made when asked from runs of
    consecutive messages (slices of the session's messages, which may change while a FETCH
    yields; a whole slice of the shared snapshot is that tuple itself, no copy). `1:*` of
    100,000 messages as a list of pairs cost about 7 MB a session, and eight sessions
    fetching at once held eight."""

    __slots__ = ("_ends", "_runs")

    def __init__(self) -> None:
        self._runs: list[tuple[int, Sequence[MessageInfo]]] = []  # (first number, messages)
        self._ends: list[int] = []  # pairs up to the end of each run

    def add(self, first: int, messages: Sequence[MessageInfo]) -> None:
        """A run: `messages` numbered from `first` (after every run added before)."""
        if messages:
            self._runs.append((first, messages))
            self._ends.append(len(self) + len(messages))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def _pair(self, i: int) -> tuple[int, MessageInfo]:
        run = bisect.bisect_right(self._ends, i)
        first, messages = self._runs[run]
        offset = i - (self._ends[run - 1] if run else 0)
        return (first + offset, messages[offset])

    @overload
    def __getitem__(self, i: int) -> tuple[int, MessageInfo]: ...

    @overload
    def __getitem__(self, i: slice) -> list[tuple[int, MessageInfo]]: ...

    def __getitem__(
        self, i: int | slice
    ) -> tuple[int, MessageInfo] | list[tuple[int, MessageInfo]]:
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self._pair(n) for n in range(start, stop, step)]
            return self._span(start, stop)
        n = i + len(self) if i < 0 else i
        if not 0 <= n < len(self):
            raise IndexError(i)
        return self._pair(n)

    def _span(self, start: int, stop: int) -> list[tuple[int, MessageInfo]]:
        """Pairs start..stop-1, a run's slice at a time (a FETCH takes its batches so: one
        bisection per pair cost a tenth of a first header fetch's own work)."""
        out: list[tuple[int, MessageInfo]] = []
        run = bisect.bisect_right(self._ends, start)
        while start < stop and run < len(self._runs):
            first, messages = self._runs[run]
            base = self._ends[run - 1] if run else 0
            lo, hi = start - base, min(stop, self._ends[run]) - base
            out.extend(enumerate(messages[lo:hi], first + lo))
            start = base + hi
            run += 1
        return out

    def __iter__(self) -> Iterator[tuple[int, MessageInfo]]:
        for first, messages in self._runs:
            yield from enumerate(messages, first)

    def covers(self, seq: int) -> bool:
        """Is message number `seq` one of the pairs?"""
        run = bisect.bisect_right(self._runs, seq, key=_first_of) - 1
        if run < 0:
            return False
        first, messages = self._runs[run]
        return seq < first + len(messages)

    def changed_since(self, modseq: int) -> list[tuple[int, MessageInfo]]:
        """The pairs whose message's MODSEQ is above `modseq` (CHANGEDSINCE, RFC 7162
        §3.1.4.1): a resync of a 100,000-message folder looks at each once, in C-speed
        runs, not through `__iter__` (half the cost of that FETCH)."""
        return [
            pair
            for first, messages in self._runs
            for pair in enumerate(messages, first)
            if pair[1].modseq > modseq
        ]


# Rendered flag lists by (flags, \Recent?): a folder has a handful of distinct flag sets, and
# sorting and joining them per message was a tenth of a `FETCH 1:* (FLAGS)`.
_FLAG_LISTS: dict[tuple[frozenset[str], bool], bytes] = {}


def flags_of(info: MessageInfo, recent: set[int]) -> bytes:
    key = (info.flags, info.uid in recent)
    out = _FLAG_LISTS.get(key)
    if out is None:
        out = response.flag_list(sorted(info.flags | {RECENT} if key[1] else info.flags))
        if len(_FLAG_LISTS) >= 4096:  # keywords make many sets: start over
            _FLAG_LISTS.clear()
        _FLAG_LISTS[key] = out
    return out


# Command fields that hold a mailbox name or a LIST pattern (imap/commands.py).
_NAME_FIELDS = ("mailbox", "old", "new", "reference")


def names_from_utf8(command: Command) -> Command:
    """`command` with its mailbox names as the store keeps them (modified UTF-7), for an
    IMAP4rev2 client, which sends them in UTF-8 (RFC 9051 §5.1). "&" becomes "&-"."""
    changes: dict[str, object] = {
        name: _to_utf7(getattr(command, name))
        for name in _NAME_FIELDS
        if isinstance(getattr(command, name, None), str)
    }
    if isinstance(command, List):
        changes["patterns"] = tuple(_to_utf7(p) for p in command.patterns)
    if isinstance(command, Lsub):
        changes["pattern"] = _to_utf7(command.pattern)
    return dataclasses.replace(command, **changes) if changes else command  # type: ignore[arg-type]


def _to_utf7(name: str) -> str:
    return name if name == "INBOX" else utf7.encode(name)


def checked_name(name: str) -> str:
    """A mailbox name as the store takes it: valid modified UTF-7, no empty levels.

    A name the grammar accepts but we cannot store is a refusal (NO), not a syntax error
    (BAD, RFC 9051 §7.1.3): the command was well formed, and Dovecot answers NO too."""
    if not name or not utf7.is_valid(name):
        raise RefusedError(
            f"{name!r} is not a valid mailbox name (modified UTF-7, RFC 3501 §5.1.3)", "CANNOT"
        )
    return name


def storable(flags: tuple[str, ...]) -> list[str]:
    """Flags a client may set: system flags but \\Recent, and keywords (RFC 9051 §2.3.2)."""
    out = []
    for flag in flags:
        if flag == RECENT:
            continue  # RFC 3501 §2.3.2: \Recent cannot be altered by the client; ignore it
        if flag.startswith("\\") and flag not in SYSTEM_FLAGS:
            raise InvalidCommandError(f"{flag} is not a flag that can be stored")
        out.append(flag)
    return out


class SessionCore:
    """State and helpers shared by the command mixins; `Session.__init__` sets the fields."""

    ctx: ServerContext
    # The listeners' structure caches (one open SQLite file per account), owned by their
    # ImapService (imap/server.py) and shared by every session of it.
    caches: StructureCaches
    proto: ImapProtocol
    user: str | None
    selected: Selected | None
    rev2: bool  # ENABLE IMAP4rev2: no \Recent, ESEARCH answers, UTF-8 mailbox names
    utf8_accept: bool  # ENABLE UTF8=ACCEPT (RFC 6855): UTF-8 names, strings and headers
    log: logging.LoggerAdapter[logging.Logger]
    # (folder, UIDVALIDITY, UID) -> ENVELOPE/BODY/BODYSTRUCTURE, oldest first
    _structures: dict[tuple[str, int, int], response.RenderedStructure]
    # RFC 7162: enabled by ENABLE or by a CONDSTORE-enabling command; never turned off.
    condstore: bool = False
    qresync: bool = False
    # Where `_thread` runs store calls: the service's few threads (imap/server.py,
    # IMAP_THREADS); None (a session outside a service): the loop's default pool.
    executor: Executor | None = None

    async def _thread(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """`asyncio.to_thread` on `executor`: a command's short store calls (what changed,
        STORE/EXPUNGE/APPEND, SELECT's snapshot, FETCH batches). Long ones (SEARCH, SORT,
        folder operations) keep the default pool, so they cannot hold these few threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def _context_check(self, command: c.Search | c.Sort) -> bool:
        """May this SEARCH/SORT keep an UPDATE context? (imap/session_context.py, RFC 5267)"""
        return False

    def _context_start(self, command: c.Search, key: c.SearchKey, uids: list[int]) -> bytes:
        """Keep a SEARCH's UPDATE context; what to write first (imap/session_context.py)."""
        return b""

    def _context_start_sort(
        self,
        command: c.Sort,
        key: c.SearchKey,
        criteria: list[sort.Criterion],
        ordered: list[sort.Message],
    ) -> bytes:
        """Keep a SORT's UPDATE context (CONTEXT=SORT, imap/session_context.py)."""
        return b""

    def _metadata_renamed(self, old: str, new: str) -> None:
        """A folder was renamed (imap/session_metadata.py carries its annotations along)."""

    def _metadata_deleted(self, name: str) -> None:
        """A folder was deleted (imap/session_metadata.py drops its annotations)."""

    def _mailbox_out(self, name: str) -> bytes:
        """A stored (modified UTF-7) name as this client reads it: UTF-8 after ENABLE
        IMAP4rev2 (RFC 9051 §5.1), else as stored."""
        if self.utf8_names:
            with contextlib.suppress(utf7.Utf7Error):  # a foreign name: show it as it is
                name = utf7.decode(name)
        return response.mailbox(name)

    @property
    def utf8_names(self) -> bool:
        """Mailbox names (and message headers) go out in UTF-8: after ENABLE IMAP4rev2 (RFC
        9051 §5.1) or ENABLE UTF8=ACCEPT (RFC 6855 §3)."""
        return self.rev2 or self.utf8_accept

    def _claims_recent(self, readonly: bool) -> bool:
        """Does opening a folder take \\Recent from its new messages? Not read-only (RFC 3501
        §6.3.2), and not for an IMAP4rev2 session, which cannot report it (RFC 9051 has no
        \\Recent): an IMAP4rev1 session of the same account still sees those as recent."""
        return not readonly and not self.rev2

    def _require_user(self) -> str:
        if self.user is None:  # pragma: no cover - the protocol checks the state first
            raise InvalidCommandError("not logged in")
        return self.user

    def _sel(self) -> Selected:
        if self.selected is None:  # pragma: no cover - the protocol checks the state first
            raise InvalidCommandError("no mailbox selected")
        return self.selected

    async def _snapshot(self, folder: str, *, claim_recent: bool) -> FolderSnapshot:
        snap: FolderSnapshot = await self._thread(
            self.ctx.store.snapshot, self._require_user(), folder, claim_recent=claim_recent
        )
        return snap

    async def _sync(self, write: Write, *, allow_expunge: bool) -> None:
        """Bring the selected folder up to date and report the differences to the client:
        from the store's changes since `synced_modseq` (cost: the changes), or by comparing a
        whole snapshot when the store cannot tell every expunge since then. The usual answer,
        "nothing changed", comes from `changes_now` without a trip to a thread: each trip
        puts a command behind every other session's ready work once more."""
        sel = self.selected
        if sel is None:
            return
        if sel.synced_modseq:
            now = self.ctx.store.changes_now(
                self._require_user(),
                sel.name,
                sel.synced_modseq,
                claim_recent=self._claims_recent(sel.readonly),
            )
            if now is not None:
                await self._report(write, sel, now, allow_expunge=allow_expunge)
                return
        with contextlib.suppress(SelectionLostError):  # BYE sent: the caller sees LOGOUT
            await self._sync_after(_nothing, write, allow_expunge=allow_expunge)

    async def _sync_after(
        self,
        work: Callable[[], _T],
        write: Write,
        *,
        allow_expunge: bool,
        then: Callable[[_T], object] | None = None,
    ) -> _T:
        """`work()` (a store call that changes the selected folder: STORE, EXPUNGE, APPEND
        into it), then `_sync`, in one thread trip, so that the session's next command finds
        nothing new; `then(result)` on the event loop before the changes are reported (STORE
        takes its own changes in, so they are not reported twice). Returns what `work`
        returned; its exceptions are raised before anything is reported. When the folder
        was lost meanwhile (BYE sent), raises SelectionLostError holding that instead."""
        sel = self.selected
        if sel is None or not sel.synced_modseq:
            done = await self._thread(work)
            if then is not None:
                then(done)
            await self._sync_full(write, allow_expunge=allow_expunge)
            return self._unless_lost(done)
        ask = functools.partial(
            self.ctx.store.changes,
            self._require_user(),
            sel.name,
            sel.synced_modseq,
            claim_recent=self._claims_recent(sel.readonly),
        )

        def trip() -> tuple[_T, FolderChanges | None, bool]:
            done = work()
            try:
                return done, ask(), False
            except FolderNotFoundError:
                return done, None, True

        done, changes, is_gone = await self._thread(trip)
        if then is not None:
            then(done)
        if is_gone:
            await self._lose_selection(write, "the selected mailbox was deleted or renamed")
        elif changes is None:
            await self._sync_full(write, allow_expunge=allow_expunge)
        else:
            await self._report(write, sel, changes, allow_expunge=allow_expunge)
        return self._unless_lost(done)

    def _unless_lost(self, done: _T) -> _T:
        """`done`, unless the sync sent BYE (folder gone, UIDVALIDITY changed): then nothing
        may follow but what the caller decides (SelectionLostError)."""
        if self.proto.state is State.LOGOUT:
            raise SelectionLostError(done)
        return done

    async def _report(
        self, write: Write, sel: Selected, changes: FolderChanges, *, allow_expunge: bool
    ) -> None:
        """Tell the client what `changes` holds that it was not told yet."""
        if changes.uid_validity != sel.uid_validity:
            await self._lose_selection(write, "UIDVALIDITY of the selected mailbox changed")
            return
        out = self._new_keywords(sel, changes.keywords)
        sel.pending_expunges.update(u for u in changes.expunged if sel.position(u) is not None)
        if allow_expunge and sel.pending_expunges:
            gone = sorted(sel.pending_expunges, reverse=True)  # highest first: lower hold
            sel.pending_expunges = set()
            for uid in gone:
                i = sel.position(uid)
                if i is not None:
                    del sel.messages[i]
                    if not self.qresync:
                        out.append(response.expunge(i + 1))
            if self.qresync:  # RFC 7162 §3.2.10: VANISHED replaces EXPUNGE
                out.append(condstore.vanished(gone, earlier=False))
            sel.recent.difference_update(gone)
        # Counted after the expunges: EXPUNGE itself tells the smaller count (RFC 9051
        # §7.5.1), so EXISTS and RECENT are sent for arrivals only, as in _sync_full.
        old_count, old_recent = len(sel.messages), len(sel.recent)
        largest = sel.largest_uid
        arrived = []
        for new in changes.changed:
            if new.uid > largest:
                arrived.append(new)
                continue
            i = sel.position(new.uid)
            if i is None:
                continue  # expunged and already reported
            old = sel.messages[i]
            if new.flags == old.flags and new.modseq == old.modseq:
                continue  # our own STORE, already reported
            sel.messages[i] = new
            if new.flags != old.flags or self.condstore:
                items = [b"UID %d" % new.uid, b"FLAGS " + flags_of(new, sel.recent)]
                if self.condstore:  # RFC 7162 §3.1.4.1
                    items.append(condstore.modseq_item(new.modseq))
                out.append(response.fetch(i + 1, items))
        sel.messages.extend(arrived)
        if not sel.readonly and not self.rev2:  # RFC 9051 has no \Recent
            sel.recent |= changes.recent_uids
        sel.uid_next = changes.uid_next
        sel.synced_modseq = changes.highest_modseq
        sel.highest_modseq = max(sel.highest_modseq, changes.highest_modseq)
        if len(sel.messages) != old_count:
            out.append(response.exists(len(sel.messages)))
        if len(sel.recent) != old_recent:
            out.append(response.recent(len(sel.recent)))
        if out:
            await write(b"".join(out))

    async def _lose_selection(self, write: Write, reason: str) -> None:
        """The selected folder was deleted, renamed or renumbered under us: nothing can be
        reported sensibly, so the session ends (Dovecot does this)."""
        await write(response.bye(reason))
        self.proto.state = State.LOGOUT
        self.selected = None

    def _new_keywords(self, sel: Selected, keywords: tuple[str, ...]) -> list[bytes]:
        """The start of a sync's output: FLAGS (and PERMANENTFLAGS) when keywords were added,
        before any FETCH that shows one (RFC 9051 §7.3.5)."""
        if not set(keywords) - set(sel.keywords):
            return []
        sel.keywords = keywords
        return [self._keywords_response(sel)]

    async def _sync_full(self, write: Write, *, allow_expunge: bool) -> None:
        """`_sync` by comparing a whole snapshot with what the client was told."""
        sel = self.selected
        if sel is None:
            return
        try:
            snap = await self._snapshot(sel.name, claim_recent=self._claims_recent(sel.readonly))
        except FolderNotFoundError:
            await self._lose_selection(write, "the selected mailbox was deleted or renamed")
            return
        if snap.uid_validity != sel.uid_validity:
            await self._lose_selection(write, "UIDVALIDITY of the selected mailbox changed")
            return
        out = self._new_keywords(sel, snap.keywords)
        current = {m.uid: m for m in snap.messages}
        if allow_expunge:
            gone: list[int] = []
            for seq in range(len(sel.messages), 0, -1):  # highest first: lower numbers hold
                if sel.messages[seq - 1].uid not in current:
                    gone.append(sel.messages[seq - 1].uid)
                    del sel.messages[seq - 1]
                    if not self.qresync:
                        out.append(response.expunge(seq))
            if self.qresync:  # RFC 7162 §3.2.10: VANISHED replaces EXPUNGE
                out.append(condstore.vanished(gone, earlier=False))
        for seq, old in enumerate(sel.messages, start=1):
            new = current.get(old.uid)
            if new is None or (new.flags == old.flags and new.modseq == old.modseq):
                continue
            sel.messages[seq - 1] = new
            if new.flags != old.flags or self.condstore:
                items = [b"UID %d" % new.uid, b"FLAGS " + flags_of(new, sel.recent)]
                if self.condstore:  # RFC 7162 §3.1.4.1
                    items.append(condstore.modseq_item(new.modseq))
                out.append(response.fetch(seq, items))
        sel.highest_modseq = max(sel.highest_modseq, snap.highest_modseq)
        if allow_expunge:
            sel.pending_expunges = set()
            sel.synced_modseq = snap.highest_modseq  # else the next one compares again
        old_count, old_recent = len(sel.messages), len(sel.recent)
        largest = sel.largest_uid
        sel.messages.extend(m for m in snap.messages if m.uid > largest)
        if not sel.readonly and not self.rev2:  # RFC 9051 has no \Recent
            sel.recent |= snap.recent_uids
        sel.recent &= set(current)
        sel.uid_next = snap.uid_next
        if len(sel.messages) != old_count:
            out.append(response.exists(len(sel.messages)))
        if len(sel.recent) != old_recent:
            out.append(response.recent(len(sel.recent)))
        if out:
            await write(b"".join(out))

    async def _enable(self, command: c.Enable, write: Write) -> None:
        """RFC 5161 ENABLE; we implement IMAP4rev2, UTF8=ACCEPT, CONDSTORE and QRESYNC (RFC
        7162 §3.2.3: QRESYNC implies CONDSTORE). ENABLED lists what this command turned on."""
        enabled = []
        for cap in dict.fromkeys(command.capabilities):
            if cap == "IMAP4REV2" and not self.rev2:
                self.rev2 = True  # RFC 9051: the session follows IMAP4rev2 from now on
                enabled.append("IMAP4rev2")
            elif cap == "UTF8=ACCEPT" and not self.utf8_accept:
                self.utf8_accept = True  # RFC 6855 §3: UTF-8 names, strings and headers
                enabled.append(cap)
            elif cap == "CONDSTORE" and not self.condstore:
                enabled.append(cap)
            elif cap == "QRESYNC" and not self.qresync:
                enabled.append(cap)
                self.qresync = True
        if {"CONDSTORE", "QRESYNC"} & set(enabled):
            await self._condstore_on(write)
        await write(response.untagged(" ".join(["ENABLED", *enabled])))
        await write(response.ok(command.tag, "ENABLE completed"))

    async def _condstore_on(self, write: Write) -> None:
        """Turn CONDSTORE on; with a mailbox selected, tell its HIGHESTMODSEQ (RFC 7162 §3.1:
        the first CONDSTORE-enabling command in the selected state)."""
        if self.condstore:
            return
        self.condstore = True
        sel = self.selected
        if sel is not None:
            code = condstore.highest_modseq_code(sel.highest_modseq)
            await write(response.untagged_status("OK", "highest", code))

    async def _resync_lines(
        self, sel: Selected, modseq: int, uids: SequenceSet | None
    ) -> tuple[bytes, list[tuple[int, MessageInfo]]]:
        """What changed since `modseq` among `uids` (all when None): `* VANISHED (EARLIER)`
        of the expunged UIDs (RFC 7162 §3.2.5.2, §3.2.6) and the (seq, message) pairs whose
        MODSEQ is above it. The expunge log answers exactly; when it does not reach back so
        far, every missing UID in range is reported instead."""
        limit = max(sel.uid_next - 1, sel.largest_uid)
        present = [m.uid for m in sel.messages]
        expunged = await self._thread(
            self.ctx.store.expunged_since, self._require_user(), sel.name, modseq
        )
        if expunged is None:
            line = condstore.vanished_ranges(
                condstore.missing_uids(present, limit, uids), earlier=True
            )
        else:
            still = set(present)  # expunged meanwhile but not yet reported: later, not twice
            gone = [u for u in condstore.expunged_in(expunged, uids, limit) if u not in still]
            line = condstore.vanished(gone, earlier=True)
        wanted = None if uids is None else set(uids.select(present, limit))
        changed = [
            (seq, m)
            for seq, m in enumerate(sel.messages, 1)
            if m.modseq > modseq and (wanted is None or m.uid in wanted)
        ]
        return line, changed

    async def _qresync_select(self, sel: Selected, params: c.Qresync) -> bytes:
        """The resync part of SELECT/EXAMINE (QRESYNC ...) (RFC 7162 §3.2.5.2): nothing when
        the UIDVALIDITY differs (the client starts over)."""
        if params.uid_validity != sel.uid_validity:
            return b""
        line, changed = await self._resync_lines(sel, params.modseq, params.known_uids)
        fetches = [
            response.fetch(
                seq,
                [
                    b"UID %d" % m.uid,
                    b"FLAGS " + flags_of(m, sel.recent),
                    condstore.modseq_item(m.modseq),
                ],
            )
            for seq, m in changed
        ]
        return line + b"".join(fetches)

    @staticmethod
    def _flags_response(keywords: tuple[str, ...]) -> bytes:
        return response.untagged(b"FLAGS " + response.flag_list((*SYSTEM_FLAGS, *keywords)))

    @classmethod
    def _keywords_response(cls, sel: Selected) -> bytes:
        """FLAGS and, if the mailbox is writable, PERMANENTFLAGS after the set of keywords
        grew: both lists changed, and a client learns the new ones as Dovecot tells them."""
        out = cls._flags_response(sel.keywords)
        if not sel.readonly:
            permanent = response.flag_list((*SYSTEM_FLAGS, *sel.keywords, "\\*")).decode()
            out += response.untagged_status(
                "OK", "flags that can be stored", f"PERMANENTFLAGS {permanent}"
            )
        return out

    def _targets(self, seqset: SequenceSet, *, uid: bool) -> Sequence[tuple[int, MessageInfo]]:
        """(sequence number, message) pairs named by a sequence set, in order."""
        sel = self._sel()
        if seqset.is_saved:
            saved = set(sel.saved)
            return [(i, m) for i, m in enumerate(sel.messages, 1) if m.uid in saved]
        if uid:
            # By bisection per range: a UID FETCH/STORE of a few messages in a 100,000
            # folder costs the few, not the folder.
            out = Targets()
            for low, high in seqset.intervals(sel.largest_uid):
                i, j = sel.messages.uid_span(low, high)
                out.add(i + 1, sel.messages[i:j])
            return out
        count = len(sel.messages)
        for r in seqset.ranges:
            # RFC 9051 §6.4.5: a number beyond the mailbox is an error. A range with "*" is
            # not: "5:*" in a 3-message mailbox means 3:5, and "1:*" in an empty one nothing
            # (clients send it blindly after SELECT).
            if r.start is not None and r.end is not None and max(r.start, r.end) > count:
                raise InvalidCommandError(
                    f"no message {max(r.start, r.end)} (the mailbox has {count})"
                )
        targets = Targets()
        for low, high in seqset.intervals(count):  # ascending, disjoint (sequence.py)
            low, high = max(low, 1), min(high, count)
            if low <= high:  # slices: "1:*" of a big folder is a copy, not a loop
                targets.add(low, sel.messages[low - 1 : high])
        return targets

    def _disk_cache(self, user: str) -> StructureCache:
        """The account's on-disk structure cache (imap/cache.py)."""
        return self.caches.for_root(self.ctx.paths.maildir(user))

    def _seen_sizes(self, user: str, folder: str, infos: Sequence[MessageInfo]) -> Sizes:
        """{uid: RFC822.SIZE} of `infos` as this client sees them, for every path that reads
        a size (SEARCH LARGER/SMALLER, SORT SIZE, STATUS SIZE; FETCH does the same):
        downgraded for a client without UTF8=ACCEPT (imap/downgrade_size.py: remembered,
        so each message is read at most once), None for a UTF-8 client, which sees the
        stored sizes. Runs in a worker thread."""
        if self.utf8_names:
            return None
        cache = self._disk_cache(user)
        return downgrade_size.sizes_seen(cache, self.ctx.store, user, folder, infos)
