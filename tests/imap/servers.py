"""What several IMAP test modules start and connect to, in one place; their fixtures are in
tests/imap/conftest.py.

- `connect`: a raw client that is closed after the test, also when a failed wait left it open
  (test_notify.py, test_context_search.py, test_idle_watch.py); `logged_in`: one logged in
  as USER, with an extension enabled and a folder examined if asked (test_utf8*.py,
  test_imap4rev2.py, test_message_global.py, test_catenate.py, test_metadata.py,
  test_multiappend.py).
- `fetchmail_keep`: what Debian's fetchmail retrieves over IMAPS (keep, fetchall) into an
  mbox (test_imap_clients.py, test_utf8_clients.py).
- `Endpoint`, `dovecot_and_ours`: the same account on an isolated Dovecot and on a running
  mailstack, each with its own Maildir, for differential tests (test_catenate_dovecot.py,
  test_condstore_dovecot.py).
"""

from __future__ import annotations

import os
import subprocess
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


def logged_in(
    port: int,
    *,
    user: str = USER,
    password: str = PASSWORD,
    enable: str | None = None,
    examine: str | None = None,
) -> RawClient:
    """A raw client logged in as `user` (closed after the test); `enable` an extension
    first (ENABLE must answer ENABLED for it), then EXAMINE `examine`."""
    client = connect(port, timeout_s=30)
    assert client.tagged(f'LOGIN {user} "{password}"').startswith(b"OK")
    if enable:
        assert client.command(f"ENABLE {enable}")[0] == f"* ENABLED {enable}\r\n".encode()
    if examine:
        assert client.tagged(f"EXAMINE {examine}").startswith(b"OK")
    return client


def fetchmail_keep(home: Path, ca_cert: Path, imaps_port: int) -> bytes:
    """Run fetchmail once against our IMAPS port as USER (keep, fetchall), delivering into
    an mbox by a shell MDA; the mbox's bytes. A failed run fails the test with its output."""
    out = home / "fetched.mbox"
    rc = home / "fetchmailrc"
    rc.write_text(
        f"poll localhost protocol IMAP port {imaps_port}\n"
        f'  user "{USER}" password "{PASSWORD}" is "tester" here\n'
        f'  ssl sslcertck sslcertfile "{ca_cert}"\n'
        f"  keep fetchall\n"
        f"  mda \"/bin/sh -c 'cat >> {out}'\"\n"
    )
    rc.chmod(0o600)
    env = {**os.environ, "HOME": str(home), "FETCHMAILHOME": str(home)}
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out.read_bytes()


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
