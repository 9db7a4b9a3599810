"""Interoperability with a real Dovecot serving the same Maildir++ (Debian's dovecot-imapd).

(a) mailstack writes; Dovecot over IMAP shows the same messages, flags, keywords, folders,
    subscriptions, UIDs and UIDVALIDITY.
(b) Dovecot APPENDs, STOREs, EXPUNGEs and CREATEs; mailstack's snapshot agrees.
(c) Both deliver into one folder at the same time: the shared dotlock keeps UIDs unique.
"""

from __future__ import annotations

import grp
import imaplib
import multiprocessing
import os
import pwd
import re
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from mailstack.delivery.maildir import MaildirStore

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.paths import StatePaths
from tests.support.dovecot import MAIL_GROUP, MAIL_USER, DovecotFactory

pytestmark = pytest.mark.external

USER = "alice@example.com"
PASSWORD = "interop-secret"


def fetch(imap: imaplib.IMAP4, items: str) -> dict[int, bytes]:
    """UID FETCH 1:* `items`, as {uid: the response line with its literals joined}."""
    typ, data = imap.uid("FETCH", "1:*", f"({items})")
    assert typ == "OK", data
    out: dict[int, bytes] = {}
    for part in data:
        if part is None or part == b")":
            continue
        line = b"".join(part) if isinstance(part, tuple) else part
        m = re.search(rb"UID (\d+)", line)
        if m is None:
            continue  # an unsolicited FETCH (flag update) that imaplib queued meanwhile
        out[int(m[1])] = line
    return out


def flags_of(line: bytes) -> set[str]:
    m = re.search(rb"FLAGS \(([^)]*)\)", line)
    assert m is not None, line
    return {f.decode() for f in m[1].split()} - {"\\Recent"}


def size_of(line: bytes) -> int:
    m = re.search(rb"RFC822\.SIZE (\d+)", line)
    assert m is not None, line
    return int(m[1])


def mailbox_names(lines: Sequence[object]) -> set[str]:
    """Names from LIST/LSUB lines `(attrs) "." name` (our test names need no literals)."""
    return {
        line.rsplit(b" ", 1)[1].strip(b'"').decode() for line in lines if isinstance(line, bytes)
    }


def status(imap: imaplib.IMAP4, folder: str) -> dict[str, int]:
    typ, data = imap.status(folder, "(UIDVALIDITY UIDNEXT MESSAGES)")
    assert typ == "OK", data
    raw = data[0]
    assert isinstance(raw, bytes)
    return {k.decode(): int(v) for k, v in re.findall(rb"(\w+) (\d+)", raw.split(b"(", 1)[1])}


@pytest.fixture
def setup(dovecot_server: DovecotFactory) -> tuple[MaildirStore, Path]:
    paths = StatePaths(dovecot_server.workdir / "state")
    store = MaildirStore(paths, hostname="mx.example.com")
    store.create_account(USER)
    return store, paths.maildir(USER)


def test_dovecot_reads_what_mailstack_wrote(
    dovecot_server: DovecotFactory, setup: tuple[MaildirStore, Path]
) -> None:
    store, maildir = setup
    bodies = [f"Subject: message {i}\r\n\r\n{'body ' * i}\r\n".encode() for i in range(1, 6)]
    for body in bodies[:3]:
        store.deliver([(USER, "INBOX")], body)
    store.append(USER, "INBOX", bodies[3], flags=[Flag.SEEN, Flag.ANSWERED, "$Forwarded"])
    store.append(USER, "INBOX", bodies[4], flags=[Flag.DRAFT])
    store.store_flags(USER, "INBOX", [1], [Flag.FLAGGED, "$Junk"], FlagMode.ADD)
    store.store_flags(USER, "INBOX", [2], [Flag.DELETED], FlagMode.ADD)
    store.expunge(USER, "INBOX")  # UID 2 is gone; Dovecot must not reuse or show it
    store.create_folder(USER, "Projects.2024")
    store.create_folder(USER, "Entw&APw-rfe")  # "Entwürfe" in modified UTF-7
    (ref,) = store.deliver([(USER, "Projects.2024")], bodies[0])
    store.set_subscribed(USER, "Projects.2024", True)
    store.set_subscribed(USER, "Junk", False)
    ours = store.snapshot(USER, "INBOX")

    server = dovecot_server({USER: (PASSWORD, maildir)})
    with server.imap(USER) as imap:
        assert status(imap, "INBOX") == {
            "UIDVALIDITY": ours.uid_validity,
            "UIDNEXT": ours.uid_next,
            "MESSAGES": len(ours.messages),
        }
        typ, _ = imap.select("INBOX")
        assert typ == "OK"
        lines = fetch(imap, "FLAGS RFC822.SIZE BODY.PEEK[]")
        assert sorted(lines) == [m.uid for m in ours.messages] == [1, 3, 4, 5]
        for info in ours.messages:
            assert flags_of(lines[info.uid]) == {str(f) for f in info.flags}
            assert size_of(lines[info.uid]) == info.size
        assert flags_of(lines[1]) == {"\\Flagged", "$Junk"}
        assert flags_of(lines[4]) == {"\\Seen", "\\Answered", "$Forwarded"}
        assert bodies[3] in lines[4]  # served with CRLF, byte for byte
        typ, listing = imap.list()
        names = mailbox_names(listing)
        assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive", "Projects.2024"} <= names
        assert "Entw&APw-rfe" in names
        typ, lsub = imap.lsub()
        subscribed = mailbox_names(lsub)
        assert "Projects.2024" in subscribed
        assert "Junk" not in subscribed
        assert status(imap, "Projects.2024")["UIDVALIDITY"] == ref.uid_validity
    assert "Error" not in server.log(), server.log()


