"""Compliance bugs an outside IMAP suite found, each checked against Dovecot on the same bytes.

Every test runs one script of commands on mailstack (a real server on loopback) and on Dovecot
(its imap binary pre-authenticated on a Maildir of its own, tests/imap/dovecot_preauth.py),
normalises what may differ by design (response text, UIDVALIDITY) and expects the same answer
from both, plus the exact bytes the RFC asks for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from tests.imap.dovecot_preauth import DovecotMaildir, dovecot_maildir  # noqa: F401
from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

Opener = Callable[[], AbstractContextManager[RawClient]]

pytestmark = pytest.mark.external  # each test also drives Dovecot


@pytest.fixture
def ours(tmp_path: Path) -> Iterator[Opener]:
    """Opens logged-in sessions on a fresh mailstack deployment."""
    dep: ImapDeployment = make_deployment(tmp_path / "state")
    with running_server(dep) as server:
        yield lambda: _login(server)


@contextmanager
def _login(server: ImapServerThread) -> Iterator[RawClient]:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        yield client


@pytest.fixture
def theirs(dovecot_maildir: DovecotMaildir) -> Opener:  # noqa: F811
    return dovecot_maildir.session


def normalise(lines: list[bytes]) -> list[bytes]:
    """Drop response text after the status and code, and what differs by design."""
    out = []
    for line in lines:
        line = re.sub(rb"\A(\S+ (?:OK|NO|BAD|BYE)(?: \[[^\]]*\])?).*", rb"\1", line, flags=re.S)
        line = re.sub(rb"(UIDVALIDITY|APPENDUID|COPYUID) \d+", rb"\1 V", line)
        out.append(line.rstrip(b"\r\n"))
    return out


def untagged(lines: list[bytes]) -> list[bytes]:
    return [line for line in normalise(lines) if line.startswith(b"* ")]


def append(client: RawClient, mailbox: str, message: bytes, flags: str = "") -> bytes:
    """APPEND with a LITERAL+ literal; the tagged status (normalised)."""
    flag_part = f" ({flags})" if flags else ""
    literal = b"{%d+}\r\n" % len(message) + message
    lines = client.command(f"APPEND {mailbox}{flag_part} ".encode() + literal)
    return normalise(lines)[-1].split(b" ", 1)[1]


MESSAGE = b"From: a@example.com\r\nSubject: hello\r\n\r\nhello\r\n"


# -- \Recent for APPEND/COPY with flags (RFC 3501 §2.3.2) -----------------------------------------


def recent_scenario(open_session: Opener) -> list[list[bytes]]:
    seen = []
    with open_session() as c:
        assert c.tagged("CREATE Dest").startswith(b"OK")
        assert append(c, "Dest", MESSAGE, "\\Seen") == b"OK [APPENDUID V 1]"
        assert append(c, "Dest", MESSAGE, "\\Flagged $Work") == b"OK [APPENDUID V 2]"
        assert append(c, "INBOX", MESSAGE, "\\Answered") == b"OK [APPENDUID V 1]"
        assert c.tagged("SELECT INBOX").startswith(b"OK")
        seen.append(untagged(c.command("FETCH 1 FLAGS")))
        assert c.tagged("COPY 1 Dest").startswith(b"OK")
        assert c.tagged("LOGOUT").startswith(b"OK")
    with open_session() as c:  # the next session: everything in Dest is recent
        seen.append(untagged(c.command("STATUS Dest (MESSAGES RECENT)")))
        seen.append([x for x in untagged(c.command("EXAMINE Dest")) if b"RECENT" in x])
        seen.append(untagged(c.command("FETCH 1:* FLAGS")))
        seen.append([x for x in untagged(c.command("SELECT Dest")) if b"RECENT" in x])
        seen.append(untagged(c.command("FETCH 1:* FLAGS")))
        assert c.tagged("LOGOUT").startswith(b"OK")
    with open_session() as c:  # and only to the first session that selected it
        seen.append([x for x in untagged(c.command("SELECT Dest")) if b"RECENT" in x])
        seen.append(untagged(c.command("STATUS INBOX (RECENT)")))
    return seen


def test_append_and_copy_with_flags_are_recent(ours: Opener, theirs: Opener) -> None:
    expected = [
        [b"* 1 FETCH (FLAGS (\\Answered \\Recent))"],
        [b"* STATUS Dest (MESSAGES 3 RECENT 3)"],
        [b"* 3 RECENT"],
        [
            b"* 1 FETCH (FLAGS (\\Recent \\Seen))",
            b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Work))",
            b"* 3 FETCH (FLAGS (\\Answered \\Recent))",
        ],
        [b"* 3 RECENT"],
        [
            b"* 1 FETCH (FLAGS (\\Recent \\Seen))",
            b"* 2 FETCH (FLAGS (\\Flagged \\Recent $Work))",
            b"* 3 FETCH (FLAGS (\\Answered \\Recent))",
        ],
        [b"* 0 RECENT"],
        [b"* STATUS INBOX (RECENT 0)"],
    ]
    assert canonical_flags(recent_scenario(theirs)) == canonical_flags(expected)
    assert canonical_flags(recent_scenario(ours)) == canonical_flags(expected)


def canonical_flags(seen: list[list[bytes]]) -> list[list[bytes]]:
    """Flags in one order (servers may list them in any order, RFC 9051 §7.5.2)."""

    def sort(m: re.Match[bytes]) -> bytes:
        return b"FLAGS (" + b" ".join(sorted(m[1].split())) + b")"

    return [[re.sub(rb"FLAGS \(([^)]*)\)", sort, line) for line in group] for group in seen]
