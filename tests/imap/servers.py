"""What several IMAP test modules start and connect to, in one place; their fixtures are in
tests/imap/conftest.py.

- `connect`: a raw client that is closed after the test, also when a failed wait left it open
  (test_notify.py, test_context_search.py, test_idle_watch.py); `logged_in`: one logged in
  as USER, with an extension enabled and a folder examined if asked (test_utf8*.py,
  test_imap4rev2.py, test_message_global.py).
- `Endpoint`, `dovecot_and_ours`: the same account on an isolated Dovecot and on a running
  mailstack, each with its own Maildir, for differential tests (test_catenate_dovecot.py,
  test_condstore_dovecot.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mailstack.delivery.maildir import MaildirStore

from mailstack.base.paths import StatePaths
from tests.imap.rawclient import RawClient
from tests.support.dovecot import DovecotFactory
from tests.support.imapserver import PASSWORD, USER, make_deployment, running_server

OPEN: list[RawClient] = []  # closed by tests/imap/conftest.py after each test


def connect(port: int, *, timeout_s: float) -> RawClient:
    client = RawClient("127.0.0.1", port, timeout_s=timeout_s)
    OPEN.append(client)
    return client


def logged_in(port: int, *, enable: str | None = None, examine: str | None = None) -> RawClient:
    """A raw client logged in as USER (closed after the test); `enable` an extension first
    (ENABLE must answer ENABLED for it), then EXAMINE `examine`."""
    client = connect(port, timeout_s=30)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    if enable:
        assert client.command(f"ENABLE {enable}")[0] == f"* ENABLED {enable}\r\n".encode()
    if examine:
        assert client.tagged(f"EXAMINE {examine}").startswith(b"OK")
    return client


def close_opened() -> None:
    while OPEN:
        OPEN.pop().close()


@dataclass(frozen=True)
class Endpoint:
    name: str
    port: int

    def connect(self) -> RawClient:
        client = RawClient("127.0.0.1", self.port)
        assert client.tagged(f'LOGIN "{USER}" "{PASSWORD}"').startswith(b"OK")
        return client


@contextmanager
def dovecot_and_ours(
    tmp_path: Path, dovecot_server: DovecotFactory
) -> Iterator[tuple[Endpoint, Endpoint]]:
    """(mailstack, Dovecot), USER on each; only their answers can be compared."""
    store = MaildirStore(StatePaths(dovecot_server.workdir / "dovecot-state"))
    store.create_account(USER)
    theirs = dovecot_server({USER: (PASSWORD, store._root(USER))})
    with running_server(make_deployment(tmp_path / "state")) as ours:
        yield Endpoint("mailstack", ours.imap_port), Endpoint("dovecot", theirs.port)
