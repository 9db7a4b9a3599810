"""Reading message files through the store (delivery/maildir_messages.py: bare descriptors,
one read() when the file has the size its name states): the bytes are the file's whatever
the name says, and every descriptor is closed, however far the caller reads."""

from __future__ import annotations

import os

import pytest
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX

from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE

BODY = b"Subject: sizes\n\n" + b"x" * 70_000 + b"\n"  # more than one 64 KB read


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def files(store: MaildirStore, paths: StatePaths) -> dict[int, bytes]:
    """uid -> file bytes: a delivered message and files other programs left whose S= is
    right, too small, too large, or absent."""
    store.deliver([(ALICE, INBOX)], BODY)
    cur = paths.maildir(ALICE) / "cur"
    for n, stated in enumerate([len(BODY), 10, len(BODY) + 500, None], 1):
        size = "" if stated is None else f",S={stated}"
        (cur / f"1700000000.M{n}P1.other{size}:2,S").write_bytes(BODY + b"n" * n)
    snap = store.snapshot(ALICE, INBOX, claim_recent=False)
    out = {}
    for m in snap.messages:
        names = [p for p in cur.iterdir() if p.name.startswith(m.key)]
        names += [p for p in (paths.maildir(ALICE) / "new").iterdir() if p.name.startswith(m.key)]
        (path,) = names
        out[m.uid] = path.read_bytes()
    assert len(out) == 5
    return out


def test_a_message_is_its_file_whatever_its_name_says(
    store: MaildirStore, files: dict[int, bytes]
) -> None:
    assert dict(store.read_messages(ALICE, INBOX, list(files))) == files
    for uid, data in files.items():
        assert store.read_message(ALICE, INBOX, uid) == data
        assert store.read_header(ALICE, INBOX, uid) == b"Subject: sizes\n\n"


def test_every_descriptor_is_closed_however_far_the_caller_reads(
    store: MaildirStore, files: dict[int, bytes]
) -> None:
    before = open_fds()
    reading = store.read_messages(ALICE, INBOX, list(files))
    next(reading)
    assert open_fds() > before  # the others are open, waiting to be read
    reading.close()
    assert open_fds() == before
    assert len(list(store.read_messages(ALICE, INBOX, list(files)))) == len(files)
    store.read_headers(ALICE, INBOX, list(files))
    assert open_fds() == before


def test_files_opened_before_an_expunge_are_still_read_whole(
    store: MaildirStore, files: dict[int, bytes], paths: StatePaths
) -> None:
    uids = sorted(files)
    reading = store.read_messages(ALICE, INBOX, uids)
    first = next(reading)
    assert first == (uids[0], files[uids[0]])
    # Opened under the lock before the unlink: an open file is still read whole.
    for p in (paths.maildir(ALICE) / "cur").iterdir():
        p.unlink()
    assert dict(reading) == {u: files[u] for u in uids[1:]}
