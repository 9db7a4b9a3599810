"""A downgraded message's RFC822.SIZE (RFC 3501 §2.3.4, RFC 6857): whatever form of a message a
client gets, RFC822.SIZE is the number of bytes its BODY[] holds. A client without
UTF8=ACCEPT gets an SMTPUTF8 message downgraded (imap/downgrade.py), so its size is the
downgraded one; a UTF8=ACCEPT client gets the stored bytes and the stored size."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mailstack.imap.cache import StructureCache
from mailstack.imap.downgrade_size import seen_size

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.imap.test_utf8 import ASCII, INTL
from tests.support.imapserver import (
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
)

# 8-bit only in a MIME part's header (a file name): the message's own header is ASCII.
PART = (
    "From: a@example.com\r\n"
    "Subject: report\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b"\r\n'
    "\r\n"
    "--b\r\n"
    "Content-Type: text/plain\r\n"
    "\r\n"
    "see attachment\r\n"
    "--b\r\n"
    'Content-Type: application/pdf; name="Übersicht.pdf"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "JVBERg==\r\n"
    "--b--\r\n"
).encode()
# 8-bit only in a field neither ENVELOPE nor BODYSTRUCTURE shows.
NOTE = "From: a@example.com\r\nX-Note: Grüße\r\nSubject: x\r\n\r\nbody\r\n".encode()
MESSAGES = [ASCII, INTL, PART, NOTE]


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    for message in MESSAGES:
        dep.store.deliver([(USER, "INBOX")], message)
    return dep


def session(server: ImapServerThread, *, utf8: bool) -> RawClient:
    return logged_in(server.imap_port, enable="UTF8=ACCEPT" if utf8 else None, examine="INBOX")


def sizes(client: RawClient, items: str) -> dict[int, int]:
    lines = b"".join(client.command(f"FETCH 1:* ({items})"))
    found = re.findall(rb"\* (\d+) FETCH \(.*?RFC822\.SIZE (\d+)", lines)
    return {int(n): int(s) for n, s in found}


def bodies(client: RawClient) -> dict[int, bytes]:
    data = b"".join(client.command("FETCH 1:* BODY.PEEK[]"))
    out, pos = {}, 0
    while m := re.compile(rb"\* (\d+) FETCH \(BODY\[\] \{(\d+)\}\r\n").search(data, pos):
        start = m.end()
        out[int(m[1])] = data[start : start + int(m[2])]
        pos = start + int(m[2])
    return out


@pytest.mark.parametrize("utf8", [False, True], ids=["plain-client", "utf8-client"])
@pytest.mark.parametrize(
    "items", ["RFC822.SIZE", "RFC822.SIZE ENVELOPE", "RFC822.SIZE BODYSTRUCTURE FLAGS"]
)
def test_rfc822_size_is_what_body_holds(server: ImapServerThread, utf8: bool, items: str) -> None:
    with session(server, utf8=utf8) as client:
        cold = sizes(client, items)  # nothing cached yet: the first FETCH
        got = bodies(client)
        warm = sizes(client, items)  # structures cached now
        assert sorted(got) == [1, 2, 3, 4]
        for n, body in got.items():
            assert cold[n] == warm[n] == len(body), (n, body[:80])
            assert body.isascii() or utf8
        stored = [len(m) for m in MESSAGES]
        if utf8:
            assert [cold[n] for n in (1, 2, 3, 4)] == stored
        else:
            assert cold[1] == stored[0]  # an ASCII message keeps its size
            assert cold[2] != stored[1] and cold[3] != stored[2] and cold[4] != stored[3]
        # The other kind of client, after this one filled the caches, still gets its own.
        with session(server, utf8=not utf8) as other:
            mine = sizes(other, items)
            for n, body in bodies(other).items():
                assert mine[n] == len(body)


def test_size_rows_live_and_die_with_their_message(tmp_path: Path) -> None:
    cache = StructureCache(tmp_path)
    cache.put_many([("m1", 10, "{}"), ("m1:size", 10, "12"), ("m2:size", 5, "5")])
    assert cache.prune(["m1"]) == 1  # m2 is gone: its size row goes; m1's stays
    assert cache.get_many([("m1:size", 10), ("m2:size", 5)]) == {"m1:size": "12"}
    assert seen_size(b"Subject: x\n\nbody\n") == len(b"Subject: x\r\n\r\nbody\r\n")
    assert seen_size(INTL) > len(INTL)  # downgraded header fields are longer
    cache.close()
