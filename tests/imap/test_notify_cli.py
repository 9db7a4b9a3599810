"""NOTIFY MailboxName and SubscriptionChange (RFC 5465 §5.4, §5.5) for changes no session of
the NOTIFY session's account made: another program creating, deleting or subscribing
folders in the Maildir, the admin's `mailstack share`, `share revoke` and `mailbox add` (a
folder appears in or leaves the Shared/Public namespace), and the owner of a shared folder
creating a child of it or sharing another (SETACL/DELETEACL). The NOTIFY session sends no
command meanwhile; it hears it all as LIST responses."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery import folders

from tests.conftest import run_cli
from tests.imap.rawclient import RawClient
from tests.support.serve import ServeProcess

BOB, ALICE = "bob@example.com", "alice@example.com"
PASSWORD = "notify from the cli"
WAIT_S = 10.0  # generous on a loaded machine; how fast it is belongs in bench/
NOTIFY = (
    "NOTIFY SET (personal (MailboxName SubscriptionChange))"
    " (subtree (Shared Public) (MailboxName SubscriptionChange MailboxMetadataChange))"
)


def next_list(client: RawClient) -> bytes:
    """The next LIST response (skipping anything else the server says)."""
    while not re.match(rb"\* LIST ", line := client.line()):
        pass
    return line


def login(port: int, user: str) -> RawClient:
    client = RawClient("127.0.0.1", port, timeout_s=WAIT_S)
    assert client.tagged(f'LOGIN {user} "{PASSWORD}"').startswith(b"OK")
    return client


@pytest.fixture
def opened() -> Iterator[list[RawClient]]:
    clients: list[RawClient] = []
    yield clients
    for client in clients:
        client.close()


def test_changes_from_outside_reach_notify(deployment_dir: Path, opened: list[RawClient]) -> None:
    for user in (BOB, ALICE):
        added = run_cli(deployment_dir, "user", "add", user, "--password-stdin", input=PASSWORD)
        assert added.returncode == 0, added.stderr
    bob_root = deployment_dir / "mail/example.com/bob"
    with ServeProcess(deployment_dir) as proc:
        port = proc.port("imap")
        client = login(port, BOB)
        opened.append(client)
        assert client.tagged(NOTIFY).startswith(b"OK")
        # Another program (mbsync, Dovecot, a script) makes a folder: one rename into place.
        staged = deployment_dir / "staged"
        for sub in ("cur", "new", "tmp"):
            (staged / sub).mkdir(parents=True)
        os.rename(staged, bob_root / ".Projects")
        assert next_list(client) == b'* LIST () "." Projects\r\n'
        folders.change_subscriptions(bob_root, ["Projects"], [])
        assert next_list(client) == b'* LIST (\\Subscribed) "." Projects\r\n'
        folders.change_subscriptions(bob_root, [], ["Projects"])
        assert next_list(client) == b'* LIST () "." Projects\r\n'
        # A rename in a session of Bob's takes the children along, for the others too:
        # told once, with OLDNAME, and no word of the children (the client infers them).
        other = login(port, BOB)
        opened.append(other)
        assert other.tagged("CREATE Projects.2024").startswith(b"OK")
        assert next_list(client) == b'* LIST () "." Projects.2024\r\n'
        assert other.tagged("RENAME Projects Plans").startswith(b"OK")
        assert next_list(client) == b'* LIST () "." Plans ("OLDNAME" (Projects))\r\n'
        # And back, by another hand: the same, known by the directory's inode.
        os.rename(bob_root / ".Plans", bob_root / ".Projects")
        os.rename(bob_root / ".Plans.2024", bob_root / ".Projects.2024")
        assert next_list(client) == b'* LIST () "." Projects ("OLDNAME" (Plans))\r\n'
        other.close()
        shutil.rmtree(bob_root / ".Projects.2024")
        shutil.rmtree(bob_root / ".Projects")
        told = {next_list(client) for _ in range(2)}
        assert told == {
            b'* LIST (\\NonExistent) "." Projects\r\n',
            b'* LIST (\\NonExistent) "." Projects.2024\r\n',
        }
        # The admin shares one of Alice's folders with Bob, then takes it back.
        shared = b'"/" Shared/alice@example.com/Archive\r\n'
        done = run_cli(deployment_dir, "share", "Archive", "--owner", ALICE, "--with", BOB)
        assert done.returncode == 0, done.stderr
        assert next_list(client) == b"* LIST () " + shared
        # Alice makes a child of it in her session: it inherits the ACL, Bob sees it come.
        alice = login(port, ALICE)
        opened.append(alice)
        assert alice.tagged("CREATE Archive.2024").startswith(b"OK")
        assert next_list(client) == b'* LIST () "/" Shared/alice@example.com/Archive/2024\r\n'
        # Her annotation of it: the /shared entry under Bob's name for it, not her /private one.
        assert alice.tagged(
            'SETMETADATA Archive.2024 (/private/comment "mine" /shared/comment "ours")'
        ).startswith(b"OK")
        while not (line := client.line()).startswith(b"* METADATA"):
            pass
        assert line == b"* METADATA Shared/alice@example.com/Archive/2024 /shared/comment\r\n"
        # Alice shares another folder herself (SETACL): the same.
        assert alice.tagged(f"SETACL Sent {BOB} lr").startswith(b"OK")
        assert next_list(client) == b'* LIST () "/" Shared/alice@example.com/Sent\r\n'
        assert alice.tagged(f"DELETEACL Sent {BOB}").startswith(b"OK")
        assert next_list(client) == b'* LIST (\\NonExistent) "/" Shared/alice@example.com/Sent\r\n'
        alice.close()
        done = run_cli(
            deployment_dir, "share", "revoke", "Archive", "--owner", ALICE, "--with", BOB
        )
        assert done.returncode == 0, done.stderr
        assert next_list(client) == b"* LIST (\\NonExistent) " + shared
        # A team mailbox Bob is a member of appears in the Public namespace.
        done = run_cli(deployment_dir, "mailbox", "add", "support@example.com", "--members", BOB)
        assert done.returncode == 0, done.stderr
        team = b'* LIST () "/" Public/support@example.com/'
        folders_made = ("Archive", "Drafts", "INBOX", "Junk", "Sent", "Trash")  # `user add`'s
        told = [next_list(client) for _ in folders_made]
        assert told == [team + name.encode() + b"\r\n" for name in folders_made]
        # Nothing was told twice: whatever comes before NOOP's OK is no LIST.
        rest = client.command("NOOP")
        assert b" OK " in rest[-1]
        assert not [line for line in rest if line.startswith(b"* LIST")], rest
        client.close()
        assert proc.stop() == 0, "".join(proc.log)
