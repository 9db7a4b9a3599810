from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.base.errors import ExistsError, NotFoundError, UsageError
from mailstack.base.users import Accounts, normalize_address


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    acc = Accounts(tmp_path / "users.sqlite3")
    acc.add_domain("example.com")
    acc.add_domain("example.org")
    acc.add_user("alice@example.com", "correct horse")
    acc.add_user("bob@example.com", "battery staple")
    return acc


def test_password_is_stored_as_argon2id(accounts: Accounts, tmp_path: Path) -> None:
    import sqlite3

    (stored,) = (
        sqlite3.connect(tmp_path / "users.sqlite3")
        .execute("SELECT password_hash FROM users WHERE address='alice@example.com'")
        .fetchone()
    )
    assert stored.startswith("$argon2id$")
    assert "correct horse" not in stored


def test_authenticate(accounts: Accounts) -> None:
    assert accounts.authenticate("alice@example.com", "correct horse") == "alice@example.com"
    assert accounts.authenticate("ALICE@Example.COM", "correct horse") == "alice@example.com"
    assert accounts.authenticate("alice@example.com", "wrong") is None
    assert accounts.authenticate("nobody@example.com", "correct horse") is None
    assert accounts.authenticate("not an address", "x") is None
    accounts.set_enabled("alice@example.com", False)
    assert accounts.authenticate("alice@example.com", "correct horse") is None


def test_passwd_and_delete(accounts: Accounts) -> None:
    accounts.set_password("bob@example.com", "new one")
    assert accounts.authenticate("bob@example.com", "battery staple") is None
    assert accounts.authenticate("bob@example.com", "new one") == "bob@example.com"
    accounts.delete_user("bob@example.com")
    assert accounts.get_user("bob@example.com") is None
    with pytest.raises(NotFoundError):
        accounts.delete_user("bob@example.com")


def test_duplicate_and_unhosted_users_are_refused(accounts: Accounts) -> None:
    with pytest.raises(ExistsError):
        accounts.add_user("Alice@example.com", "x")
    with pytest.raises(NotFoundError, match="not hosted") as info:
        accounts.add_user("carol@elsewhere.net", "x")
    assert "mailstack domain add elsewhere.net" in (info.value.hint or "")


def test_resolution_order(accounts: Accounts) -> None:
    accounts.add_alias("sales@example.com", ["alice@example.com", "bob@example.com"])
    accounts.add_alias("@example.org", ["bob@example.com"])
    assert accounts.resolve("alice@example.com").mailboxes == ("alice@example.com",)
    assert accounts.resolve("ALICE+news@EXAMPLE.com").mailboxes == ("alice@example.com",)
    assert accounts.resolve("sales@example.com").mailboxes == (
        "alice@example.com",
        "bob@example.com",
    )
    assert accounts.resolve("sales+x@example.com").mailboxes == (
        "alice@example.com",
        "bob@example.com",
    )
    assert accounts.resolve("anything@example.org").mailboxes == ("bob@example.com",)
    assert not accounts.resolve("nobody@example.com").is_known  # no catch-all there
    assert not accounts.resolve("x@unhosted.net").is_known
    assert not accounts.resolve("garbage").is_known


def test_alias_loops_are_refused(accounts: Accounts) -> None:
    accounts.add_alias("a@example.com", ["b@example.com"])
    accounts.add_alias("b@example.com", ["c@example.com"])
    with pytest.raises(UsageError, match="loop"):
        accounts.add_alias("c@example.com", ["a@example.com"])
    with pytest.raises(UsageError, match="itself"):
        accounts.add_alias("d@example.com", ["d@example.com"])


def test_alias_cannot_shadow_user(accounts: Accounts) -> None:
    with pytest.raises(ExistsError):
        accounts.add_alias("alice@example.com", ["bob@example.com"])


def test_owns(accounts: Accounts) -> None:
    accounts.add_alias("sales@example.com", ["alice@example.com"])
    assert accounts.owns("alice@example.com", "alice@example.com")
    assert accounts.owns("alice@example.com", "alice+x@example.com")
    assert accounts.owns("alice@example.com", "sales@example.com")
    assert not accounts.owns("alice@example.com", "bob@example.com")
    assert not accounts.owns("bob@example.com", "sales@example.com")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("jörg@bücher.de", "jörg@xn--bcher-kva.de"),
        ("o'brien+news@example.com", "o'brien+news@example.com"),
        ("@Example.com", "@example.com"),
    ],
)
def test_normalize(raw: str, expected: str) -> None:
    assert normalize_address(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "alice",
        "a b@example.com",
        "<a@example.com>",
        "a..b@x.com",
        "@",
        "two@@example.test",  # '@' in the local part
        "a(b)@example.com",
        "a[b]@example.com",
        "a:b@example.com",
        "\udcff@example.test",  # a byte that was not UTF-8, decoded with surrogateescape
        "a\x00b@example.com",
        "a\u200bb@example.com",  # invisible: not printable
    ],
)
def test_normalize_rejects(raw: str) -> None:
    with pytest.raises(UsageError):
        normalize_address(raw)


def test_changes_are_visible_to_another_connection_at_once(
    tmp_path: Path, accounts: Accounts
) -> None:
    server_view = Accounts(tmp_path / "users.sqlite3")  # as a running serve holds it
    assert server_view.get_user("carol@example.com") is None
    accounts.add_user("carol@example.com", "pw")
    assert server_view.authenticate("carol@example.com", "pw") == "carol@example.com"
