"""Shared folders and team mailboxes over IMAP (imap/shared.py, imap/session_acl.py): the
Shared/ and Public/ namespaces, rights enforced on each command and changed under running
sessions, the RFC 4314 commands, IDLE on a shared folder, COPY between accounts."""

from __future__ import annotations

import imaplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery import acl
from mailstack.delivery.store import INBOX

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

ALICE, BOB, CAROL, TEAM = USER, OTHER_USER, "carol@example.com", "support@example.com"
CAROL_PASSWORD = "carol's own password"
PROJECTS = "Shared/alice@example.com/Projects"
TEAM_INBOX = "Public/support@example.com/INBOX"
MESSAGE = b"From: x@example.org\r\nSubject: plan %d\r\n\r\nthe plan\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.add_user(CAROL, CAROL_PASSWORD)
    dep.add_user(TEAM, "nobody knows this one")
    dep.accounts.set_enabled(TEAM, False)
    dep.store.create_folder(ALICE, "Projects")
    dep.store.create_folder(ALICE, "Private")
    for n in range(3):
        dep.store.deliver([(ALICE, "Projects")], MESSAGE % n)
    dep.store.deliver([(TEAM, INBOX)], MESSAGE % 9)
    share(dep, ALICE, "Projects", BOB, "lrs")
    for member in (ALICE, BOB):
        share(dep, TEAM, INBOX, member, "lrswipkxte")
    return dep


def share(dep: ImapDeployment, owner: str, folder: str, user: str, rights: str) -> None:
    acl.set_rights(acl.folder_dir(dep.paths.maildir(owner), folder), f"user={user}", rights)


