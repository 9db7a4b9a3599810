"""Real IMAP clients from Debian against our server: mbsync, offlineimap, fetchmail.

Each runs as a subprocess with a config in tmp_path against the implicit-TLS listener,
trusting the deployment's CA (`tls/ca.pem`); the clients connect to "localhost" because
mbsync only matches DNS names, not IP addresses, against the certificate. A missing client
fails the test (scripts/test installs isync, offlineimap and fetchmail; nothing is skipped).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery.store import INBOX

from mailstack.base.flags import Flag
from tests.imap.servers import fetchmail_keep
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

pytestmark = pytest.mark.external

MESSAGE = (
    b"From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: %s\r\n"
    b"Date: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <%s@example.org>\r\n\r\n"
    b"Hello %s.\r\n"
)


def message(name: str) -> bytes:
    raw = name.encode()
    return MESSAGE % (raw, raw, raw)


@pytest.fixture
def deployment(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def server(deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(deployment) as srv:
        yield srv


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, check=False, **kwargs
    )  # type: ignore[call-overload]
    assert result.returncode == 0, f"{argv[0]} failed:\n{result.stdout}\n{result.stderr}"
    return result  # type: ignore[no-any-return]


def server_state(dep: ImapDeployment, folder: str = INBOX) -> list[tuple[int, frozenset[str]]]:
    return [(m.uid, m.flags) for m in dep.store.snapshot(USER, folder).messages]


def subjects(dep: ImapDeployment, folder: str = INBOX) -> set[str]:
    out = set()
    for m in dep.store.snapshot(USER, folder).messages:
        data = dep.store.read_message(USER, folder, m.uid)
        for line in data.splitlines():
            if line.startswith(b"Subject: "):
                out.add(line[9:].decode())
    return out


def local_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and p.parent.name in ("cur", "new")
    }


# -- mbsync -----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_mbsync_syncs_both_ways_and_a_second_sync_changes_nothing(
    tmp_path: Path, deployment: ImapDeployment, server: ImapServerThread
) -> None:
    deployment.store.deliver([(USER, INBOX)], message("first"))
    deployment.store.deliver([(USER, INBOX)], message("doomed"))
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount test
Host localhost
Port {server.imaps_port}
User {USER}
Pass "{PASSWORD}"
SSLType IMAPS
CertificateFile {deployment.paths.ca_cert}
AuthMechs PLAIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
Sync All
SyncState *
""")
    sync = ["mbsync", "-c", str(rc), "test"]

    run(sync)
    pulled = sorted((local / "INBOX").glob("*/*"))
    assert len(pulled) == 2
    assert {p.name for p in (local).iterdir()} >= {"INBOX", "Sent", "Drafts", "Trash"}

    # Local changes: a new message, \Seen on one pulled message, the other deleted.
    by_subject = {p.read_bytes().split(b"Subject: ")[1].split(b"\n")[0].strip(): p for p in pulled}
    seen = by_subject[b"first"]
    seen.rename(seen.parent.parent / "cur" / (seen.name.split(":")[0] + ":2,S"))
    doomed = by_subject[b"doomed"]
    doomed.rename(doomed.parent.parent / "cur" / (doomed.name.split(":")[0] + ":2,T"))
    (local / "INBOX" / "new" / "1700000000.local1.host").write_bytes(
        message("from-local").replace(b"\r\n", b"\n")
    )
    # A server-side change at the same time.
    deployment.store.deliver([(USER, INBOX)], message("from-server"))
    (local / "Projects").mkdir()
    for sub in ("cur", "new", "tmp"):
        (local / "Projects" / sub).mkdir()

    run(sync)
    assert subjects(deployment) == {"first", "from-local", "from-server"}
    state = {m.uid: m.flags for m in deployment.store.snapshot(USER, INBOX).messages}
    first_uid = next(
        m.uid
        for m in deployment.store.snapshot(USER, INBOX).messages
        if b"Subject: first" in deployment.store.read_message(USER, INBOX, m.uid)
    )
    assert Flag.SEEN in state[first_uid]
    assert "Projects" in {f.name for f in deployment.store.list_folders(USER)}
    local_subjects = {
        p.read_bytes().split(b"Subject: ")[1].split(b"\n")[0].strip()
        for p in (local / "INBOX").glob("*/*")
    }
    assert local_subjects == {b"first", b"from-local", b"from-server"}

    before_server, before_local = server_state(deployment), local_files(local)
    run(sync)
    assert server_state(deployment) == before_server
    assert local_files(local) == before_local


# -- offlineimap ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_offlineimap_syncs(
    tmp_path: Path, deployment: ImapDeployment, server: ImapServerThread
) -> None:
    deployment.store.deliver([(USER, INBOX)], message("for-offlineimap"))
    local = tmp_path / "oi"
    rc = tmp_path / "offlineimaprc"
    rc.write_text(f"""
[general]
accounts = test
metadata = {tmp_path}/oi-meta
ui = basic

[Account test]
localrepository = local
remoterepository = remote

[Repository local]
type = Maildir
localfolders = {local}

[Repository remote]
type = IMAP
remotehost = localhost
remoteport = {server.imaps_port}
remoteuser = {USER}
remotepass = {PASSWORD}
ssl = yes
sslcacertfile = {deployment.paths.ca_cert}
""")
    # offlineimap imports its modules from next to its script: PYTHONSAFEPATH, which a test run
    # may set for our own imports, would hide them.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"} | {"HOME": str(tmp_path)}
    run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], env=env)
    files = list((local / "INBOX").glob("*/*"))
    assert len(files) == 1
    assert b"Subject: for-offlineimap" in files[0].read_bytes()
    # Upload a message written locally, and pull a flag change made on the server.
    (local / "INBOX" / "new" / "1700000001.oi.host").write_bytes(
        message("from-oi").replace(b"\r\n", b"\n")
    )
    run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], env=env)
    assert subjects(deployment) == {"for-offlineimap", "from-oi"}
    before = server_state(deployment)
    run(["offlineimap", "-c", str(rc), "-o", "-u", "basic"], env=env)
    assert server_state(deployment) == before


# -- fetchmail --------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_fetchmail_retrieves_with_keep(
    tmp_path: Path, deployment: ImapDeployment, server: ImapServerThread
) -> None:
    deployment.store.deliver([(USER, INBOX)], message("fetch-me"))
    deployment.store.deliver([(USER, INBOX)], message("fetch-me-too"))
    text = fetchmail_keep(tmp_path, deployment.paths.ca_cert, server.imaps_port)
    assert b"Subject: fetch-me\r\n" in text or b"Subject: fetch-me\n" in text
    assert b"Subject: fetch-me-too" in text
    state = server_state(deployment)
    assert len(state) == 2  # --keep: nothing deleted on the server
    assert all(Flag.SEEN in flags for _uid, flags in state)
