"""What a session costs must not grow with the number of accounts on the server (issue 11:
10,000 IDLE sessions over 1,000 accounts). Two costs that did, each found in
bench/idle_bench.py's 1,000-account run:

- LOGIN checked that the account's Maildir exists by listing its folders, and the listing
  includes the folders other accounts share with it: a look at every folder of every
  account (acl.shared_folders) at each login (and LIST did the same until the registry of
  shared folders, tests/imap/test_shared_registry.py);
- the first SELECT prunes the account's structure cache (a look at every folder it sees,
  shared ones included), "once per process": but the mark lived on the cache object, which
  is closed and reopened when more than MAX_OPEN_CACHES accounts are busy, so with 1,000
  accounts nearly every session pruned again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery import acl
from mailstack.imap import cache
from mailstack.imap.cache import StructureCaches

from tests.imap.servers import connect
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ImapServerThread, ImapDeployment]]:
    dep = make_deployment(tmp_path / "state")
    started = ImapServerThread(dep).start()
    try:
        yield started, dep
    finally:
        started.stop()


def test_login_does_not_look_at_every_accounts_folders(
    server: tuple[ImapServerThread, ImapDeployment], monkeypatch: pytest.MonkeyPatch
) -> None:
    started, _dep = server
    scans: list[Path] = []
    real = acl.shared_folders

    def counted(mail_dir: Path) -> Iterator[acl.SharedFolder]:
        scans.append(mail_dir)
        return real(mail_dir)

    monkeypatch.setattr(acl, "shared_folders", counted)
    client = connect(started.imap_port, timeout_s=10)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    assert scans == []
    # The account is checked all the same: LIST still shows its folders. The first LIST in
    # the process builds the registry of shared folders (one walk); later ones do not walk.
    assert b"INBOX" in b"".join(client.command('LIST "" "*"'))
    assert len(scans) == 1
    assert b"INBOX" in b"".join(client.command('LIST "" "*"'))
    assert len(scans) == 1


def test_an_account_is_pruned_once_per_process_though_its_cache_was_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache, "MAX_OPEN_CACHES", 2)
    caches = StructureCaches()
    roots = [tmp_path / f"user{i}" for i in range(4)]
    for root in roots:
        root.mkdir()
    first = caches.for_root(roots[0])
    first.is_pruned = True
    for root in roots[1:]:  # roots[0]'s cache is dropped (least recently used)
        caches.for_root(root)
    again = caches.for_root(roots[0])
    assert again is not first
    assert again.is_pruned
    assert not caches.for_root(roots[1]).is_pruned
    caches.close()
