"""METADATA (RFC 5464) over the wire: server and mailbox entries, private and shared, DEPTH and
MAXSIZE, binary values, limits, RENAME/DELETE, persistence, and rights on a shared folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailstack.delivery import acl

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
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

ALICE, BOB = USER, OTHER_USER


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store.create_folder(ALICE, "Projects")
    acl.set_rights(acl.folder_dir(dep.paths.maildir(ALICE), "Projects"), f"user={BOB}", "lrs")
    return dep


def login(server: ImapServerThread, user: str = ALICE, password: str = PASSWORD) -> RawClient:
    return logged_in(server.imap_port, user=user, password=password)


def get(client: RawClient, args: str) -> tuple[bytes, bytes]:
    """(the METADATA response or b"", the tagged completion)."""
    lines = client.command(f"GETMETADATA {args}")
    data = b"".join(line for line in lines[:-1] if line.startswith(b"* METADATA"))
    return data, lines[-1].split(b" ", 1)[1]


def test_private_and_shared_mailbox_entries(server: ImapServerThread) -> None:
    with login(server) as alice:
        assert b" METADATA" in alice.command("CAPABILITY")[0]
        ok = alice.tagged('SETMETADATA INBOX (/private/comment "my inbox" /shared/comment "all")')
        assert ok.startswith(b"OK")
        data, done = get(alice, "INBOX (/private/comment /shared/comment /private/none)")
        assert done.startswith(b"OK")
        assert data == b'* METADATA INBOX (/private/comment "my inbox" /shared/comment "all")\r\n'
        assert alice.tagged("SETMETADATA INBOX (/private/comment NIL)").startswith(b"OK")
        data, _ = get(alice, "INBOX /private/comment")
        assert data == b""  # removed


def test_depth_maxsize_and_binary_values(server: ImapServerThread) -> None:
    with login(server) as alice:
        long_value = "x" * 100
        assert alice.tagged(
            'SETMETADATA INBOX (/private/vendor/x/a "1" /private/vendor/x/b/c "2"'
            f' /private/vendor/x/long "{long_value}")'
        ).startswith(b"OK")
        data, _ = get(alice, "INBOX /private/vendor/x")
        assert data == b""  # DEPTH 0: only the entry itself, which has no value
        data, _ = get(alice, "(DEPTH 1) INBOX /private/vendor/x")
        assert b"/private/vendor/x/a" in data and b"/private/vendor/x/b/c" not in data
        data, _ = get(alice, "(DEPTH infinity) INBOX /private/vendor/x")
        assert b"/private/vendor/x/b/c" in data
        data, done = get(alice, "(MAXSIZE 10 DEPTH 1) INBOX /private/vendor/x")
        assert b"long" not in data and done.startswith(b"OK [METADATA LONGENTRIES 100]")
        binary = b"a\x00b\r\nc"
        alice.send(b"b1 SETMETADATA INBOX (/private/vendor/bin ~{%d+}\r\n" % len(binary))
        alice.send(binary + b")\r\n")
        assert alice.until_tagged(b"b1")[-1].startswith(b"b1 OK")
        data, _ = get(alice, "INBOX /private/vendor/bin")
        assert data.endswith(b"{%d}\r\n" % len(binary) + binary + b")\r\n")


def test_server_entries(server: ImapServerThread) -> None:
    with login(server) as alice:
        data, _ = get(alice, '"" /shared/admin')
        assert data == b'* METADATA "" (/shared/admin "mailto:postmaster@example.com")\r\n'
        assert alice.tagged('SETMETADATA "" (/shared/comment "x")').startswith(b"NO [NOPERM]")
        assert alice.tagged('SETMETADATA "" (/private/vendor/theme "dark")').startswith(b"OK")
        data, _ = get(alice, '"" /private/vendor/theme')
        assert b'"dark"' in data
    with login(server, BOB, OTHER_PASSWORD) as bob:  # Alice's private server entry is hers
        data, _ = get(bob, '"" /private/vendor/theme')
        assert data == b""


def test_limits_and_bad_input(server: ImapServerThread) -> None:
    with login(server) as alice:
        big = 65 * 1024
        alice.send(b"b1 SETMETADATA INBOX (/private/big {%d+}\r\n" % big + b"y" * big + b")\r\n")
        assert alice.until_tagged(b"b1")[-1].startswith(b"b1 NO [METADATA MAXSIZE 65536]")
        pairs = " ".join(f'/private/n/{i} "v"' for i in range(201))
        assert alice.tagged(f"SETMETADATA INBOX ({pairs})").startswith(b"NO [METADATA TOOMANY]")
        assert get(alice, "INBOX /private/n/0")[0] == b""  # all or nothing
        for bad in ("INBOX /foo", "INBOX /private/*", "INBOX /private//x", "INBOX /private/"):
            assert get(alice, bad)[1].startswith(b"BAD"), bad
        assert get(alice, "Nope /private/comment")[1].startswith(b"NO [NONEXISTENT]")
        assert alice.tagged("NOOP").startswith(b"OK")  # the session goes on


def test_rename_delete_and_restart(server: ImapServerThread, dep: ImapDeployment) -> None:
    with login(server) as alice:
        assert alice.tagged("CREATE Work").startswith(b"OK")
        assert alice.tagged('SETMETADATA Work (/private/comment "w")').startswith(b"OK")
        assert alice.tagged("RENAME Work Job").startswith(b"OK")
        assert b'"w"' in get(alice, "Job /private/comment")[0]
        assert alice.tagged("DELETE Job").startswith(b"OK")
        assert alice.tagged("CREATE Job").startswith(b"OK")
        assert get(alice, "Job /private/comment")[0] == b""
        assert alice.tagged('SETMETADATA INBOX (/private/comment "kept")').startswith(b"OK")
    server.stop()
    with running_server(dep) as again, login(again) as alice:
        assert b'"kept"' in get(alice, "INBOX /private/comment")[0]


def test_shared_folder_entries_follow_the_rights(server: ImapServerThread) -> None:
    shared = "Shared/alice@example.com/Projects"
    with login(server) as alice, login(server, BOB, OTHER_PASSWORD) as bob:
        assert alice.tagged('SETMETADATA Projects (/shared/comment "plans")').startswith(b"OK")
        assert b'"plans"' in get(bob, f"{shared} /shared/comment")[0]
        assert bob.tagged(f'SETMETADATA {shared} (/private/comment "mine")').startswith(b"OK")
        assert get(alice, "Projects /private/comment")[0] == b""  # Bob's own note
        assert b'"mine"' in get(bob, f"{shared} /private/comment")[0]
        no = bob.tagged(f'SETMETADATA {shared} (/shared/comment "x")')
        assert no.startswith(b"NO [NOPERM]")  # lrs: no w
