"""A selected folder deleted, or deleted and created again (a new UIDVALIDITY), under a
session: the session says BYE and ends (as Dovecot does), and nothing it sends after the BYE
talks about the lost folder. A command whose write happened and that a client would repeat
with harm (APPEND: a second copy) still gets its tagged OK after the BYE, as LOGOUT does.

The change is made either between commands (found by the command's first sync) or inside
the command's own store call (found by the sync that shares its thread trip).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.support.imapserver import USER, ImapDeployment, ImapServerThread, make_deployment

BOX = "Box"
MESSAGE = b"From: a@example.com\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    made = make_deployment(tmp_path / "state")
    made.store.create_folder(USER, BOX)
    for _ in range(3):
        made.store.deliver([(USER, BOX)], MESSAGE)
    return made


@pytest.fixture
def client(server: ImapServerThread) -> RawClient:
    opened = logged_in(server.imap_port)
    assert opened.tagged(f"SELECT {BOX}").startswith(b"OK")
    return opened


def rest(client: RawClient) -> list[bytes]:
    """Every line the server sends until it closes the connection."""
    lines = []
    while True:
        try:
            lines.append(client.line())
        except ConnectionError:
            return lines


def recreate(dep: ImapDeployment) -> None:
    dep.store.delete_folder(USER, BOX)
    dep.store.create_folder(USER, BOX)


def during(
    monkeypatch: pytest.MonkeyPatch, dep: ImapDeployment, method: str, change: Callable[[], None]
) -> None:
    """Make `change` right after the store's `method` did its work, in the same thread trip."""
    original = getattr(dep.store, method)

    def changed_after(*args: Any, **kwargs: Any) -> Any:
        done = original(*args, **kwargs)
        change()
        return done

    monkeypatch.setattr(dep.store, method, changed_after)


@pytest.mark.parametrize("change", [recreate, lambda d: d.store.delete_folder(USER, BOX)])
def test_a_folder_lost_between_commands_ends_the_session_with_bye_only(
    dep: ImapDeployment, client: RawClient, change: Callable[[ImapDeployment], None]
) -> None:
    change(dep)
    client.send(b"a1 NOOP\r\n")
    lines = rest(client)
    assert len(lines) == 1 and lines[0].startswith(b"* BYE "), lines


@pytest.mark.parametrize("change", [recreate, lambda d: d.store.delete_folder(USER, BOX)])
@pytest.mark.parametrize(
    ("method", "command"),
    [("change_flags", b"a1 STORE 1:3 +FLAGS (\\Flagged)"), ("expunge", b"a1 EXPUNGE")],
)
def test_a_store_or_expunge_that_loses_its_folder_says_nothing_after_bye(
    monkeypatch: pytest.MonkeyPatch,
    dep: ImapDeployment,
    client: RawClient,
    change: Callable[[ImapDeployment], None],
    method: str,
    command: bytes,
) -> None:
    if method == "expunge":
        assert client.tagged("STORE 2 +FLAGS (\\Deleted)").startswith(b"OK")
    during(monkeypatch, dep, method, lambda: change(dep))
    client.send(command + b"\r\n")
    lines = rest(client)
    assert len(lines) == 1 and lines[0].startswith(b"* BYE "), lines


def test_an_append_that_loses_its_folder_still_says_the_message_is_stored(
    monkeypatch: pytest.MonkeyPatch, dep: ImapDeployment, client: RawClient
) -> None:
    # Renumbered right after the APPEND (the new message is then in the old folder's files,
    # which the test's deletion removes: what matters is what the client is told).
    during(monkeypatch, dep, "append", lambda: recreate(dep))
    client.send(b"a1 APPEND %s {%d+}\r\n%s\r\n" % (BOX.encode(), len(MESSAGE), MESSAGE))
    lines = rest(client)
    assert lines[0].startswith(b"* BYE "), lines
    assert lines[1:] and lines[-1].startswith(b"a1 OK [APPENDUID "), lines
    assert all(not line.startswith(b"* ") for line in lines[1:]), lines
