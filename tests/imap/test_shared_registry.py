"""LIST of shared folders through the registry (delivery/acl_registry.py) over real IMAP
sessions: with 300 accounts a LIST and the first SELECT look only at the folders shared with
the user (counted with an audit hook on every open and directory listing in the process),
a file written by hand is listed after the rescan, a registry deleted or turned to garbage
under a running server gives the same answers, and an owner's RENAME/DELETE of a shared
folder shows at once."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery import acl, acl_registry

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

ALICE, BOB = USER, OTHER_USER
CAROL, DAVE = "carol@example.com", "dave@example.com"
CAROL_PASSWORD = "carol's own password"
ACCOUNTS = 300  # other accounts, with folders, some shared among themselves
FOLDERS = (".Sent", ".Drafts", ".Trash", ".Junk", ".Archive")
CAROL_SENT = "Shared/carol@example.com/Sent"
DAVE_ARCHIVE = "Shared/dave@example.com/Archive"
PRIVATE = "Shared/alice@example.com/Private"
PROJECTS = "Shared/alice@example.com/Projects"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.add_user(CAROL, CAROL_PASSWORD)
    dep.store.create_folder(ALICE, "Projects")
    dep.store.create_folder(ALICE, "Private")
    return dep


@pytest.fixture
def started(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    server = ImapServerThread(dep, rescan_s=60.0).start()
    try:
        yield server
    finally:
        server.stop()


def login(server: ImapServerThread, user: str, password: str) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port, timeout_s=30)
    assert client.tagged(f'LOGIN {user} "{password}"').startswith(b"OK")
    return client


def shared_names(client: RawClient) -> list[str]:
    """The other accounts' folders LIST shows (not their \\Noselect parents), sorted."""
    lines = client.command('LIST "" "*"')
    assert b" OK " in lines[-1], lines
    names = [line.rstrip().rpartition(b" ")[2].strip(b'"').decode() for line in lines[:-1]]
    return sorted(n for n in names if n.startswith(("Shared/", "Public/")) and n.count("/") > 1)


def share(dep: ImapDeployment, owner: str, folder: str, identifier: str, rights: str) -> None:
    dep.store.acls.set_rights(owner, folder, identifier, rights)


# -- what a LIST touches ------------------------------------------------------------------------
class Touched:
    """Paths opened or listed by any thread of this process while armed (sys.addaudithook:
    hooks cannot be removed, so one is added per process and does nothing while disarmed)."""

    armed: Touched | None = None
    hooked = False

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __enter__(self) -> Touched:
        if not Touched.hooked:
            sys.addaudithook(Touched._hook)
            Touched.hooked = True
        Touched.armed = self
        return self

    def __exit__(self, *exc: object) -> None:
        Touched.armed = None

    @staticmethod
    def _hook(event: str, args: tuple[object, ...]) -> None:
        touched = Touched.armed
        if touched is None or event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        path = args[0]
        if isinstance(path, (str, bytes, os.PathLike)):
            touched.paths.append(os.fsdecode(path))

    def accounts(self, mail_dir: Path) -> set[str]:
        """local@domain of every account looked into; "*" for a listing of mail/ or a domain."""
        out: set[str] = set()
        for path in self.paths:
            parts = Path(os.path.abspath(path)).parts
            if parts[: len(mail_dir.parts)] != mail_dir.parts:
                continue
            rest = parts[len(mail_dir.parts) :]
            out.add(f"{rest[1]}@{rest[0]}" if len(rest) >= 2 else "*")
        return out


def crowd(dep: ImapDeployment) -> None:
    """ACCOUNTS more Maildirs as Dovecot would have them (no need for rows in users.sqlite3:
    a walk finds them all the same), every tenth sharing a folder with its neighbour."""
    domain = dep.paths.mail_dir / "example.com"
    for i in range(ACCOUNTS):
        root = domain / f"user{i:03}"
        for folder in ("", *FOLDERS):
            for sub in ("cur", "new", "tmp"):
                (root / folder / sub).mkdir(parents=True)
        if i % 10 == 0:
            (root / ".Sent" / acl.ACL_FILE).write_text(f"user=user{i + 1:03}@example.com lr\n")


