"""The registry of shared folders (delivery/acl_registry.py) on real state directories: it
answers what a walk of every dovecot-acl file would, stays in step with our writers in any
process (two registries on one directory stand for two processes), is rebuilt when missing
or damaged, finds files written behind its back at the rescan, and a rescan never undoes a
share made while it walked."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery import acl, acl_registry
from mailstack.delivery.acl_registry import AclRegistry
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX

from mailstack.base.paths import StatePaths

ALICE, BOB, CAROL, DAVE = (f"{n}@example.com" for n in ("alice", "bob", "carol", "dave"))


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    store = MaildirStore(StatePaths(tmp_path / "state"), hostname="mail.example.com")
    for user in (ALICE, BOB, CAROL, DAVE):
        store.create_account(user)
    store.create_folder(ALICE, "Projects")
    store.create_folder(ALICE, "Projects.2024")
    return store


@pytest.fixture
def other(store: MaildirStore) -> Iterator[AclRegistry]:
    """The registry as another process (the CLI, a second serve) has it: its own connection."""
    registry = AclRegistry(store.acls.paths)
    yield registry
    registry.close()


def walked(store: MaildirStore, user: str) -> list[tuple[str, str]]:
    """What the registry must answer: the old walk of every account's folders."""
    wanted = {f"user={user}", acl.AUTHENTICATED, acl.ANYONE}
    return [
        (s.owner, s.folder)
        for s in acl.shared_folders(store.acls.paths.mail_dir)
        if s.owner != user and acl_registry.grantees(s.entries) & wanted
    ]


def hand_write(store: MaildirStore, owner: str, folder: str, text: str) -> None:
    """As Dovecot or an editor would: the file only, nothing told."""
    directory = acl.folder_dir(store.acls.paths.maildir(owner), folder)
    (directory / acl.ACL_FILE).write_text(text)


def test_built_from_the_files_then_kept_by_writers_in_any_process(
    store: MaildirStore, other: AclRegistry
) -> None:
    hand_write(store, ALICE, "Sent", "owner lrswipkxtea\nuser=bob@example.com lr\n")
    hand_write(store, CAROL, INBOX, "authenticated l\n")
    assert not store.acls.path.exists()
    # The first lookup builds it from the files, with the walk's answer (in its order).
    assert store.acls.shared_with(BOB) == [(ALICE, "Sent"), (CAROL, INBOX)] == walked(store, BOB)
    assert store.acls.shared_with(CAROL) == [] == walked(store, CAROL)  # her own is left out
    assert store.acls.path.stat().st_mode & 0o777 == acl_registry.FILE_MODE
    # A share written through another process's registry is seen by this one's next lookup.
    other.set_rights(ALICE, "Projects", f"user={DAVE}", "lrs")
    assert store.acls.shared_with(DAVE) == [(ALICE, "Projects"), (CAROL, INBOX)]
    other.set_rights(ALICE, "Projects", f"user={DAVE}", "")
    assert store.acls.shared_with(DAVE) == [(CAROL, INBOX)] == walked(store, DAVE)
    # A new folder inheriting its parent's file goes through write().
    entries = acl.read_acl(acl.folder_dir(store.acls.paths.maildir(ALICE), "Sent"))
    assert entries is not None
    other.write(ALICE, "Projects.2024", entries)
    assert (ALICE, "Projects.2024") in store.acls.shared_with(BOB)


