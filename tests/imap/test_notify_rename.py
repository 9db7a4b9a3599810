"""NOTIFY MailboxName (RFC 5465 §5.4) for a folder renamed by another hand: another program
(`os.rename` of the Maildir++ directory, as Dovecot or a script does it) or another server
process on the same Maildir. The NOTIFY session hears it as one LIST with OLDNAME (RFC 9051
§7.3.1), as for a RENAME in this process, and nothing about the children (RFC 9051 §6.3.6:
the client infers them). A deletion and a creation stay a deletion and a creation."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
from pathlib import Path

import pytest
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore

from tests.imap.rawclient import RawClient
from tests.imap.servers import connect
from tests.support.imapserver import (
    HOSTNAME,
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

WAIT_S = 10.0  # generous on a loaded machine


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store.create_folder(USER, "Work")
    dep.store.create_folder(USER, "Work.2024")
    return dep


def login(port: int) -> RawClient:
    client = connect(port, timeout_s=WAIT_S)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def notifying(port: int) -> RawClient:
    client = login(port)
    assert client.tagged("NOTIFY SET (personal (MailboxName))").startswith(b"OK")
    return client


def next_list(client: RawClient) -> bytes:
    while not re.match(rb"\* LIST ", line := client.line()):
        pass
    return line


def no_more_lists(client: RawClient) -> None:
    rest = client.command("NOOP")
    assert b" OK " in rest[-1]
    assert not [line for line in rest if line.startswith(b"* LIST")], rest


def test_a_folder_renamed_on_disk_is_told_with_oldname(
    dep: ImapDeployment, server: ImapServerThread
) -> None:
    root = dep.paths.maildir(USER)
    with notifying(server.imap_port) as client:
        # As Dovecot renames a Maildir++ folder: each directory, the parent first.
        os.rename(root / ".Work", root / ".Job")
        os.rename(root / ".Work.2024", root / ".Job.2024")
        assert next_list(client) == b'* LIST () "." Job ("OLDNAME" (Work))\r\n'
        no_more_lists(client)
        listed = b"".join(client.command('LIST "" "*"'))
        assert b" Job.2024\r\n" in listed and b" Work" not in listed


def test_a_deletion_and_a_creation_stay_so(dep: ImapDeployment, server: ImapServerThread) -> None:
    root = dep.paths.maildir(USER)
    with notifying(server.imap_port) as client:
        # Both directories exist at once, so the new one cannot reuse the old one's inode.
        shutil.copytree(root / ".Work.2024", root / ".Done")
        shutil.rmtree(root / ".Work.2024")
        told = {next_list(client) for _ in range(2)}
        assert told == {
            b'* LIST (\\NonExistent) "." Work.2024\r\n',
            b'* LIST () "." Done\r\n',
        }
        no_more_lists(client)


def test_a_rename_in_another_server_process_is_told_with_oldname(
    dep: ImapDeployment, server: ImapServerThread
) -> None:
    """Another `serve` on the same Maildir: its own store and event hub, so nothing of its
    RENAME reaches this server but the directories on disk."""
    events = EventHub()
    store = MaildirStore(dep.paths, events, hostname=HOSTNAME, quota_of=dep.accounts.quota_bytes)
    other = dataclasses.replace(dep, store=store, events=events)
    with notifying(server.imap_port) as client, running_server(other) as elsewhere:
        with login(elsewhere.imap_port) as renamer:
            assert renamer.tagged("RENAME Work Job").startswith(b"OK")
        assert next_list(client) == b'* LIST () "." Job ("OLDNAME" (Work))\r\n'
        no_more_lists(client)


def test_a_shared_folder_renamed_by_its_owner_is_told_with_oldname(
    server: ImapServerThread,
) -> None:
    """Bob sees Alice's shared folder (RFC 4314 rights in its dovecot-acl, which moves with the
    directory) under Shared/; her RENAME of it is one rename for him too."""
    with login(server.imap_port) as alice:
        assert alice.tagged(f"SETACL Work {OTHER_USER} lr").startswith(b"OK")
        bob = connect(server.imap_port, timeout_s=WAIT_S)
        with bob:
            assert bob.tagged(f'LOGIN {OTHER_USER} "{OTHER_PASSWORD}"').startswith(b"OK")
            assert bob.tagged("NOTIFY SET (subtree (Shared) (MailboxName))").startswith(b"OK")
            assert alice.tagged("RENAME Work Job").startswith(b"OK")
            shared = f"Shared/{USER}/".encode()
            assert next_list(bob) == (
                b'* LIST () "/" ' + shared + b'Job ("OLDNAME" (' + shared + b"Work))\r\n"
            )
            no_more_lists(bob)
