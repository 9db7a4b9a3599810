"""A team mailbox through a real client (issue 12's "Done when"): neomutt, driven on a pseudo
terminal, opens `Public/support@example.com/INBOX` as a member (MYRIGHTS, LSUB, SELECT of the
shared namespace), shows the mail delivered to support@, lists the team folder among the
subscribed mailboxes and the namespace's top in the folder browser (LIST); a user without
rights cannot open it."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from mailstack.delivery import acl
from mailstack.delivery.store import INBOX

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

TEAM = "support@example.com"
TEAM_INBOX = "Public/support@example.com/INBOX"
CAROL, CAROL_PASSWORD = "carol@example.com", "carol is not in the team"
WAIT_S = 20


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.add_user(CAROL, CAROL_PASSWORD)
    dep.add_user(TEAM, "nobody logs in to a team mailbox")
    dep.accounts.set_enabled(TEAM, False)
    dep.store.deliver(
        [(TEAM, INBOX)], b"From: customer@example.org\r\nSubject: team ticket 42\r\n\r\nhelp\r\n"
    )
    for member in (USER, OTHER_USER):
        acl.set_rights(acl.folder_dir(dep.paths.maildir(TEAM), INBOX), f"user={member}", "lrswite")
    return dep


@pytest.fixture
def server(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(dep) as started:
        yield started


def neomutt(tmp_path: Path, port: int, user: str, password: str) -> pexpect.spawn:
    binary = shutil.which("neomutt")
    if binary is None:
        pytest.fail("neomutt is not installed (Debian: neomutt); scripts/test installs it")
    home = tmp_path / f"home-{user}"
    home.mkdir()
    (home / "neomuttrc").write_text(
        f'set imap_user="{user}"\nset imap_pass="{password}"\n'
        "set ssl_starttls=no\nset ssl_force_tls=no\n"  # loopback: plaintext login is allowed
        f'set folder="imap://127.0.0.1:{port}/"\nset spoolfile="+INBOX"\n'
        "set imap_check_subscribed=yes\nset mail_check_stats=no\nset quit=yes\n"
        'set header_cache=""\nset message_cachedir=""\n'
    )
    return pexpect.spawn(
        binary,
        ["-n", "-F", str(home / "neomuttrc"), "-f", f"imap://127.0.0.1:{port}/{TEAM_INBOX}"],
        env={"HOME": str(home), "TERM": "vt100", "PATH": "/usr/bin:/bin"},
        timeout=WAIT_S,
        dimensions=(40, 120),
    )


@pytest.mark.external
def test_member_reads_the_team_mailbox_with_neomutt(
    server: ImapServerThread, tmp_path: Path
) -> None:
    with RawClient("127.0.0.1", server.imap_port) as raw:  # as Thunderbird's "subscribe"
        assert raw.tagged(f'LOGIN {OTHER_USER} "{OTHER_PASSWORD}"').startswith(b"OK")
        assert raw.tagged(f'SUBSCRIBE "{TEAM_INBOX}"').startswith(b"OK")
    child = neomutt(tmp_path, server.imap_port, OTHER_USER, OTHER_PASSWORD)
    try:
        child.expect("team ticket 42")  # the index of the team INBOX
        child.send("c")  # change folder, then "?": the browser of subscribed mailboxes
        child.expect("Open mailbox")
        child.send("?")
        child.expect(TEAM_INBOX)
        child.send("\t")  # toggle to the server's folder list (LIST "" "%")
        child.expect("Getting folder list")
        child.expect(r"Directory \[imap://")
        assert re.search(rb"Public/(?!support)", child.before), child.before  # the namespace
    finally:
        child.close(force=True)


@pytest.mark.external
def test_non_member_cannot_open_the_team_mailbox(server: ImapServerThread, tmp_path: Path) -> None:
    child = neomutt(tmp_path, server.imap_port, CAROL, CAROL_PASSWORD)
    try:
        index = child.expect(["team ticket 42", r"NONEXISTENT|not exist|no folder"])
        assert index == 1, "carol, who has no rights, saw the team's mail"
        child.send("q")
    finally:
        child.close(force=True)
