"""Shares made by another process reach a running `serve` at once: the admin's `mailstack
share` / `share revoke` (the installed console script) and an owner's SETACL/DELETEACL, each
seen by the grantee's next LIST, through the registry of shared folders
(delivery/acl_registry.py, `DIR/shares.sqlite3`) rather than a walk of every account."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.imap.rawclient import RawClient
from tests.support.serve import ServeProcess

ALICE, BOB = "alice@example.com", "bob@example.com"
PASSWORD = "sharing from the cli"
SENT, DRAFTS = "Shared/alice@example.com/Sent", "Shared/alice@example.com/Drafts"


def login(port: int, user: str) -> RawClient:
    client = RawClient("127.0.0.1", port, timeout_s=30)
    assert client.tagged(f'LOGIN {user} "{PASSWORD}"').startswith(b"OK")
    return client


def shared_names(client: RawClient) -> list[str]:
    lines = client.command('LIST "" "Shared/*"')
    assert b" OK " in lines[-1], lines
    names = [line.rstrip().rpartition(b" ")[2].strip(b'"').decode() for line in lines[:-1]]
    return sorted(n for n in names if n.count("/") > 1)


def cli(root: Path, *args: str) -> str:
    done = run_cli(root, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_cli_and_setacl_shares_show_in_the_next_list(deployment_dir: Path) -> None:
    for user in (ALICE, BOB):
        done = run_cli(deployment_dir, "user", "add", user, "--password-stdin", input=PASSWORD)
        assert done.returncode == 0, done.stderr
    with ServeProcess(deployment_dir) as proc:
        port = proc.port("imap")
        with login(port, BOB) as bob, login(port, ALICE) as alice:
            assert shared_names(bob) == []  # builds the registry
            cli(deployment_dir, "share", "Sent", "--owner", ALICE, "--with", BOB)
            assert shared_names(bob) == [SENT]
            assert bob.tagged(f'EXAMINE "{SENT}"').startswith(b"OK")
            assert bob.tagged("CLOSE").startswith(b"OK")  # (a selected folder that goes: BYE)
            cli(deployment_dir, "share", "revoke", "Sent", "--owner", ALICE, "--with", BOB)
            assert shared_names(bob) == []
            assert bob.tagged(f'EXAMINE "{SENT}"').startswith(b"NO")
            assert alice.tagged(f"SETACL Drafts {BOB} lr").startswith(b"OK")
            assert shared_names(bob) == [DRAFTS]
            listed = json.loads(cli(deployment_dir, "share", "list", "--json"))
            assert listed == [{"owner": ALICE, "folder": "Drafts", "with": BOB, "rights": "lr"}]
            assert alice.tagged(f"DELETEACL Drafts {BOB}").startswith(b"OK")
            assert shared_names(bob) == []
        assert proc.stop() == 0, "".join(proc.log)
    registry = deployment_dir / "shares.sqlite3"
    assert registry.stat().st_mode & 0o777 == 0o600
