"""NOTIFY (RFC 5465) over real sockets: STATUS for other folders, EXISTS/FETCH for the selected
one, MailboxName and SubscriptionChange as LIST, between commands and during IDLE, shared
folders, NOTIFY NONE, [BADEVENT] and [NOTIFICATIONOVERFLOW].

The servers here rescan IDLE only every 60 s, and nothing here issues a command while waiting
for a notification: what arrives came from the change itself (the store's EventHub or
inotify for files other programs write), each within `WAIT_S`.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mailstack.delivery import acl
from mailstack.delivery.store import INBOX
from mailstack.imap import notify

from tests.imap.rawclient import RawClient
from tests.imap.servers import connect
from tests.support.imapserver import (
    OTHER_PASSWORD,
    OTHER_USER,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

MESSAGE = b"From: a@example.com\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nbody\r\n"
WAIT_S = 5.0
QUIET_S = 1.0  # how long "nothing arrives" is watched for
EVERYTHING = "(MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)"


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store.create_folder(USER, "Lists")
    dep.store.create_folder(USER, "Lists.ietf")
    dep.store.create_folder(USER, "Other")
    return dep


def login(server: ImapServerThread, user: str = USER, password: str = PASSWORD) -> RawClient:
    client = connect(server.imap_port, timeout_s=WAIT_S)
    assert client.tagged(f'LOGIN {user} "{password}"').startswith(b"OK")
    return client


def wait_for(client: RawClient, pattern: bytes) -> bytes:
    """The first line matching `pattern`; TimeoutError after WAIT_S without one."""
    while True:
        line = client.line()
        if re.search(pattern, line):
            return line


def quiet(client: RawClient) -> list[bytes]:
    """Lines that arrive within QUIET_S (none expected)."""
    client.sock.settimeout(QUIET_S)
    lines = []
    try:
        while True:
            lines.append(client.line())
    except TimeoutError:
        pass
    finally:
        client.sock.settimeout(WAIT_S)
    return lines


def cp(dep: ImapDeployment, name: str, folder: str = "", user: str = USER) -> None:
    """Another program writing straight into a folder's new/ (as `cp` does)."""
    root = dep.paths.maildir(user)
    target = (root / f".{folder}" if folder else root) / "new" / name
    target.write_bytes(MESSAGE)


def append(mailbox: str) -> bytes:
    return b"APPEND " + mailbox.encode() + b" {%d+}\r\n" % len(MESSAGE) + MESSAGE


def test_capability_advertises_notify(server: ImapServerThread) -> None:
    client = login(server)
    assert b" NOTIFY" in client.command("CAPABILITY")[0]


@pytest.mark.parametrize(
    ("command", "answer"),
    [
        pytest.param("NOTIFY SET (personal (MessageNew))", b"BAD", id="new-without-expunge"),
        pytest.param("NOTIFY SET (personal (FlagChange))", b"BAD", id="flags-alone"),
        pytest.param(
            "NOTIFY SET (inboxes (MessageNew (UID) MessageExpunge))", b"BAD", id="fetch-not-sel"
        ),
        pytest.param("NOTIFY SET (selected NONE) (selected-delayed NONE)", b"BAD", id="two-sel"),
        pytest.param("NOTIFY SET (elsewhere (MailboxName))", b"BAD", id="unknown-filter"),
        pytest.param("NOTIFY SET", b"BAD", id="no-groups"),
        pytest.param("NOTIFY MAYBE", b"BAD", id="neither-set-nor-none"),
        pytest.param(
            "NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))",
            b"NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange "
            b"MailboxMetadataChange ServerMetadataChange)]",
            id="badevent",
        ),
        pytest.param("NOTIFY SET (personal (FancyEvent))", b"NO [BADEVENT", id="event-ext"),
        pytest.param("notify set status (Selected (messagenew messageexpunge))", b"OK", id="case"),
        pytest.param("NOTIFY SET (subtree (Lists Other) NONE) (inboxes NONE)", b"OK", id="none"),
        pytest.param("NOTIFY NONE", b"OK", id="none-at-all"),
    ],
)
def test_notify_syntax_and_refusals(server: ImapServerThread, command: str, answer: bytes) -> None:
    client = login(server)
    assert client.tagged(command).startswith(answer)
    assert client.tagged("NOOP").startswith(b"OK")  # the session goes on


def test_notify_needs_login(server: ImapServerThread) -> None:
    client = connect(server.imap_port, timeout_s=WAIT_S)
    assert client.tagged("NOTIFY NONE").startswith(b"BAD")


