"""MaildirStore on real Maildirs in tmp_path, read back with the stdlib's mailbox.Maildir."""

from __future__ import annotations

import mailbox
import os
import stat
import time
from pathlib import Path

import pytest
from mailstack.delivery import index_listing
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import (
    DEFAULT_FOLDERS,
    FolderExistsError,
    FolderNotFoundError,
    InvalidFolderNameError,
    MessageGoneError,
    QuotaExceededError,
    SpecialUse,
    UnknownUserError,
)

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.delivery.conftest import ALICE, BOB

MESSAGE = b"From: bob@example.org\r\nSubject: hello\r\n\r\nline one\r\nline two\r\n"
LF_MESSAGE = MESSAGE.replace(b"\r\n", b"\n")


def maildir_root(paths: StatePaths, user: str = ALICE) -> Path:
    return paths.maildir(user)


def test_create_account_lays_out_maildir_plus_plus(store: MaildirStore, paths: StatePaths) -> None:
    root = maildir_root(paths)
    assert root == paths.root / "mail" / "example.com" / "alice"
    for d in [root, *(root / f".{name}" for name in DEFAULT_FOLDERS)]:
        for sub in ("cur", "new", "tmp"):
            assert stat.S_IMODE(os.stat(d / sub).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
        assert (d / "dovecot-uidlist").read_text().startswith("3 V")
    for name in DEFAULT_FOLDERS:
        assert (root / f".{name}" / "maildirfolder").is_file()
    assert (root / "subscriptions").read_bytes().startswith(b"V\t2\n\n")
    infos = {f.name: f for f in store.list_folders(ALICE)}
    assert list(infos) == ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    assert {n: infos[n].special_use for n in DEFAULT_FOLDERS} == DEFAULT_FOLDERS
    assert all(info.subscribed for info in infos.values())
    # The stdlib sees the same folders.
    assert sorted(mailbox.Maildir(root, create=False).list_folders()) == sorted(DEFAULT_FOLDERS)


def test_create_account_is_idempotent(store: MaildirStore) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.create_account(ALICE)
    assert len(store.snapshot(ALICE, "INBOX").messages) == 1


def test_deliver_stores_lf_message_with_sizes_in_name(
    store: MaildirStore, paths: StatePaths
) -> None:
    (ref,) = store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert (ref.user, ref.folder, ref.uid) == (ALICE, "INBOX", 1)
    (name,) = os.listdir(maildir_root(paths) / "new")
    assert name.endswith(f",S={len(LF_MESSAGE)},W={len(MESSAGE)}")
    assert ".mx.example.com," in name
    md = mailbox.Maildir(maildir_root(paths), create=False)
    (msg,) = list(md)
    assert msg["Subject"] == "hello"
    assert msg.get_subdir() == "new"
    assert store.read_message(ALICE, "INBOX", ref.uid) == LF_MESSAGE
    snap = store.snapshot(ALICE, "INBOX")
    (info,) = snap.messages
    assert info.size == len(MESSAGE)  # RFC822.SIZE counts CRLF
    assert info.uid == 1
    assert info.flags == frozenset()
    assert snap.uid_validity == ref.uid_validity
    assert snap.uid_next == 2


def test_deliver_to_several_targets(store: MaildirStore, paths: StatePaths) -> None:
    store.create_account(BOB)
    refs = store.deliver([(ALICE, "INBOX"), (BOB, "INBOX"), (ALICE, "Archive")], MESSAGE)
    assert [(r.user, r.folder, r.uid) for r in refs] == [
        (ALICE, "INBOX", 1),
        (BOB, "INBOX", 1),
        (ALICE, "Archive", 1),
    ]
    assert len(mailbox.Maildir(maildir_root(paths, BOB), create=False)) == 1
    archive = mailbox.Maildir(maildir_root(paths), create=False).get_folder("Archive")
    assert len(archive) == 1


def test_deliver_is_all_or_nothing(store: MaildirStore, paths: StatePaths) -> None:
    store.create_account(BOB)
    bob_tmp = maildir_root(paths, BOB) / ".Archive" / "tmp"
    bob_tmp.rmdir()
    bob_tmp.write_bytes(b"not a directory")  # chmod would not stop root; this stops anyone
    with pytest.raises(NotADirectoryError):
        store.deliver([(ALICE, "INBOX"), (ALICE, "Sent"), (BOB, "Archive")], MESSAGE)
    root = maildir_root(paths)
    for d in (root, root / ".Sent"):
        for sub in ("new", "cur", "tmp"):
            assert os.listdir(d / sub) == [], (d, sub)
    assert store.snapshot(ALICE, "INBOX").messages == ()
    assert store.usage_bytes(ALICE) == 0
    # The next delivery gets a fresh UID; nothing was half-numbered in a visible way.
    (ref,) = store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert [m.uid for m in store.snapshot(ALICE, "INBOX").messages] == [ref.uid]


def test_deliver_rolls_back_copies_already_placed(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    sent_new = maildir_root(paths) / ".Sent" / "new"
    sent_new.rmdir()
    sent_new.write_bytes(b"")  # tmp/ works, the rename into new/ fails: after INBOX's copy
    with pytest.raises(NotADirectoryError):  # from a process that never listed INBOX
        MaildirStore(paths).deliver([(ALICE, "INBOX"), (ALICE, "Sent")], MESSAGE)
    root = maildir_root(paths)
    assert len(os.listdir(root / "new")) == 1  # only the first delivery's
    assert os.listdir(root / "tmp") == []
    assert os.listdir(root / ".Sent" / "tmp") == []
    assert [m.uid for m in store.snapshot(ALICE, "INBOX").messages] == [1]
    assert store.usage_bytes(ALICE) == len(LF_MESSAGE)
    # The UID the rolled-back copy had is burnt, never handed out again.
    (ref,) = store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert ref.uid > 2


def test_abandoned_tmp_files_are_removed(
    store: MaildirStore, paths: StatePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp = maildir_root(paths) / "tmp"
    (tmp / "123.M1P1.crashed").write_bytes(b"half a message")
    (tmp / ".mkfolder.abandoned").mkdir()
    fresh = MaildirStore(paths)
    fresh.snapshot(ALICE, "INBOX")
    assert len(os.listdir(tmp)) == 2  # younger than 36 hours: maybe still being written
    # The age is checked on ctime, which no test can set back: shorten the limit instead.
    monkeypatch.setattr(index_listing, "TMP_MAX_AGE_S", 0)
    MaildirStore(paths).snapshot(ALICE, "INBOX")  # cleaned once per process and folder
    assert os.listdir(tmp) == []


def test_unknown_user_and_folder(store: MaildirStore) -> None:
    with pytest.raises(UnknownUserError):
        store.deliver([("nobody@example.com", "INBOX")], MESSAGE)
    with pytest.raises(UnknownUserError):
        store.snapshot("../../etc@example.com", "INBOX")
    with pytest.raises(FolderNotFoundError):
        store.deliver([(ALICE, "Nope")], MESSAGE)
    with pytest.raises(FolderNotFoundError):
        store.snapshot(ALICE, "Nope")


def test_unknown_user_and_folder_without_waiting(store: MaildirStore) -> None:
    # The event-loop path finds a missing account or folder when it writes (no stat() per
    # message beforehand), so it must still name the right error, and leave nothing behind.
    def deliver(user: str, folder: str) -> object:
        return store.deliver_parts_nowait([(user, folder)], [MESSAGE]).result(30)

    with pytest.raises(UnknownUserError):
        deliver("nobody@example.com", "INBOX")
    with pytest.raises(FolderNotFoundError):
        deliver(ALICE, "Nope")
    store.create_folder(ALICE, "Lists")
    deliver(ALICE, "Lists")  # remembered where Lists lives...
    store.delete_folder(ALICE, "Lists")
    with pytest.raises(FolderNotFoundError):  # ...which does not make it exist
        deliver(ALICE, "Lists")
    store.delete_account(ALICE)
    with pytest.raises(UnknownUserError):
        deliver(ALICE, "INBOX")
    assert not store._paths.maildir(ALICE).exists()  # nothing written for the gone account


@pytest.mark.parametrize(
    "name", ["", "a/b", ".hidden", "a..b", "trailing.", "..", "tab\tname", "caf\xe9", "a&b"]
)
def test_invalid_folder_names(store: MaildirStore, name: str) -> None:
    with pytest.raises(InvalidFolderNameError):
        store.create_folder(ALICE, name)


def test_inbox_is_case_insensitive(store: MaildirStore) -> None:
    (ref,) = store.deliver([(ALICE, "inbox")], MESSAGE)
    assert ref.folder == "INBOX"
    assert store.snapshot(ALICE, "InBoX").name == "INBOX"
    store.create_folder(ALICE, "inbox.Lists")
    assert "INBOX.Lists" in [f.name for f in store.list_folders(ALICE)]


def test_uids_survive_a_new_store_instance(store: MaildirStore, paths: StatePaths) -> None:
    for _ in range(3):
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.store_flags(ALICE, "INBOX", [2], [Flag.SEEN], FlagMode.ADD)
    before = store.snapshot(ALICE, "INBOX")
    again = MaildirStore(paths, hostname="other").snapshot(ALICE, "INBOX")
    assert again.uid_validity == before.uid_validity
    assert again.messages == before.messages
    assert again.uid_next == before.uid_next == 4


def test_files_from_elsewhere_get_uids(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    md = mailbox.Maildir(maildir_root(paths), create=False)
    key = md.add(mailbox.MaildirMessage(b"Subject: dropped by a script\n\nhi\n"))
    snap = store.snapshot(ALICE, "INBOX")
    assert [m.uid for m in snap.messages] == [1, 2]
    assert snap.messages[1].key == key
    assert snap.messages[1].size == len(b"Subject: dropped by a script\r\n\r\nhi\r\n")
    assert store.read_message(ALICE, "INBOX", 2).startswith(b"Subject: dropped")
    # Usage notices the foreign file too.
    assert store.usage_bytes(ALICE) == len(LF_MESSAGE) + len(
        b"Subject: dropped by a script\n\nhi\n"
    )


def test_torn_uidlist_append_is_repaired(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    uidlist = maildir_root(paths) / "dovecot-uidlist"
    with open(uidlist, "ab") as f:
        f.write(b"3 :1234.M1P1.crashed-wri")  # a writer died in the middle of a line
    fresh = MaildirStore(paths)
    (ref,) = fresh.deliver([(ALICE, "INBOX")], MESSAGE)
    assert ref.uid == 3
    assert uidlist.read_bytes().endswith(b"\n")
    snap = MaildirStore(paths).snapshot(ALICE, "INBOX")
    assert [m.uid for m in snap.messages] == [1, 2, 3]
    assert snap.uid_validity == ref.uid_validity


def test_cached_listing_notices_changes_by_others(store: MaildirStore, paths: StatePaths) -> None:
    for _ in range(3):
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.snapshot(ALICE, "INBOX", claim_recent=True)
    root = maildir_root(paths)
    past = time.time() - 60
    for sub in ("new", "cur"):  # old directory mtimes: the index may trust its cached listing
        os.utime(root / sub, (past, past))
    before = store.snapshot(ALICE, "INBOX")
    assert store.snapshot(ALICE, "INBOX") == before
    # Another MUA (no locking) flags the first message and deletes the third.
    first, _, third = (m.key for m in before.messages)
    (name,) = [n for n in os.listdir(root / "cur") if n.startswith(first)]
    os.rename(root / "cur" / name, root / "cur" / f"{first}:2,FS")
    (third_name,) = [n for n in os.listdir(root / "cur") if n.startswith(third)]
    os.unlink(root / "cur" / third_name)
    after = store.snapshot(ALICE, "INBOX")
    assert [(m.uid, m.flags) for m in after.messages] == [
        (1, {Flag.FLAGGED, Flag.SEEN}),
        (2, frozenset()),
    ]


def test_uids_never_reused_after_expunge(store: MaildirStore, paths: StatePaths) -> None:
    for _ in range(3):
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.store_flags(ALICE, "INBOX", [3], [Flag.DELETED], FlagMode.ADD)
    assert store.expunge(ALICE, "INBOX") == [3]
    (ref,) = store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert ref.uid == 4
    assert MaildirStore(paths).snapshot(ALICE, "INBOX").uid_next == 5


def test_claim_recent_moves_new_to_cur_once(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert store.snapshot(ALICE, "INBOX").recent_uids == {1, 2}  # EXAMINE: not claimed
    assert store.snapshot(ALICE, "INBOX", claim_recent=True).recent_uids == {1, 2}
    assert store.snapshot(ALICE, "INBOX", claim_recent=True).recent_uids == frozenset()
    assert os.listdir(maildir_root(paths) / "new") == []
    assert all(n.endswith(":2,") for n in os.listdir(maildir_root(paths) / "cur"))
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert store.snapshot(ALICE, "INBOX", claim_recent=True).recent_uids == {3}


def test_store_flags_and_keywords(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    got = store.store_flags(ALICE, "INBOX", [1], ["\\seen", "$Junk", "\\Recent"], FlagMode.ADD)
    assert got == {1: {Flag.SEEN, "$Junk"}}
    got = store.store_flags(ALICE, "INBOX", [1, 99], ["\\Flagged", "$Label1"], FlagMode.ADD)
    assert got == {1: {Flag.SEEN, Flag.FLAGGED, "$Junk", "$Label1"}}
    root = maildir_root(paths)
    (name,) = os.listdir(root / "cur")
    assert name.endswith(":2,FSab")
    assert (root / "dovecot-keywords").read_text() == "0 $Junk\n1 $Label1\n"
    msg = mailbox.Maildir(root, create=False).get_message(name.split(":")[0])
    assert msg.get_flags() == "FSab"
    got = store.store_flags(ALICE, "INBOX", [1], ["$label1"], FlagMode.ADD)  # same keyword
    assert got == {1: {Flag.SEEN, Flag.FLAGGED, "$Junk", "$Label1"}}
    got = store.store_flags(ALICE, "INBOX", [1], ["$JUNK", Flag.SEEN], FlagMode.REMOVE)
    assert got == {1: {Flag.FLAGGED, "$Label1"}}
    got = store.store_flags(ALICE, "INBOX", [1], [Flag.DRAFT], FlagMode.REPLACE)
    assert got == {1: {Flag.DRAFT}}
    snap = store.snapshot(ALICE, "INBOX")
    assert snap.messages[0].flags == {Flag.DRAFT}
    assert snap.keywords == ("$Junk", "$Label1")


def test_store_flags_keeps_unknown_info_letters(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.snapshot(ALICE, "INBOX", claim_recent=True)
    cur = maildir_root(paths) / "cur"
    (name,) = os.listdir(cur)
    os.rename(cur / name, cur / (name + "P"))  # "passed" (forwarded) by another MUA
    store.store_flags(ALICE, "INBOX", [1], [Flag.SEEN], FlagMode.ADD)
    assert os.listdir(cur)[0].endswith(":2,PS")


def test_store_flags_skips_vanished_file(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    uid1 = store.snapshot(ALICE, "INBOX").messages[0]
    assert uid1.uid == 1
    # UID 1's file by its unique name (sorting names fails when the time's digits grow).
    (first,) = [n for n in os.listdir(maildir_root(paths) / "new") if n.startswith(uid1.key)]
    (maildir_root(paths) / "new" / first).unlink()
    assert set(store.store_flags(ALICE, "INBOX", [1, 2], [Flag.SEEN], FlagMode.ADD)) == {2}
    with pytest.raises(MessageGoneError):
        store.read_message(ALICE, "INBOX", 1)


def test_append_with_flags_and_date(store: MaildirStore, paths: StatePaths) -> None:
    ref = store.append(
        ALICE, "Drafts", MESSAGE, flags=[Flag.DRAFT, "$Draft"], internal_date=1_000_000_000.0
    )
    (info,) = store.snapshot(ALICE, "Drafts").messages
    assert info.uid == ref.uid == 1
    assert info.flags == {Flag.DRAFT, "$Draft"}
    assert info.internal_date == 1_000_000_000.0
    (name,) = os.listdir(maildir_root(paths) / ".Drafts" / "cur")
    assert name.endswith(":2,Da")
    plain = store.append(ALICE, "Drafts", MESSAGE)
    # RFC 3501 §2.3.2: recent whatever its flags, for the first session that selects it.
    assert store.snapshot(ALICE, "Drafts").recent_uids == {ref.uid, plain.uid}
    assert store.snapshot(ALICE, "Drafts", claim_recent=True).recent_uids == {ref.uid, plain.uid}
    assert store.snapshot(ALICE, "Drafts", claim_recent=True).recent_uids == frozenset()


def test_copy_and_move(store: MaildirStore, paths: StatePaths) -> None:
    for _ in range(3):
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.store_flags(ALICE, "INBOX", [2], [Flag.SEEN, "$Important"], FlagMode.ADD)
    src = {m.uid: m for m in store.snapshot(ALICE, "INBOX").messages}
    assert store.copy(ALICE, "INBOX", [2, 3, 42], "Archive") == [(2, 1), (3, 2)]
    archive = {m.uid: m for m in store.snapshot(ALICE, "Archive").messages}
    assert archive[1].flags == {Flag.SEEN, "$Important"}
    assert archive[1].internal_date == src[2].internal_date  # RFC 9051 §6.4.7
    assert store.read_message(ALICE, "Archive", 1) == LF_MESSAGE
    assert store.move(ALICE, "INBOX", [1, 2], "Trash") == [(1, 1), (2, 2)]
    assert [m.uid for m in store.snapshot(ALICE, "INBOX").messages] == [3]
    assert [m.uid for m in store.snapshot(ALICE, "Trash").messages] == [1, 2]
    assert store.usage_bytes(ALICE) == 5 * len(LF_MESSAGE)


def test_expunge_only_deleted_and_only_given(store: MaildirStore) -> None:
    for _ in range(4):
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.store_flags(ALICE, "INBOX", [1, 2, 3], [Flag.DELETED], FlagMode.ADD)
    assert store.expunge(ALICE, "INBOX", [2, 4]) == [2]
    assert store.expunge(ALICE, "INBOX") == [1, 3]
    assert [m.uid for m in store.snapshot(ALICE, "INBOX").messages] == [4]
    assert store.usage_bytes(ALICE) == len(LF_MESSAGE)


def test_quota(paths: StatePaths) -> None:
    # The store asks its quota_of for every write that checks (deliver, append, copy), at the
    # time of the write: a change of quota applies to the next one.
    limits = {ALICE: 2 * len(LF_MESSAGE)}
    store = MaildirStore(paths, hostname="mx.example.com", quota_of=lambda u: limits.get(u, 0))
    store.create_account(ALICE)
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert store.is_full(ALICE) is False
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert store.is_full(ALICE) is True
    with pytest.raises(QuotaExceededError) as err:
        store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert err.value.code == "OVERQUOTA"
    with pytest.raises(QuotaExceededError):
        store.append(ALICE, "INBOX", MESSAGE)
    with pytest.raises(QuotaExceededError):
        store.copy(ALICE, "INBOX", [1], "Archive")
    with pytest.raises(QuotaExceededError):
        store.deliver_parts_nowait([(ALICE, "INBOX")], [MESSAGE]).result()
    assert len(store.snapshot(ALICE, "INBOX").messages) == 2
    assert store.usage_bytes(ALICE) == 2 * len(LF_MESSAGE)
    for folder in ("", ".Archive"):  # refused before anything was written
        assert os.listdir(paths.maildir(ALICE) / folder / "tmp") == []
    limits[ALICE] = 0  # 0 = unlimited
    assert store.is_full(ALICE) is False
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.copy(ALICE, "INBOX", [1], "Archive")


def test_usage_recalculated_when_maildirsize_is_lost(
    store: MaildirStore, paths: StatePaths
) -> None:
    store.deliver([(ALICE, "INBOX"), (ALICE, "Sent")], MESSAGE)
    (maildir_root(paths) / "maildirsize").unlink()
    assert store.usage_bytes(ALICE) == 2 * len(LF_MESSAGE)
    (maildir_root(paths) / "maildirsize").write_text("garbage")
    assert store.usage_bytes(ALICE) == 2 * len(LF_MESSAGE)


def test_create_folder_with_parents_and_special_use(store: MaildirStore, paths: StatePaths) -> None:
    store.create_folder(ALICE, "Projects.2024.Q1", SpecialUse.ARCHIVE)
    root = maildir_root(paths)
    assert (root / ".Projects" / "cur").is_dir()
    assert (root / ".Projects.2024.Q1" / "maildirfolder").is_file()
    infos = {f.name: f for f in store.list_folders(ALICE)}
    assert infos["Projects"].has_children
    assert not infos["Projects.2024.Q1"].has_children
    assert infos["Projects.2024.Q1"].special_use is SpecialUse.ARCHIVE
    assert not infos["Projects"].subscribed
    with pytest.raises(FolderExistsError):
        store.create_folder(ALICE, "Projects.2024.Q1")
    with pytest.raises(FolderExistsError):
        store.create_folder(ALICE, "INBOX")
    assert "Projects/2024/Q1" in [
        f.replace(".", "/") for f in mailbox.Maildir(root, create=False).list_folders()
    ]


def test_uidvalidity_differs_for_recreated_folder(store: MaildirStore) -> None:
    store.create_folder(ALICE, "Tmp")
    first = store.snapshot(ALICE, "Tmp").uid_validity
    store.delete_folder(ALICE, "Tmp")
    store.create_folder(ALICE, "Tmp")
    assert store.snapshot(ALICE, "Tmp").uid_validity != first


def test_delete_folder(store: MaildirStore) -> None:
    store.create_folder(ALICE, "A.B")
    store.deliver([(ALICE, "A.B")], MESSAGE)
    store.deliver([(ALICE, "A")], MESSAGE)
    with pytest.raises(InvalidFolderNameError):
        store.delete_folder(ALICE, "inbox")
    # RFC 9051 §6.3.4: the messages go, the name stays as the \Noselect parent of "A.B".
    store.delete_folder(ALICE, "A")
    infos = {f.name: f for f in store.list_folders(ALICE)}
    assert not infos["A"].is_selectable
    assert infos["A"].has_children
    assert infos["A.B"].is_selectable
    with pytest.raises(FolderNotFoundError):
        store.snapshot(ALICE, "A")
    with pytest.raises(FolderNotFoundError):  # deleting a \Noselect name is an error
        store.delete_folder(ALICE, "A")
    assert store.usage_bytes(ALICE) == len(LF_MESSAGE)
    store.delete_folder(ALICE, "A.B")
    assert not {"A", "A.B"} & {f.name for f in store.list_folders(ALICE)}
    assert store.usage_bytes(ALICE) == 0
    store.create_folder(ALICE, "A")  # and the name can be made a folder again


def test_rename_folder_with_children(store: MaildirStore) -> None:
    store.create_folder(ALICE, "Old.Child")
    (ref,) = store.deliver([(ALICE, "Old.Child")], MESSAGE)
    store.rename_folder(ALICE, "Old", "New.Place")
    names = [f.name for f in store.list_folders(ALICE)]
    assert "Old" not in names
    assert "Old.Child" not in names
    assert {"New", "New.Place", "New.Place.Child"} <= set(names)
    snap = store.snapshot(ALICE, "New.Place.Child")
    assert snap.uid_validity == ref.uid_validity
    assert [m.uid for m in snap.messages] == [1]
    with pytest.raises(FolderExistsError):
        store.rename_folder(ALICE, "Sent", "Trash")
    with pytest.raises(InvalidFolderNameError):
        store.rename_folder(ALICE, "Sent", "Sent.Sub")


def test_rename_inbox_moves_messages(store: MaildirStore) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.store_flags(ALICE, "INBOX", [2], [Flag.SEEN, "$Later"], FlagMode.ADD)
    store.rename_folder(ALICE, "INBOX", "Old Mail")
    inbox = store.snapshot(ALICE, "INBOX")
    assert inbox.messages == ()
    assert inbox.uid_next == 3
    moved = store.snapshot(ALICE, "Old Mail")
    assert [(m.uid, m.flags) for m in moved.messages] == [
        (1, frozenset()),
        (2, {Flag.SEEN, "$Later"}),
    ]
    (ref,) = store.deliver([(ALICE, "INBOX")], MESSAGE)
    assert ref.uid == 3


def test_subscriptions(store: MaildirStore, paths: StatePaths) -> None:
    store.set_subscribed(ALICE, "Trash", False)
    store.set_subscribed(ALICE, "Lists.python", True)  # may name a folder that doesn't exist
    text = (maildir_root(paths) / "subscriptions").read_text()
    assert text == "V\t2\n\nINBOX\nSent\nDrafts\nJunk\nArchive\nLists\tpython\n"
    infos = {f.name: f.subscribed for f in store.list_folders(ALICE)}
    assert infos["Trash"] is False
    assert infos["Sent"] is True


def test_delete_account(store: MaildirStore, paths: StatePaths) -> None:
    store.deliver([(ALICE, "INBOX")], MESSAGE)
    store.delete_account(ALICE)
    assert not maildir_root(paths).exists()
    assert os.listdir(maildir_root(paths).parent) == []
    with pytest.raises(UnknownUserError):
        store.snapshot(ALICE, "INBOX")


def test_a_failed_create_does_not_bring_back_a_deleted_parent(store: MaildirStore) -> None:
    # Found by the folder model test: CREATE made missing parents before learning that the
    # folder itself existed, so a refused CREATE "a.a" revived the deleted "a".
    store.create_folder(ALICE, "a.a")
    store.delete_folder(ALICE, "a")
    with pytest.raises(FolderExistsError):
        store.create_folder(ALICE, "a.a")
    selectable = {f.name for f in store.list_folders(ALICE) if f.is_selectable}
    assert "a" not in selectable and "a.a" in selectable
