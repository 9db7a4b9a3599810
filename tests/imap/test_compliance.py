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


# -- LSUB of a parent whose child alone is subscribed (RFC 3501 §6.3.9) ---------------------------


def lsub_scenario(open_session: Opener) -> list[list[bytes]]:
    with open_session() as c:
        for line in untagged(c.command('LSUB "" *')):  # a new mailstack account's folders
            assert c.tagged(b"UNSUBSCRIBE " + line.rsplit(b" ", 1)[1]).startswith(b"OK")
        for command in (
            "CREATE Foo.Bar.Baz",
            "SUBSCRIBE Foo.Bar.Baz",
            "CREATE Top",
            "SUBSCRIBE Top",
        ):
            assert c.tagged(command).startswith(b"OK")
        return [
            sorted(untagged(c.command(f"LSUB {reference} {pattern}")))
            for reference, pattern in (
                ('""', "Foo.%"),
                ('""', "%"),
                ('""', "*"),
                ("Foo.", "%"),
                ('""', "Foo.Bar.%"),
                ('""', "Foo.*"),
            )
        ]


def test_lsub_lists_noselect_parents_of_subscribed_children(ours: Opener, theirs: Opener) -> None:
    expected = [
        [b'* LSUB (\\Noselect) "." Foo.Bar'],
        [b'* LSUB (\\Noselect) "." Foo', b'* LSUB () "." Top'],
        [b'* LSUB () "." Foo.Bar.Baz', b'* LSUB () "." Top'],
        [b'* LSUB (\\Noselect) "." Foo.Bar'],
        [b'* LSUB () "." Foo.Bar.Baz'],
        [b'* LSUB () "." Foo.Bar.Baz'],
    ]
    expected = [sorted(group) for group in expected]
    assert lsub_scenario(theirs) == expected
    assert lsub_scenario(ours) == expected


# -- a well-formed name we cannot store is NO, not BAD (RFC 9051 §7.1) ----------------------------

NAMES = ['"a&b"', "a&b", "&Jjo", '"a..b"', '".x"']


def names_scenario(open_session: Opener) -> list[bytes]:
    out = []
    with open_session() as c:
        for name in NAMES:
            for command in (f"CREATE {name}", f"SELECT {name}", f"STATUS {name} (MESSAGES)"):
                out.append(normalise(c.command(command))[-1].split(b" ", 2)[1])
            out.append(normalise(c.command("NOOP"))[-1].split(b" ", 2)[1])
    return out


def test_unstorable_names_are_refused_with_no(ours: Opener, theirs: Opener) -> None:
    expected = [b"NO", b"NO", b"NO", b"OK"] * len(NAMES)
    assert names_scenario(theirs) == expected
    assert names_scenario(ours) == expected


# -- SEARCH FROM matches the parsed address, as ENVELOPE shows it ---------------------------------

FROMS = [
    b"<user (comment)@ (comment) example.com>",
    b"user@example.com",
    b'"Some User" <user@example.com>',
    b"user (Some User) @example.com",
    b"other@example.com (user@example.com)",
    b"=?utf-8?q?J=C3=B6rg?= <joerg@example.com>",
    b"nobody@example.org",
]


def from_scenario(open_session: Opener) -> list[list[bytes]]:
    with open_session() as c:
        for sender in FROMS:
            assert append(c, "INBOX", b"From: " + sender + b"\r\nSubject: s\r\n\r\nbody\r\n")[:2]
        assert c.tagged("SELECT INBOX").startswith(b"OK")
        return [
            untagged(c.command(b"SEARCH " + key))
            for key in (
                b"FROM user@example.com",
                b'FROM "user@example.com"',
                b"FROM example.com",
                b"FROM Some",
                b'FROM "Some User"',
                b"CHARSET UTF-8 FROM {5+}\r\nJ\xc3\xb6rg",
                b"FROM joerg",
                b"FROM comment",
            )
        ]


