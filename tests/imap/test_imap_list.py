"""LIST/LSUB attributes for names without a folder of their own (RFC 9051 §7.3.1, RFC 5258).

Two kinds: a parent implied by its children (Maildir++ stores "A.B" as `.A.B/` whether or not
`.A/` exists; Dovecot and scripts make such trees, and DELETE of a folder with children leaves
one) is `\\Noselect`; a subscribed name whose folder does not exist is `\\NonExistent` in LIST
(SUBSCRIBED) and `\\Noselect` in LSUB, which predates RFC 5258. Dovecot answers the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    root = dep.paths.maildir(USER)
    for sub in ("cur", "new", "tmp"):  # as Dovecot or a script makes it: no `.Lists/`
        (root / ".Lists.Work" / sub).mkdir(parents=True)
    return dep


@pytest.fixture
def client(dep: ImapDeployment) -> Iterator[RawClient]:
    with running_server(dep) as server, login(server) as client:
        yield client


def login(server: ImapServerThread) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def listed(client: RawClient, command: str) -> dict[bytes, bytes]:
    """{name: attributes} of the untagged lines a LIST/LSUB answered."""
    lines = client.command(command)
    assert lines[-1].split(b" ")[1] == b"OK", lines
    out = {}
    for line in lines[:-1]:
        attrs, _, rest = line.partition(b") ")
        out[rest.split(b" ", 1)[1].strip()] = attrs.split(b"(", 1)[1]
    return out


def test_implied_parent_is_noselect(client: RawClient) -> None:
    names = listed(client, 'LIST "" *')
    assert names[b"Lists"] == b"\\Noselect \\HasChildren"
    assert names[b"Lists.Work"] == b"\\HasNoChildren"
    assert listed(client, 'LIST "" %')[b"Lists"] == b"\\Noselect \\HasChildren"
    assert client.tagged("SELECT Lists").startswith(b"NO [NONEXISTENT]")
    assert client.tagged("SELECT Lists.Work").startswith(b"OK")


def test_delete_of_a_parent_leaves_it_noselect(client: RawClient) -> None:
    assert client.tagged("CREATE Projects.2024").startswith(b"OK")
    assert listed(client, 'LIST "" Projects')[b"Projects"] == b"\\HasChildren"
    assert client.tagged("DELETE Projects").startswith(b"OK")
    assert listed(client, 'LIST "" Projects')[b"Projects"] == b"\\Noselect \\HasChildren"


def test_subscribed_but_missing_names(client: RawClient) -> None:
    for name in ("Ghost", "Lists", "Lists.Work"):
        assert client.tagged(f"SUBSCRIBE {name}").startswith(b"OK")
    sub = listed(client, 'LIST (SUBSCRIBED) "" *')
    assert sub[b"Ghost"] == b"\\NonExistent \\Subscribed"
    assert sub[b"Lists"] == b"\\Noselect \\HasChildren \\Subscribed"
    assert sub[b"Lists.Work"] == b"\\HasNoChildren \\Subscribed"
    lsub = listed(client, 'LSUB "" *')
    assert (lsub[b"Ghost"], lsub[b"Lists"], lsub[b"Lists.Work"]) == (
        b"\\Noselect",
        b"\\Noselect",
        b"",
    )
    # Plain LIST shows mailboxes, not subscriptions: no ghost there.
    assert b"Ghost" not in listed(client, 'LIST "" *')
    assert b"Ghost" not in listed(client, 'LIST "" * RETURN (SUBSCRIBED)')
    # No STATUS for a name that cannot be opened (RFC 5819 §2), and no error either.
    status = client.command('LIST (SUBSCRIBED) "" (Ghost Lists) RETURN (STATUS (MESSAGES))')
    assert len(status) == 3 and status[-1].split(b" ")[1] == b"OK"
    assert client.tagged("UNSUBSCRIBE Ghost").startswith(b"OK")
    assert b"Ghost" not in listed(client, 'LIST (SUBSCRIBED) "" *')


def test_folder_deleted_after_subscribing_becomes_nonexistent(client: RawClient) -> None:
    assert client.tagged("CREATE Old").startswith(b"OK")
    assert client.tagged("SUBSCRIBE Old").startswith(b"OK")
    assert listed(client, 'LIST (SUBSCRIBED) "" Old')[b"Old"] == b"\\HasNoChildren \\Subscribed"
    assert client.tagged("DELETE Old").startswith(b"OK")
    # RFC 9051 §6.3.4: DELETE does not unsubscribe.
    assert listed(client, 'LIST (SUBSCRIBED) "" Old')[b"Old"] == b"\\NonExistent \\Subscribed"