def test_status_indicator_reports_each_watched_mailbox(server: ImapServerThread) -> None:
    client = login(server)
    lines = client.command(f"NOTIFY SET STATUS (subtree Lists {EVERYTHING})")
    statuses = [line for line in lines if line.startswith(b"* STATUS")]
    assert len(statuses) == 2
    for line, name in zip(sorted(statuses), (b"Lists", b"Lists.ietf"), strict=True):
        pattern = rb"\* STATUS %s \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0\)\r\n" % name
        assert re.fullmatch(pattern, line), line
    assert lines[-1].endswith(b"OK NOTIFY completed\r\n")


def test_other_folders_between_commands_and_selected_with_fetch(
    server: ImapServerThread, dep: ImapDeployment
) -> None:
    client = login(server)
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    assert client.tagged(
        "NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (Subject)]) "
        f"MessageExpunge FlagChange)) (personal {EVERYTHING})"
    ).startswith(b"OK")
    # Our own store writes (APPEND by another session) to another folder: STATUS.
    other = login(server)
    assert other.tagged(append("Other")).startswith(b"OK")
    line = wait_for(client, rb"^\* STATUS")
    assert line == b"* STATUS Other (MESSAGES 1 UIDNEXT 2 UNSEEN 1)\r\n"  # as Dovecot says it
    # Another program's file in another folder (inotify): STATUS.
    cp(dep, "1700000000.cp1.elsewhere", "Lists.ietf")
    line = wait_for(client, rb"^\* STATUS")
    assert line.startswith(b"* STATUS Lists.ietf (MESSAGES 1 UIDNEXT 2 ")
    # The selected mailbox: EXISTS, then the fetch attributes of the new message.
    cp(dep, "1700000001.cp2.elsewhere")
    assert wait_for(client, rb"EXISTS") == b"* 1 EXISTS\r\n"
    fetched = wait_for(client, rb"FETCH")
    assert fetched.startswith(b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {15}\r\n")
    assert b"Subject: hi" in fetched
    # FlagChange in the selected mailbox; nothing set \Seen by the fetch above.
    assert other.tagged("SELECT INBOX").startswith(b"OK")
    assert other.tagged("STORE 1 +FLAGS (\\Flagged)").startswith(b"OK")
    assert wait_for(client, rb"FETCH") == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n"
    # MessageExpunge.
    assert other.tagged("STORE 1 +FLAGS (\\Deleted)").startswith(b"OK")
    wait_for(client, rb"FETCH")
    assert other.tagged("EXPUNGE").startswith(b"OK")
    assert wait_for(client, rb"EXPUNGE") == b"* 1 EXPUNGE\r\n"


def test_delayed_selected_keeps_expunges_for_a_command(server: ImapServerThread) -> None:
    client = login(server)
    assert client.tagged("SELECT INBOX").startswith(b"OK")
    assert client.tagged(
        "NOTIFY SET (selected-delayed (MessageNew MessageExpunge FlagChange))"
    ).startswith(b"OK")
    other = login(server)
    assert other.tagged(append("INBOX (\\Deleted)")).startswith(b"OK")
    assert wait_for(client, rb"EXISTS") == b"* 1 EXISTS\r\n"
    assert other.tagged("SELECT INBOX").startswith(b"OK")
    assert other.tagged("EXPUNGE").startswith(b"OK")
    assert not [line for line in quiet(client) if b"EXPUNGE" in line]
    assert client.command("NOOP")[0] == b"* 1 EXPUNGE\r\n"


def test_mailbox_name_and_subscription_change(server: ImapServerThread) -> None:
    client = login(server)
    assert client.tagged(f"NOTIFY SET (personal {EVERYTHING})").startswith(b"OK")
    other = login(server)
    assert other.tagged("RENAME Other Elsewhere").startswith(b"OK")
    line = wait_for(client, rb"^\* LIST")
    assert line == b'* LIST () "." Elsewhere ("OLDNAME" (Other))\r\n'
    assert other.tagged("SUBSCRIBE Elsewhere").startswith(b"OK")
    assert wait_for(client, rb"^\* LIST") == b'* LIST (\\Subscribed) "." Elsewhere\r\n'
    assert other.tagged("UNSUBSCRIBE Elsewhere").startswith(b"OK")
    assert wait_for(client, rb"^\* LIST") == b'* LIST () "." Elsewhere\r\n'
    assert other.tagged("CREATE Fresh").startswith(b"OK")
    assert wait_for(client, rb"^\* LIST") == b'* LIST () "." Fresh\r\n'
    # A folder created after NOTIFY SET is watched too (PERSONAL covers it).
    assert other.tagged(append("Fresh")).startswith(b"OK")
    assert wait_for(client, rb"^\* STATUS").startswith(b"* STATUS Fresh (MESSAGES 1 ")
    assert other.tagged("DELETE Fresh").startswith(b"OK")
    assert wait_for(client, rb"^\* LIST") == b'* LIST (\\NonExistent) "." Fresh\r\n'
    # The session that made a change is not told about it.
    assert client.tagged("CREATE Mine").startswith(b"OK")
    assert not [line for line in quiet(client) if line.startswith(b"* LIST")]


def test_metadata_changes(server: ImapServerThread) -> None:
    client = login(server)
    assert client.tagged(
        "NOTIFY SET (mailboxes Other (MailboxMetadataChange)) (inboxes (ServerMetadataChange))"
    ).startswith(b"OK")
    other = login(server)
    assert other.tagged('SETMETADATA Other (/private/comment "hi")').startswith(b"OK")
    assert wait_for(client, rb"^\* METADATA") == b"* METADATA Other /private/comment\r\n"
    assert other.tagged('SETMETADATA "" (/private/vendor/x "1")').startswith(b"OK")
    assert wait_for(client, rb"^\* METADATA") == b'* METADATA "" /private/vendor/x\r\n'
    assert other.tagged('SETMETADATA Lists (/private/comment "not asked")').startswith(b"OK")
    assert quiet(client) == []


def test_notify_during_idle(server: ImapServerThread, dep: ImapDeployment) -> None:
    client = login(server)
    assert client.tagged("ENABLE CONDSTORE").startswith(b"OK")
    assert client.tagged(f"NOTIFY SET (inboxes {EVERYTHING})").startswith(b"OK")
    client.send(b"i1 IDLE\r\n")
    assert client.line() == b"+ idling\r\n"
    cp(dep, "1700000002.cp3.elsewhere")
    line = wait_for(client, rb"^\* STATUS")
    assert re.fullmatch(
        rb"\* STATUS INBOX \(MESSAGES 1 UIDNEXT 2 UNSEEN 1 HIGHESTMODSEQ \d+\)\r\n", line
    )
    client.send(b"DONE\r\n")
    assert client.until_tagged(b"i1")[-1] == b"i1 OK IDLE terminated\r\n"


def test_notify_none_stops_notifications(server: ImapServerThread, dep: ImapDeployment) -> None:
    client = login(server)
    assert client.tagged(f"NOTIFY SET (personal {EVERYTHING})").startswith(b"OK")
    cp(dep, "1700000003.cp4.elsewhere", "Other")
    wait_for(client, rb"^\* STATUS Other")
    assert client.tagged("NOTIFY NONE").startswith(b"OK")
    cp(dep, "1700000004.cp5.elsewhere", "Other")
    other = login(server)
    assert other.tagged("CREATE Unheard").startswith(b"OK")
    assert quiet(client) == []


def test_shared_folder_the_user_can_read(server: ImapServerThread, dep: ImapDeployment) -> None:
    acl.set_rights(acl.folder_dir(dep.paths.maildir(USER), "Other"), f"user={OTHER_USER}", "lr")
    bob = login(server, OTHER_USER, OTHER_PASSWORD)
    shared = "Shared/alice@example.com/Other"
    assert bob.tagged("NOTIFY SET STATUS (subtree Shared (MessageNew MessageExpunge))").startswith(
        b"OK"
    )
    cp(dep, "1700000005.cp6.elsewhere", "Other")
    line = wait_for(bob, rb"^\* STATUS")
    assert line.startswith(b"* STATUS %s (MESSAGES 1 UIDNEXT 2 " % shared.encode())
    # Alice's folders she did not share stay silent for Bob.
    cp(dep, "1700000006.cp7.elsewhere", "Lists")
    assert quiet(bob) == []


def test_overflow_turns_notify_off(
    server: ImapServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notify, "MAX_PENDING", 3)
    client = login(server)
    assert client.tagged(f"NOTIFY SET (personal {EVERYTHING})").startswith(b"OK")
    # Mid-command (waiting for a literal) nothing is written, so the changes pile up.
    client.send(b"a1 APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert client.line().startswith(b"+")
    other = login(server)
    for n in range(5):
        assert other.tagged(f"CREATE Pile{n}").startswith(b"OK")
    client.send(MESSAGE + b"\r\n")
    lines = client.until_tagged(b"a1")
    assert lines[-1].startswith(b"a1 OK")
    line = wait_for(client, rb"^\* OK")
    assert line.startswith(b"* OK [NOTIFICATIONOVERFLOW]")
    assert other.tagged("CREATE AfterOverflow").startswith(b"OK")
    assert quiet(client) == []


def test_no_notifications_without_notify(server: ImapServerThread, dep: ImapDeployment) -> None:
    client = login(server)
    assert client.tagged(f"SELECT {INBOX}").startswith(b"OK")
    cp(dep, "1700000007.cp8.elsewhere")
    other = login(server)
    assert other.tagged("CREATE Unasked").startswith(b"OK")
    assert quiet(client) == []