def test_search_from_matches_the_parsed_address(ours: Opener, theirs: Opener) -> None:
    want = [
        [b"* SEARCH 1 2 3 4 5"],  # 5 has "(user@example.com)" as its display name
        [b"* SEARCH 1 2 3 4 5"],
        [b"* SEARCH 1 2 3 4 5 6"],
        [b"* SEARCH 3 4"],
        [b"* SEARCH 3 4"],
        [b"* SEARCH 6"],
        [b"* SEARCH 6"],
        [b"* SEARCH"],  # comments inside <...> are no part of the address
    ]
    assert from_scenario(theirs) == want
    assert from_scenario(ours) == want


# -- BINARY: bare LF in a binary part, quoted-printable by RFC 2045 §6.7 --------------------------

BINARY_PART = b"ab\ncd\ne"  # 7 octets; as text with CRLF it would be 9
MULTIPART = (
    b"From: a@example.com\r\nSubject: binary\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    + BINARY_PART
    + b"\r\n--XX\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"a=\r\nb=  \r\nc= \t\r\nd\r\ntrailing white space  \r\n=3D=3d =\r\n\r\n--XX--\r\n"
)


def binary_scenario(open_session: Opener) -> list[bytes]:
    with open_session() as c:
        literal8 = b"~{%d+}\r\n" % len(MULTIPART) + MULTIPART
        assert normalise(c.command(b"APPEND INBOX " + literal8))[-1].split(b" ")[1] == b"OK"
        assert c.tagged("SELECT INBOX").startswith(b"OK")
        lines = c.command("FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2])")
        assert lines[-1].split(b" ")[1] == b"OK", lines
        # Dovecot sends every BINARY[] as a literal8; a literal is as valid (RFC 3516 §4.2).
        return [line.replace(b"~{", b"{") for line in lines[:-1]]


def test_binary_keeps_bare_lf_and_decodes_qp_soft_breaks(ours: Opener, theirs: Opener) -> None:
    qp = b"abcd\r\ntrailing white space\r\n== "
    expected = [
        b"* 1 FETCH (BINARY.SIZE[1] 7 BINARY[1] {7}\r\n"
        + BINARY_PART
        + b" BINARY.SIZE[2] %d BINARY[2] {%d}\r\n" % (len(qp), len(qp))
        + qp
        + b")\r\n"
    ]
    assert binary_scenario(theirs) == expected
    assert binary_scenario(ours) == expected


# -- a new keyword: FLAGS and PERMANENTFLAGS before the FETCH that uses it (RFC 9051 §7.3.5) ------


def keyword_scenario(open_session: Opener) -> list[list[bytes]]:
    with open_session() as a, open_session() as b:
        assert append(a, "INBOX", MESSAGE) == b"OK [APPENDUID V 1]"
        assert a.tagged("SELECT INBOX").startswith(b"OK")
        assert b.tagged("SELECT INBOX").startswith(b"OK")
        stored = untagged(a.command("STORE 1 +FLAGS ($Important)"))
        # mailstack names the UID in unsolicited FETCHes too (RFC 9051 §7.5.2 allows it).
        noticed = [re.sub(rb"\(UID \d+ ", b"(", x) for x in untagged(b.command("NOOP"))]
        return [stored, noticed]


def test_new_keyword_is_announced_before_its_fetch(ours: Opener, theirs: Opener) -> None:
    flags = b"\\Answered \\Flagged \\Deleted \\Seen \\Draft $Important"
    announce = [b"* FLAGS (" + flags + b")", b"* OK [PERMANENTFLAGS (" + flags + b" \\*)]"]
    expected = [
        [*announce, b"* 1 FETCH (FLAGS ($Important \\Recent))"],
        [*announce, b"* 1 FETCH (FLAGS ($Important))"],
    ]
    assert canonical_flags(keyword_scenario(theirs)) == canonical_flags(expected)
    assert canonical_flags(keyword_scenario(ours)) == canonical_flags(expected)