def test_mailstack_reads_what_dovecot_wrote(
    dovecot_server: DovecotFactory, setup: tuple[MaildirStore, Path]
) -> None:
    store, maildir = setup
    (first,) = store.deliver([(USER, "INBOX")], b"Subject: delivered by mailstack\r\n\r\nhi\r\n")
    server = dovecot_server({USER: (PASSWORD, maildir)})
    appended = [
        (b"Subject: one\r\n\r\nfrom dovecot\r\n", r"(\Seen)"),
        (b"Subject: two\r\n\r\nfrom dovecot\r\n", r"(\Flagged $Label1 Work)"),
        (b"Subject: three\r\n\r\nfrom dovecot\r\n", "()"),
    ]
    with server.imap(USER) as imap:
        for body, flags in appended:
            typ, data = imap.append("INBOX", flags, None, body)
            assert typ == "OK", data
        imap.select("INBOX")
        imap.uid("STORE", str(first.uid), "+FLAGS", r"(\Answered $Important)")
        imap.uid("STORE", "4", "+FLAGS", r"(\Deleted)")
        imap.expunge()
        imap.create("Dovecot.Made")
        imap.append("Dovecot.Made", r"(\Draft)", None, b"Subject: in a new folder\r\n\r\nx\r\n")
        imap.subscribe("Dovecot.Made")
        theirs = fetch(imap, "FLAGS RFC822.SIZE")
        inbox_status = status(imap, "INBOX")
        made_status = status(imap, "Dovecot.Made")

    snap = MaildirStore(StatePaths(maildir.parents[2])).snapshot(USER, "INBOX")
    assert snap.uid_validity == inbox_status["UIDVALIDITY"] == first.uid_validity
    assert snap.uid_next == inbox_status["UIDNEXT"] == 5
    assert [m.uid for m in snap.messages] == sorted(theirs) == [1, 2, 3]
    for info in snap.messages:
        assert {str(f) for f in info.flags} == flags_of(theirs[info.uid])
        assert info.size == size_of(theirs[info.uid])
    assert {str(f) for f in snap.messages[0].flags} == {"\\Answered", "$Important"}
    assert {str(f) for f in snap.messages[2].flags} == {"\\Flagged", "$Label1", "Work"}
    assert store.read_message(USER, "INBOX", 2) == appended[0][0].replace(b"\r\n", b"\n")
    made = store.snapshot(USER, "Dovecot.Made")
    assert made.uid_validity == made_status["UIDVALIDITY"]
    assert [(m.uid, {str(f) for f in m.flags}) for m in made.messages] == [(1, {"\\Draft"})]
    infos = {f.name: f for f in store.list_folders(USER)}
    assert infos["Dovecot.Made"].subscribed
    assert infos["Dovecot"].has_children
    assert not infos["Dovecot"].is_selectable
    # And mailstack keeps numbering after Dovecot: the next UID is Dovecot's UIDNEXT.
    (ref,) = store.deliver([(USER, "INBOX")], b"Subject: after\r\n\r\nx\r\n")
    assert ref.uid == 5
    assert store.usage_bytes(USER) == sum(
        len(store.read_message(USER, "INBOX", m.uid))
        for m in store.snapshot(USER, "INBOX").messages
    ) + len(store.read_message(USER, "Dovecot.Made", 1))


def test_flag_changes_round_trip_while_both_run(
    dovecot_server: DovecotFactory, setup: tuple[MaildirStore, Path]
) -> None:
    store, maildir = setup
    for i in range(3):
        store.deliver([(USER, "INBOX")], f"Subject: {i}\r\n\r\nx\r\n".encode())
    server = dovecot_server({USER: (PASSWORD, maildir)})
    with server.imap(USER) as imap:
        imap.select("INBOX")
        assert set(fetch(imap, "FLAGS")) == {1, 2, 3}
        # mailstack changes flags and delivers while Dovecot has the folder selected.
        store.store_flags(USER, "INBOX", [2], [Flag.SEEN, "$Junk"], FlagMode.ADD)
        store.deliver([(USER, "INBOX")], b"Subject: 3\r\n\r\nx\r\n")
        server.grant()
        imap.noop()
        lines = fetch(imap, "FLAGS")
        assert sorted(lines) == [1, 2, 3, 4]
        assert flags_of(lines[2]) == {"\\Seen", "$Junk"}
        imap.uid("STORE", "3", "+FLAGS", r"(\Seen)")
    snap = store.snapshot(USER, "INBOX")
    assert {m.uid: {str(f) for f in m.flags} for m in snap.messages} == {
        1: set(),
        2: {"\\Seen", "$Junk"},
        3: {"\\Seen"},
        4: set(),
    }


