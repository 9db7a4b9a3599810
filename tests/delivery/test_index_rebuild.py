"""Hypothesis: the persistent index is only a cache of the Maildir, except for MODSEQs, which
only ever grow. Random deliveries (ours and a `cp` into new/), flag changes (ours and another
program renaming files in cur/), expunges (ours and an `rm`), restarts and deleted index
files; after every step:

- the live store, a store that just started (another process) and a store whose index files
  were deleted first give identical answers (UIDs, flags, sizes, dates: what FETCH and SEARCH
  read);
- header SEARCH and ENVELOPE answered from the stored header rows (imap/header_index.py),
  of the live store and of the fresh one, equal those computed from the message files;
- HIGHESTMODSEQ never decreases, no message's MODSEQ decreases, and every message whose flags
  changed or that is new has a MODSEQ above the previous HIGHESTMODSEQ (so CHANGEDSINCE
  misses nothing); expunges are in `expunged_since` unless the log was lost with the index.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.delivery.index_db import INDEX_FILE
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX, FolderSnapshot, MessageGoneError
from mailstack.imap import header_index, response
from mailstack.imap.commands import SearchHeader
from mailstack.imap.envelope import envelope
from mailstack.imap.fetch import ParsedMessage
from mailstack.imap.search import Scope, search

from mailstack.base.flags import FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

FLAGS = ["\\Seen", "\\Flagged", "\\Deleted", "\\Answered", "$Label1", "Work"]
LETTERS = "DFRST"
OPS = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "deliver",
                "cp",
                "store",
                "rename",
                "expunge",
                "rm",
                "claim",
                "restart",
                "drop-index",
            ]
        ),
        st.integers(min_value=0, max_value=50),
        st.sets(st.sampled_from(FLAGS), max_size=3),
        st.sampled_from(list(FlagMode)),
        st.sets(st.sampled_from(LETTERS), max_size=3),
    ),
    min_size=1,
    max_size=25,
)


def answers(snap: FolderSnapshot) -> list[tuple[int, frozenset[str], int, float, str]]:
    return [(m.uid, m.flags, m.size, m.internal_date, m.key) for m in snap.messages]


HEADER_KEYS = [
    SearchHeader("Subject", "1"),
    SearchHeader("Subject", "zürich"),
    SearchHeader("From", "user1", address=True),
    SearchHeader("Subject", ""),
]


def header_answers(store: MaildirStore, *, stored: bool) -> list[object]:
    """UIDs each of HEADER_KEYS finds, and every message's rendered ENVELOPE: from the stored
    header rows, or (`stored` False) from the message files."""
    messages = list(store.snapshot(ALICE, INBOX).messages)
    if not messages:
        return []
    scope = Scope(len(messages), messages[-1].uid)

    def read(uid: int) -> bytes:
        try:
            return store.read_message(ALICE, INBOX, uid)
        except MessageGoneError:  # pragma: no cover - nothing runs concurrently here
            return b""

    out: list[object] = []
    for key in HEADER_KEYS:
        if stored:
            found = header_index.search_stored(
                store, ALICE, INBOX, key, messages, scope, frozenset()
            )
            assert found is not None
        else:
            found = search(key, messages, scope, read)
        out.append([c.info.uid for c in found])
    if stored:
        rows = header_index.stored_headers(store, ALICE, INBOX, messages, envelopes=True)
        out.append({uid: env for uid, (_, env) in rows.items()})
    else:
        out.append(
            {
                m.uid: response.value(envelope(ParsedMessage.parse(read(m.uid)).root))
                for m in messages
            }
        )
    return out


def drop_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        (root / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=OPS)
def test_index_is_a_cache_and_modseqs_only_grow(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as tmp:
        paths = StatePaths(Path(tmp))
        store = MaildirStore(paths, hostname="mx.example.com")
        store.create_account(ALICE)
        root = paths.maildir(ALICE)
        prev = store.snapshot(ALICE, INBOX)
        log_lost = False
        for counter, (op, n, flags, mode, letters) in enumerate(ops, start=1):
            uids = [m.uid for m in prev.messages]
            pick = uids[n % len(uids)] if uids else None
            body = b"From: User %d <user%d@example.org>\nSubject: %d%s\n\nbody %d\n" % (
                n % 3,
                n % 3,
                counter,
                b" =?utf-8?q?Z=C3=BCrich?=" if n % 2 else b"",
                counter,
            )
            if op == "deliver":
                store.deliver([(ALICE, INBOX)], body)
            elif op == "cp":  # another program drops a message into new/
                name = f"{1_700_000_000 + counter}.M{counter}P1.other"
                (root / "tmp" / name).write_bytes(body)
                os.rename(root / "tmp" / name, root / "new" / name)
            elif op == "store" and pick is not None:
                store.store_flags(ALICE, INBOX, [pick], flags, mode)
            elif op == "rename":  # another program changes flags of a file in cur/
                files = sorted(os.listdir(root / "cur"))
                if files:
                    name = files[n % len(files)]
                    new = name.split(":", 1)[0] + ":2," + "".join(sorted(letters))
                    os.rename(root / "cur" / name, root / "cur" / new)
            elif op == "expunge" and pick is not None:
                store.store_flags(ALICE, INBOX, [pick], ["\\Deleted"], FlagMode.ADD)
                store.expunge(ALICE, INBOX, [pick])
            elif op == "rm":  # another program expunges
                files = sorted(os.listdir(root / "cur")) + sorted(os.listdir(root / "new"))
                if files:
                    name = files[n % len(files)]
                    sub = "cur" if ":" in name else "new"
                    (root / sub / name).unlink()
            elif op == "claim":
                store.snapshot(ALICE, INBOX, claim_recent=True)
            elif op == "restart":
                store = MaildirStore(paths, hostname="mx.example.com")
            elif op == "drop-index":
                drop_index(root)
                log_lost = True
            snap = store.snapshot(ALICE, INBOX)
            # MODSEQ rules against the previous observation (before another process looks:
            # the live store must notice every change by itself).
            assert snap.highest_modseq >= prev.highest_modseq, op
            before = {m.uid: m for m in prev.messages}
            for m in snap.messages:
                assert m.modseq <= snap.highest_modseq
                old = before.get(m.uid)
                if old is None or old.flags != m.flags:
                    assert m.modseq > prev.highest_modseq, (op, m, old)
                else:
                    assert m.modseq >= old.modseq, (op, m, old)
            gone = set(before) - {m.uid for m in snap.messages}
            logged = store.expunged_since(ALICE, INBOX, prev.highest_modseq)
            if logged is None:
                assert log_lost, op
            else:
                assert gone <= set(logged), (op, gone, logged)
            # Another process, and one that starts from no index at all, see the same.
            fresh = MaildirStore(paths, hostname="mx.example.com").snapshot(ALICE, INBOX)
            assert answers(fresh) == answers(snap), op
            # Header SEARCH and ENVELOPE from stored rows: live, fresh, and from the files.
            expected = header_answers(store, stored=False)
            assert header_answers(store, stored=True) == expected, op
            fresh_store = MaildirStore(paths, hostname="mx.example.com")
            assert header_answers(fresh_store, stored=True) == expected, op
            prev = snap
        drop_index(root)
        rebuilt = MaildirStore(paths, hostname="mx.example.com").snapshot(ALICE, INBOX)
        assert answers(rebuilt) == answers(prev)
        rebuilt_store = MaildirStore(paths, hostname="mx.example.com")
        expected = header_answers(rebuilt_store, stored=False)
        assert header_answers(rebuilt_store, stored=True) == expected
        assert min((m.modseq for m in rebuilt.messages), default=prev.highest_modseq + 1) > (
            prev.highest_modseq
        )