@pytest.fixture
def server(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(dep) as server:
        yield server


def raw(server: ImapServerThread, user: str, password: str) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    assert client.tagged(f'LOGIN {user} "{password}"').startswith(b"OK")
    return client


def listed(client: RawClient, pattern: str = "*") -> dict[str, bytes]:
    lines = client.command(f'LIST "" "{pattern}"')
    assert lines[-1].split(b" ")[1] == b"OK", lines
    out = {}
    for line in lines[:-1]:
        head, _, name = line.rstrip().rpartition(b" ")
        out[name.strip(b'"').decode()] = head
    return out


def test_namespace_and_list(server: ImapServerThread) -> None:
    with raw(server, BOB, OTHER_PASSWORD) as bob:
        ns = bob.command("NAMESPACE")
        assert b'* NAMESPACE (("" ".")) (("Shared/" "/")) (("Public/" "/"))' in ns[0]
        caps = bob.command("CAPABILITY")[0]
        assert b" ACL" in caps and b"RIGHTS=texk" in caps
        everything = listed(bob)
        assert everything["Shared"] == b'* LIST (\\Noselect \\HasChildren) "/"'
        assert everything["Shared/alice@example.com"] == b'* LIST (\\Noselect \\HasChildren) "/"'
        assert everything[PROJECTS] == b'* LIST (\\HasNoChildren) "/"'
        assert everything[TEAM_INBOX] == b'* LIST (\\HasNoChildren) "/"'
        assert "Shared/alice@example.com/Private" not in everything  # not shared
        assert everything["INBOX"].endswith(b'"."')
        top = listed(bob, "%")
        assert "Shared" in top and "Public" in top and PROJECTS not in top
        assert set(listed(bob, "Shared/%")) == {"Shared/alice@example.com"}
    with raw(server, CAROL, CAROL_PASSWORD) as carol:
        assert not [n for n in listed(carol) if n.startswith(("Shared", "Public"))]


def test_rights_are_enforced(server: ImapServerThread) -> None:
    with raw(server, BOB, OTHER_PASSWORD) as bob:
        assert bob.tagged(f'SELECT "{PROJECTS}"').startswith(b"OK [READ-WRITE]")  # s is a write
        fetched = bob.command("FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert b"plan 0" in b"".join(fetched)
        assert bob.tagged("STORE 1 +FLAGS (\\Seen)").startswith(b"OK")
        assert bob.tagged("STORE 1 +FLAGS (\\Deleted)").startswith(b"NO [NOPERM]")
        assert bob.tagged("STORE 1 +FLAGS ($Work)").startswith(b"NO [NOPERM]")
        assert bob.tagged("EXPUNGE").startswith(b"NO [NOPERM]")
        assert bob.tagged(f'APPEND "{PROJECTS}" {{5+}}\r\nhello').startswith(b"NO [NOPERM]")
        assert bob.tagged("GETACL Projects").startswith(b"NO")  # his own has none
        assert bob.tagged(f'GETACL "{PROJECTS}"').startswith(b"NO [NOPERM]")  # no a right
    with raw(server, ALICE, PASSWORD) as alice:  # the flag is Alice's too: flags are shared
        assert alice.tagged("SELECT Projects").startswith(b"OK")
        assert b"\\Seen" in alice.command("FETCH 1 (FLAGS)")[0]
    with raw(server, CAROL, CAROL_PASSWORD) as carol:
        assert carol.tagged(f'SELECT "{PROJECTS}"').startswith(b"NO [NONEXISTENT]")
        assert carol.tagged(f'STATUS "{PROJECTS}" (MESSAGES)').startswith(b"NO")
        assert carol.tagged(f'SELECT "{TEAM_INBOX}"').startswith(b"NO [NONEXISTENT]")


def test_acl_commands_and_changes_apply_at_once(server: ImapServerThread) -> None:
    with raw(server, BOB, OTHER_PASSWORD) as bob, raw(server, ALICE, PASSWORD) as alice:
        assert bob.tagged(f'SELECT "{PROJECTS}"').startswith(b"OK")
        assert bob.tagged("STORE 2 +FLAGS (\\Deleted)").startswith(b"NO [NOPERM]")
        acl_line = alice.command("GETACL Projects")[0].rstrip()
        assert acl_line == b"* ACL Projects alice@example.com lrswipkxtea bob@example.com lrs"
        assert alice.tagged("SETACL Projects bob@example.com +te").startswith(b"OK")
        # Bob's session, still selected, may now delete and expunge.
        assert bob.tagged("STORE 2 +FLAGS (\\Deleted)").startswith(b"OK")
        assert bob.tagged("EXPUNGE").startswith(b"OK")
        assert bob.command(f'MYRIGHTS "{PROJECTS}"')[0].rstrip() == (
            b"* MYRIGHTS Shared/alice@example.com/Projects lrste"
        )
        assert alice.tagged("SETACL Projects nobody@example.com lr").startswith(b"NO")
        assert alice.tagged("SETACL Projects bob@example.com lrz").startswith(b"NO [CANNOT]")
        lr = alice.command("LISTRIGHTS Projects bob@example.com")[0].rstrip()
        assert lr == b'* LISTRIGHTS Projects bob@example.com "" l r s w i p k x t e a'
        assert alice.tagged("DELETEACL Projects bob@example.com").startswith(b"OK")
        # Gone at once: for Bob's session the selected folder vanished, as if deleted.
        bob.send(b"f1 FETCH 1 (FLAGS)\r\n")
        assert bob.line().startswith(b"* BYE")
    with raw(server, BOB, OTHER_PASSWORD) as bob, raw(server, ALICE, PASSWORD) as alice:
        assert PROJECTS not in listed(bob)
        assert alice.command("MYRIGHTS INBOX")[0].rstrip() == b"* MYRIGHTS INBOX lrswipkxtea"


def test_team_mailbox_members_share_mail_and_idle(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    with raw(server, ALICE, PASSWORD) as alice, raw(server, BOB, OTHER_PASSWORD) as bob:
        for member in (alice, bob):
            assert member.tagged(f'SELECT "{TEAM_INBOX}"').startswith(b"OK [READ-WRITE]")
        assert bob.tagged("STORE 1 +FLAGS (\\Flagged)").startswith(b"OK")
        bob.send(b"i1 IDLE\r\n")
        assert bob.line().startswith(b"+")
        dep.store.deliver([(TEAM, INBOX)], MESSAGE % 10)  # mail to support@ arrives
        assert bob.line().strip() == b"* 2 EXISTS"
        bob.send(b"DONE\r\n")
        assert bob.until_tagged(b"i1")[-1].startswith(b"i1 OK")
        assert b"\\Flagged" in alice.command("FETCH 1 (FLAGS)")[-2]
        # COPY from the team's folder into Alice's own INBOX: a copy between two accounts.
        lines = alice.command("COPY 1:2 INBOX")
        assert lines[-1].split(b" ")[1] == b"OK" and b"COPYUID" in lines[-1], lines
    assert len(dep.store.snapshot(ALICE, INBOX).messages) == 2


def test_imaplib_client_sees_the_shared_folder(server: ImapServerThread) -> None:
    imap = imaplib.IMAP4("127.0.0.1", server.imap_port)
    imap.login(BOB, OTHER_PASSWORD)
    typ, data = imap.list('""', '"Shared/*"')
    assert typ == "OK" and any(PROJECTS.encode() in d for d in data if isinstance(d, bytes))
    typ, data = imap.select(f'"{PROJECTS}"')
    assert typ == "OK" and int(data[0]) == 3
    imap.logout()


def test_new_folders_inherit_the_acl_and_lsub_lists_shared_subscriptions(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    with raw(server, BOB, OTHER_PASSWORD) as bob, raw(server, ALICE, PASSWORD) as alice:
        # Bob (k on the team's INBOX) creates a folder in it: Alice sees it, same rights.
        cases = "Public/support@example.com/INBOX/Cases"
        assert bob.tagged(f'CREATE "{cases}"').startswith(b"OK")
        assert cases in listed(alice)
        assert alice.tagged(f'SELECT "{cases}"').startswith(b"OK [READ-WRITE]")
        assert bob.tagged('CREATE "Public/support@example.com/Top"').startswith(b"NO")
        with raw(server, CAROL, CAROL_PASSWORD) as carol:
            assert carol.tagged(f'CREATE "{cases}/Mine"').startswith(b"NO")
        # Alice's own new subfolder of a shared folder is shared the same way.
        assert alice.tagged("CREATE Projects.2024").startswith(b"OK")
        assert "Shared/alice@example.com/Projects/2024" in listed(bob)
        assert "Shared/alice@example.com/Private" not in listed(bob)
        # LSUB (what older Thunderbird uses): shared folders can be subscribed and listed.
        assert bob.tagged(f'SUBSCRIBE "{PROJECTS}"').startswith(b"OK")
        lsub = bob.command('LSUB "" "Shared/*"')
        assert any(line.rstrip().endswith(PROJECTS.encode()) for line in lsub[:-1]), lsub
        assert b'"/"' in lsub[0]


@pytest.mark.external
@pytest.mark.timeout(300)
def test_mbsync_member_syncs_the_team_mailbox(
    tmp_path: Path, server: ImapServerThread, dep: ImapDeployment
) -> None:
    """Bob's mbsync, configured for the Public/ namespace only, pulls the team's mail and
    pushes a \\Seen back, which Alice then sees: one mailbox, two people. mbsync takes one
    delimiter for the whole server and refuses names with another, so it is told "/" (the
    README says so for mbsync users of shared folders)."""
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount bob
Host localhost
Port {server.imaps_port}
User {BOB}
Pass "{OTHER_PASSWORD}"
SSLType IMAPS
CertificateFile {dep.paths.ca_cert}
AuthMechs PLAIN

IMAPStore remote
Account bob
PathDelimiter /

MaildirStore local
Path {local}/
SubFolders Verbatim

Channel team
Far :remote:
Near :local:
Patterns "Public/support@example.com/*"
Create Near
Sync All
SyncState *
""")
    result = subprocess.run(
        ["mbsync", "-c", str(rc), "team"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pulled = list((local / "Public/support@example.com/INBOX").glob("*/*"))
    assert [p.read_bytes().count(b"plan 9") for p in pulled] == [1]
    assert not (local / "Shared").exists()  # outside the pattern: not synced
    mail = pulled[0]
    mail.rename(mail.parent.parent / "cur" / (mail.name.split(":")[0] + ":2,S"))
    result = subprocess.run(
        ["mbsync", "-c", str(rc), "team"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [info] = dep.store.snapshot(TEAM, INBOX).messages
    assert "\\Seen" in info.flags