def _deliver_as_mail_user(state_dir: Path, count: int, conn: Connection) -> None:
    """Child process: deliver as Dovecot's mail user, so both write the same files."""
    os.setgid(grp.getgrnam(MAIL_GROUP).gr_gid)
    os.setuid(pwd.getpwnam(MAIL_USER).pw_uid)
    store = MaildirStore(StatePaths(state_dir), hostname="mx.example.com")
    uids = []
    for i in range(count):
        (ref,) = store.deliver([(USER, "INBOX")], f"Subject: mailstack {i}\r\n\r\nx\r\n".encode())
        uids.append(ref.uid)
    conn.send(uids)
    conn.close()


def test_dovecot_and_mailstack_deliver_at_the_same_time(
    dovecot_server: DovecotFactory, setup: tuple[MaildirStore, Path]
) -> None:
    store, maildir = setup
    server = dovecot_server({USER: (PASSWORD, maildir)})
    count = 25
    receiver, sender = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=_deliver_as_mail_user, args=(maildir.parents[2], count, sender), daemon=True
    )
    dovecot_uids = []
    with server.imap(USER) as imap:
        child.start()
        sender.close()
        for i in range(count):  # meanwhile Dovecot appends to the same folder
            typ, data = imap.append(
                "INBOX", None, None, f"Subject: dovecot {i}\r\n\r\ny\r\n".encode()
            )
            assert typ == "OK", data
            m = re.search(rb"APPENDUID \d+ (\d+)", data[0] or b"")
            assert m is not None, data
            dovecot_uids.append(int(m[1]))
        # A hang is a failure too (a forked child once inherited a dead fsync thread pool).
        assert receiver.poll(60), "the forked child's deliveries did not finish in 60 s"
        ours = receiver.recv()
        child.join(timeout=60)
        assert child.exitcode == 0
        imap.select("INBOX")
        theirs = fetch(imap, "FLAGS")
    assert sorted(ours + dovecot_uids) == list(range(1, 2 * count + 1))  # no UID twice
    assert ours == sorted(ours)
    assert dovecot_uids == sorted(dovecot_uids)
    snap = store.snapshot(USER, "INBOX")
    assert [m.uid for m in snap.messages] == sorted(theirs) == list(range(1, 2 * count + 1))
    for uid in ours[:3] + dovecot_uids[:3]:
        subject = store.read_message(USER, "INBOX", uid).split(b"\n", 1)[0]
        expected = b"mailstack" if uid in ours else b"dovecot"
        assert subject.startswith(b"Subject: " + expected)
    assert "Error" not in server.log(), server.log()


DOVECOT_QUOTA = """
mail_plugins = $mail_plugins quota
plugin {
  quota = maildir:User quota
  quota_rule = *:storage=1G
}
"""


def test_maildirsize_shared_with_dovecot_quota(
    dovecot_server: DovecotFactory, setup: tuple[MaildirStore, Path]
) -> None:
    """Dovecot's `quota = maildir` and mailstack keep one maildirsize exact between them."""
    store, maildir = setup
    store.deliver([(USER, "INBOX")], b"Subject: 1\r\n\r\n" + b"a" * 1000 + b"\r\n")
    server = dovecot_server({USER: (PASSWORD, maildir)}, DOVECOT_QUOTA)
    with server.imap(USER) as imap:
        imap.select("INBOX")  # Dovecot reads (and may recount) maildirsize
        for i in range(3):
            imap.append("INBOX", None, None, f"Subject: d{i}\r\n\r\n{'b' * 500}\r\n".encode())
        imap.uid("STORE", "2", "+FLAGS", r"(\Deleted)")
        imap.expunge()
    store.deliver([(USER, "Archive")], b"Subject: 2\r\n\r\n" + b"c" * 700 + b"\r\n")
    on_disk = sum(
        os.path.getsize(os.path.join(d, name))
        for d in (
            maildir / "cur",
            maildir / "new",
            maildir / ".Archive" / "cur",
            maildir / ".Archive" / "new",
        )
        for name in os.listdir(d)
    )
    lines = (maildir / "maildirsize").read_text().splitlines()
    assert lines[0].startswith("1073741824S")  # Dovecot's limit: it wrote this file
    assert sum(int(line.split()[0]) for line in lines[1:]) == on_disk
    assert MaildirStore(StatePaths(maildir.parents[2])).usage_bytes(USER) == on_disk
    assert "Error" not in server.log(), server.log()