def test_list_and_first_select_look_only_at_what_is_shared_with_the_user(
    dep: ImapDeployment, started: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acl_registry, "RESCAN_S", 3600.0)  # no rescan thread in the count
    crowd(dep)
    dep.add_user(DAVE, "dave's own password")
    share(dep, CAROL, "Sent", f"user={ALICE}", "lrs")
    share(dep, DAVE, "Archive", acl.AUTHENTICATED, "lr")  # everyone's: looked at by all
    with login(started, BOB, OTHER_PASSWORD) as bob:  # the first LIST fills the registry
        assert shared_names(bob) == [DAVE_ARCHIVE]
    with login(started, ALICE, PASSWORD) as alice, Touched() as touched:
        names = shared_names(alice)
        assert alice.tagged("SELECT INBOX").startswith(b"OK")  # the structure cache's prune
        assert alice.tagged(f'SELECT "{CAROL_SENT}"').startswith(b"OK")
    assert CAROL_SENT in names and DAVE_ARCHIVE in names
    assert touched.accounts(dep.paths.mail_dir) <= {ALICE, CAROL, DAVE}, touched.paths


# -- staleness, damage, renames -----------------------------------------------------------------
def test_a_file_written_by_hand_is_listed_after_the_rescan(
    dep: ImapDeployment, started: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acl_registry, "RESCAN_S", 3600.0)
    with login(started, BOB, OTHER_PASSWORD) as bob:
        assert shared_names(bob) == []  # the registry is built, empty
        private = acl.folder_dir(dep.paths.maildir(ALICE), "Private") / acl.ACL_FILE
        private.write_text(f"owner lrswipkxtea\nuser={BOB} lr\n")  # Dovecot, or an editor
        assert shared_names(bob) == []  # the registry says where to look: not due yet
        monkeypatch.setattr(acl_registry, "RESCAN_S", 0.0)
        deadline = time.monotonic() + 10
        while PRIVATE not in shared_names(bob):  # the first LIST starts the rescan
            assert time.monotonic() < deadline, "not listed after the rescan"
            time.sleep(0.02)
        assert bob.tagged(f'EXAMINE "{PRIVATE}"').startswith(b"OK")
        assert bob.tagged("CLOSE").startswith(b"OK")  # (a selected folder that goes: BYE)
        private.unlink()  # rights come from the file itself: gone at once
        assert PRIVATE not in shared_names(bob)
        assert bob.tagged(f'EXAMINE "{PRIVATE}"').startswith(b"NO")


@pytest.mark.parametrize("damage", ["deleted", "garbage"])
def test_the_registry_deleted_or_garbage_under_a_running_server(
    dep: ImapDeployment, started: ImapServerThread, damage: str
) -> None:
    with login(started, ALICE, PASSWORD) as alice, login(started, BOB, OTHER_PASSWORD) as bob:
        assert shared_names(bob) == []
        assert alice.tagged(f"SETACL Projects {BOB} lr").startswith(b"OK")
        assert alice.tagged("SETACL Private anyone l").startswith(b"OK")
        before = shared_names(bob)
        assert before == [PRIVATE, PROJECTS]
        path = dep.paths.shares_db
        if damage == "deleted":
            path.unlink()
        else:
            path.write_bytes(b"\0garbage\n" * 1000)
        assert shared_names(bob) == before
        assert alice.tagged(f"DELETEACL Projects {BOB}").startswith(b"OK")  # still kept
        assert shared_names(bob) == [PRIVATE]


def test_rename_and_delete_of_a_shared_folder_show_at_once(
    dep: ImapDeployment, started: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acl_registry, "RESCAN_S", 3600.0)  # only the writers keep it current
    with login(started, ALICE, PASSWORD) as alice, login(started, BOB, OTHER_PASSWORD) as bob:
        assert shared_names(bob) == []
        assert alice.tagged(f"SETACL Projects {BOB} lr").startswith(b"OK")
        assert alice.tagged("CREATE Projects.2024").startswith(b"OK")  # inherits the ACL
        assert shared_names(bob) == [PROJECTS, f"{PROJECTS}/2024"]
        assert alice.tagged("RENAME Projects Plans").startswith(b"OK")
        plans = "Shared/alice@example.com/Plans"
        assert shared_names(bob) == [plans, f"{plans}/2024"]
        assert alice.tagged("DELETE Plans.2024").startswith(b"OK")
        assert shared_names(bob) == [plans]