def test_renames_deletes_and_account_deletion_keep_it_in_step(store: MaildirStore) -> None:
    assert store.acls.shared_with(BOB) == []  # built (empty) before the shares below
    for folder in ("Projects", "Projects.2024"):
        store.acls.set_rights(ALICE, folder, f"user={BOB}", "lr")
    store.acls.set_rights(CAROL, "Sent", f"user={BOB}", "lr")
    store.rename_folder(ALICE, "Projects", "Plans")  # the child moves along
    assert store.acls.shared_with(BOB) == [(ALICE, "Plans"), (ALICE, "Plans.2024"), (CAROL, "Sent")]
    store.delete_folder(ALICE, "Plans")  # its child stays, shared as before
    assert store.acls.shared_with(BOB) == [(ALICE, "Plans.2024"), (CAROL, "Sent")]
    store.delete_account(CAROL)
    assert store.acls.shared_with(BOB) == [(ALICE, "Plans.2024")] == walked(store, BOB)
    # Straight from the file: no rows left behind for what is gone.
    with sqlite3.connect(store.acls.path) as db:
        rows = db.execute("SELECT owner, folder FROM grants ORDER BY folder").fetchall()
    assert rows == [(ALICE, "Plans.2024")]


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "a directory"])
def test_missing_or_damaged_gives_the_same_answers(
    store: MaildirStore, other: AclRegistry, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.acls.set_rights(ALICE, "Sent", f"user={BOB}", "lr")  # before it exists: skipped
    assert store.acls.shared_with(BOB) == [(ALICE, "Sent")]  # built
    store.acls.set_rights(ALICE, "Projects", acl.ANYONE, "lr")  # noted
    expected = [(ALICE, "Projects"), (ALICE, "Sent")]
    assert store.acls.shared_with(BOB) == expected == walked(store, BOB)
    path = store.acls.path
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(b"this is not an SQLite file\n" * 200)
    elif damage == "truncated":
        with path.open("r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:  # cannot be opened at all: every lookup walks instead
        path.unlink()
        path.mkdir()
    with caplog.at_level(logging.WARNING, logger="mailstack.delivery.acl_registry"):
        assert store.acls.shared_with(BOB) == expected
        assert other.shared_with(BOB) == expected
    if damage == "a directory":
        assert "looking at every account" in caplog.text
        return
    if damage == "deleted":
        assert caplog.text == ""  # nothing wrong: built again, as on the first day
    else:
        assert "rebuilding it" in caplog.text
    with sqlite3.connect(path) as db:  # a sound file again, built from the dovecot-acl files
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert len(db.execute("SELECT * FROM grants").fetchall()) == 2
    other.set_rights(ALICE, "Drafts", f"user={BOB}", "l")  # both processes use the new file
    assert (ALICE, "Drafts") in store.acls.shared_with(BOB)


def test_a_file_written_behind_its_back_is_found_by_the_rescan(
    store: MaildirStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acl_registry, "RESCAN_S", 3600.0)
    assert store.acls.shared_with(BOB) == []  # built
    hand_write(store, ALICE, "Sent", "user=bob@example.com lr\n")
    assert store.acls.shared_with(BOB) == []  # not walked for: not due for an hour
    monkeypatch.setattr(acl_registry, "RESCAN_S", 0.0)
    store.acls.shared_with(BOB)  # due: starts the rescan in a thread of its own
    deadline = time.monotonic() + 10
    while store.acls.shared_with(BOB) != [(ALICE, "Sent")]:
        assert time.monotonic() < deadline, "the rescan did not find the file"
        time.sleep(0.02)
    # And a file removed by hand goes at the next rescan (rights were read from it anyway).
    monkeypatch.setattr(acl_registry, "RESCAN_S", 3600.0)
    (acl.folder_dir(store.acls.paths.maildir(ALICE), "Sent") / acl.ACL_FILE).unlink()
    assert [s.folder for s in store.acls.rescan()] == []
    assert store.acls.shared_with(BOB) == []


def test_one_rescan_at_a_time_across_processes(store: MaildirStore, other: AclRegistry) -> None:
    store.acls.shared_with(BOB)  # built: the scan just ran
    with sqlite3.connect(store.acls.path) as db:
        db.execute("UPDATE meta SET value = 0 WHERE name = 'scanned_at'")  # long ago
    assert store.acls._use(AclRegistry._claim)  # the claim itself, without its thread
    assert not other._use(AclRegistry._claim)  # another process claimed this minute's


def test_a_rescan_keeps_a_share_made_while_it_walked(
    store: MaildirStore, other: AclRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert store.acls.shared_with(BOB) == []  # built
    real = acl.shared_folders

    def racing(mail_dir: Path) -> Iterator[acl.SharedFolder]:
        # The walk has looked at Alice's folders (none shared) when another process shares
        # one of them and records it: the walk's view of that folder is older than the row.
        yield from real(mail_dir)
        other.set_rights(ALICE, "Sent", f"user={BOB}", "lr")

    monkeypatch.setattr(acl, "shared_folders", racing)
    store.acls.rescan()
    assert store.acls.shared_with(BOB) == [(ALICE, "Sent")]
    monkeypatch.setattr(acl, "shared_folders", real)
    store.acls.rescan()  # the next rescan agrees with the files
    assert store.acls.shared_with(BOB) == [(ALICE, "Sent")] == walked(store, BOB)
