"""Memory an open folder's index costs per message (issue 11: a 100,000-message INBOX held about
1.7 KB a message in the serving process).

Measured with tracemalloc, not timed: the Python allocations a fresh `MaildirStore` makes while
it opens a 5,000-message INBOX whose uidlist and index file exist (a restart of `serve`), and
while it opens one never seen before (no uidlist, no index file: mail another program left),
the snapshot kept alive as a session keeps it.

Every index holds each message's base name once; the test makes those strings (interned, as
the index interns them) before it measures and counts what the index holds besides: its
structures and any copy of a name (the whole file names included: the index keeps a base and
a suffix shared by the messages with the same flags). Interning them first also keeps the
interpreter's table of interned strings from growing during the measurement, which it may or
may not do depending on what ran before (a resize would add megabytes at once).

The bound: before the index shared its strings (one interned base name and file name per
message instead of up to four copies) and dropped its duplicate maps (`_entry_of`, a second
(mtime, S, W) tuple per message, a (sub, name) tuple per listed file) this measured about 1,300
bytes a message after a restart and 1,000 on a first open; afterwards about 510 and 450. Then
(2026-12-06, night) the index file's flags and MODSEQs went into an array (index_known.py), an
entry became its own MessageInfo, and the uidlist's record objects were dropped: about 260 and
265. Later that night the index stopped keeping whole file names (a base name and a shared
suffix instead) and its dict of entries by UID (bisection in an array of UIDs instead): with
only the base names held by the test, the code before measures about 750 after a restart
(its names interned, the interpreter's table of them grown) and 367 on a first open; after,
241 and 244. The bound sits between, with room for the interpreter's own variation (dict
tables grow in powers of two) but not for a return of any of those objects.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
from pathlib import Path

import pytest
from mailstack.delivery.layout import unique_name
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX

from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

MESSAGES = 5_000
START = 1_700_000_000
PEAK_BOUND = 650


def fill(root: Path) -> list[str]:
    """MESSAGES small files in cur/, two in three \\Seen, named as our deliveries name them;
    returns each one's base name, interned."""
    body = b"From: a@example.com\nSubject: hello\n\nbody\n"
    names = []
    for i in range(MESSAGES):
        base = unique_name("mx.example.com", len(body), len(body) + 4, now=START + i)
        name = f"{base}:2,{'S' if i % 3 else ''}"
        path = root / "cur" / name
        path.write_bytes(body)
        os.utime(path, (START + i, START + i))
        names.append(sys.intern(base))
    return names


def bytes_per_message(paths: StatePaths) -> tuple[float, float]:
    """(held, peak) bytes a message while a fresh store opens the folder."""
    gc.collect()
    tracemalloc.start()
    try:
        store = MaildirStore(paths, hostname="mx.example.com")
        snapshot = store.snapshot(ALICE, INBOX)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(snapshot.messages) == MESSAGES
    return held / MESSAGES, peak / MESSAGES


@pytest.mark.parametrize(
    ("restart", "bound"),
    [
        pytest.param(True, 300, id="restart-with-index"),
        pytest.param(False, 300, id="first-open"),
    ],
)
def test_an_open_folder_costs_a_bounded_number_of_bytes_per_message(
    paths: StatePaths, store: MaildirStore, restart: bool, bound: int
) -> None:
    names = fill(paths.maildir(ALICE))  # held until the end: see the module docstring
    if restart:
        # Another store writes the uidlist and the index file and goes, as a stopped
        # process would: the strings its index held must not be shared with the new one.
        first = MaildirStore(paths, hostname="mx.example.com")
        first.snapshot(ALICE, INBOX)
        del first
    per_message, peak = bytes_per_message(paths)
    assert per_message < bound, f"{per_message:.0f} bytes a message"
    # The peak is what the process's resident memory keeps (freed objects leave the
    # allocator's arenas fragmented): a first open that made every entry twice, a row
    # object per message and a list of the INSERT's parameters peaked at about 950 bytes
    # a message; without them about 600; without a (mtime, S, W) tuple per message held
    # while the entries are made, 430-550 (the code before: 590-950).
    assert peak < PEAK_BOUND, f"peak {peak:.0f} bytes a message"
    assert len(names) == MESSAGES
