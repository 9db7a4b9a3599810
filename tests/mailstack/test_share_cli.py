"""`mailstack share` and `mailstack mailbox` as an admin runs them (the installed console
script on a real deployment): what they write into dovecot-acl files and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mailstack.delivery import acl

from mailstack.base.users import Accounts
from tests.conftest import Cli
from tests.mailstack.test_cli import failed, ok

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


@pytest.fixture
def people(cli: Cli, deployment_dir: Path) -> Path:
    for who in (ALICE, BOB, CAROL):
        ok(cli("user", "add", who, "--password-stdin", input="pw-long-enough\n"))
    return deployment_dir / "mail/example.com"


def rights(mail: Path, owner: str, folder: str, user: str) -> str:
    directory = acl.folder_dir(mail / owner.split("@")[0], folder)
    return acl.rights_of(acl.read_acl(directory), user, owner)


def test_share_list_and_revoke(cli: Cli, people: Path) -> None:
    out = ok(cli("share", "Sent", "--owner", ALICE, "--with", BOB))
    assert out.strip() == f"{ALICE} Sent: {BOB} has lrs"
    assert rights(people, ALICE, "Sent", BOB) == "lrs"
    assert rights(people, ALICE, "Sent", ALICE) == acl.ALL_RIGHTS  # the owner stays in
    assert rights(people, ALICE, "Sent", CAROL) == ""
    ok(cli("share", "Sent", "--owner", ALICE, "--with", BOB, "--rights", "lrsw"))  # replaces
    ok(cli("share", "INBOX", "--owner", BOB, "--with", "authenticated", "--rights", "l"))
    listed = json.loads(ok(cli("share", "list", "--json")))
    assert listed == [
        {"owner": ALICE, "folder": "Sent", "with": BOB, "rights": "lrsw"},
        {"owner": BOB, "folder": "INBOX", "with": "authenticated", "rights": "l"},
    ]
    assert [g["owner"] for g in json.loads(ok(cli("share", "list", "--owner", BOB, "--json")))] == [
        BOB
    ]
    assert BOB in ok(cli("share", "list"))
    out = ok(cli("share", "revoke", "Sent", "--owner", ALICE, "--with", BOB))
    assert "no longer has lrsw" in out
    assert rights(people, ALICE, "Sent", BOB) == ""
    failed(cli("share", "revoke", "Sent", "--owner", ALICE, "--with", BOB), 1, "has no rights")


def test_bad_input_gets_one_line(cli: Cli, people: Path) -> None:
    failed(
        cli("share", "Sent", "--owner", ALICE, "--with", "dave@example.com"), 1, "no such account"
    )
    failed(cli("share", "Sent", "--owner", "dave@example.com", "--with", BOB), 1, "no such account")
    failed(cli("share", "Nope", "--owner", ALICE, "--with", BOB), 1, "has no folder 'Nope'")
    failed(
        cli("share", "Sent", "--owner", ALICE, "--with", BOB, "--rights", "lrz"),
        2,
        "unknown right 'z'",
    )
    failed(cli("share", "Sent", "--owner", ALICE, "--with", ALICE), 2, "owns")
    failed(cli("share", "Sent", "--owner", ALICE), 2, "Missing option '--with'")
    failed(cli("share", "Sent", "--owner", "not an address", "--with", BOB), 2, "not an email")
    assert not (people / "alice/.Sent" / acl.ACL_FILE).exists()  # nothing half-written


def test_team_mailbox(cli: Cli, people: Path, deployment_dir: Path) -> None:
    out = ok(cli("mailbox", "add", "support@example.com", "--members", f"{ALICE},{BOB}"))
    assert "added team mailbox support@example.com" in out
    for folder in ("INBOX", "Sent", "Trash"):
        assert rights(people, "support@example.com", folder, ALICE) == "lrswipkxte"
        assert rights(people, "support@example.com", folder, BOB) == "lrswipkxte"
        assert rights(people, "support@example.com", folder, CAROL) == ""
    accounts = Accounts(deployment_dir / "users.sqlite3")
    team = accounts.get_user("support@example.com")
    assert team is not None and not team.enabled  # nobody logs in as the team
    assert accounts.resolve("support@example.com").mailboxes == ("support@example.com",)
    failed(cli("mailbox", "add", "support@example.com", "--members", ALICE), 1, "exists already")
    failed(
        cli("mailbox", "add", "sales@example.com", "--members", "ghost@example.com"),
        1,
        "no such account",
    )
    assert accounts.get_user("sales@example.com") is None  # refused before anything was made
    failed(cli("mailbox", "add", "sales@example.com", "--members", " , "), 2, "--members")
