"""One RFC822.SIZE per client, on every path that reads a size (RFC 3501 §2.3.4, RFC 6857).

A client without UTF8=ACCEPT gets an SMTPUTF8 message downgraded (imap/downgrade.py), so the
size it sees is the downgraded one; SEARCH LARGER/SMALLER (RFC 9051 §6.4.4: "RFC822.SIZE
larger/smaller than"), SORT SIZE (RFC 5256 §3: "size of the message in octets", i.e. its
RFC822.SIZE), STATUS SIZE (RFC 8438 §3: the sum of RFC822.SIZE) and CONTEXT=SEARCH updates
must use that same size. A UTF8=ACCEPT client sees the stored size everywhere.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap.downgrade_size import seen_size
from mailstack.imap.mime import to_crlf

from tests.imap.rawclient import RawClient
from tests.imap.servers import logged_in
from tests.imap.test_utf8 import INTL
from tests.imap.test_utf8_size import MESSAGES, sizes
from tests.support.imapserver import USER, ImapDeployment, ImapServerThread, make_deployment


def filler(size: int) -> bytes:
    """An ASCII message of exactly `size` octets."""
    head = b"From: b@example.com\r\nSubject: filler\r\n\r\n"
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


# An ASCII message whose size lies between INTL's stored and downgraded sizes: the two kinds of
# client must order it differently against INTL in SORT (SIZE).
MIDDLE = filler((len(INTL) + seen_size(INTL)) // 2)
ALL = [*MESSAGES, MIDDLE]


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    assert len(INTL) < len(MIDDLE) < seen_size(INTL)
    dep = make_deployment(tmp_path / "state")
    for message in ALL:
        dep.store.deliver([(USER, "INBOX")], message)
    return dep


def login(server: ImapServerThread, *, utf8: bool) -> RawClient:
    return logged_in(server.imap_port, enable="UTF8=ACCEPT" if utf8 else None)


def numbers(lines: list[bytes], word: str) -> list[int]:
    found = [ln for ln in lines if ln.startswith(f"* {word}".encode())]
    assert len(found) == 1, lines
    return [int(n) for n in found[0].split()[2:]]


def status_size(client: RawClient) -> int:
    lines = client.command("STATUS INBOX (SIZE)")
    m = re.search(rb"\* STATUS INBOX \(SIZE (\d+)\)", b"".join(lines))
    assert m is not None, lines
    return int(m[1])


def by_size(seen: dict[int, int]) -> list[int]:
    return sorted(seen, key=lambda n: (seen[n], n))


@pytest.mark.parametrize("utf8", [False, True], ids=["plain-client", "utf8-client"])
def test_every_size_agrees_with_rfc822_size(server: ImapServerThread, utf8: bool) -> None:
    with login(server, utf8=utf8) as client:
        # Cold (nothing cached yet): STATUS SIZE and SORT (SIZE) come before any FETCH.
        total = status_size(client)
        assert client.tagged("EXAMINE INBOX").startswith(b"OK")
        sorted_cold = numbers(client.command("SORT (SIZE) UTF-8 ALL"), "SORT")
        seen = sizes(client, "RFC822.SIZE")
        assert sorted(seen) == list(range(1, len(ALL) + 1))
        if utf8:
            assert list(seen.values()) == [len(m) for m in ALL]
        else:
            assert seen[2] == seen_size(INTL) > len(INTL)
        assert total == sum(seen.values()) == status_size(client)
        assert sorted_cold == by_size(seen)
        reverse = numbers(client.command("SORT (REVERSE SIZE) UTF-8 ALL"), "SORT")
        assert reverse == sorted(seen, key=lambda n: (-seen[n], n))
        for n, size in seen.items():
            assert n in numbers(client.command(f"SEARCH LARGER {size - 1}"), "SEARCH")
            assert n not in numbers(client.command(f"SEARCH LARGER {size}"), "SEARCH")
            assert n in numbers(client.command(f"SEARCH SMALLER {size + 1}"), "SEARCH")
            assert n not in numbers(client.command(f"SEARCH SMALLER {size}"), "SEARCH")
            # Through the stored header rows too (imap/header_index.py answers FROM keys).
            assert n in numbers(client.command(f"SEARCH FROM example LARGER {size - 1}"), "SEARCH")
            assert n not in numbers(client.command(f"SEARCH FROM example LARGER {size}"), "SEARCH")
        # LIST-EXTENDED's STATUS return option (RFC 5819) gives the same sum.
        listed = b"".join(client.command('LIST "" "INBOX" RETURN (STATUS (SIZE))'))
        assert f"(SIZE {total})".encode() in listed


@pytest.mark.parametrize("utf8", [False, True], ids=["plain-client", "utf8-client"])
def test_context_update_uses_the_seen_size(
    dep: ImapDeployment, server: ImapServerThread, utf8: bool
) -> None:
    """CONTEXT=SEARCH (RFC 5267 §4): a new message enters a LARGER result by the size this
    client sees, not the stored one."""
    with login(server, utf8=utf8) as client:
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        threshold = len(INTL)  # the stored size: only the downgraded form is larger
        lines = client.command(f"SEARCH RETURN (UPDATE) LARGER {threshold}")
        assert lines[-1].split(b" ")[1] == b"OK"
        dep.store.deliver([(USER, "INBOX")], INTL)
        update = b"".join(client.command("NOOP"))
        added = b"ADDTO (0 %d)" % (len(ALL) + 1)
        assert (added in update) == (not utf8), update


def test_sizes_need_no_file_once_a_message_was_parsed(
    dep: ImapDeployment, server: ImapServerThread
) -> None:
    """Any parse of a message (here a UTF-8 client's BODYSTRUCTURE) remembers the size a
    client without UTF8=ACCEPT sees, and COPY carries it: that client's STATUS SIZE and
    SORT (SIZE) then read no message file."""
    with login(server, utf8=True) as client:
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        assert client.tagged("FETCH 1:* BODYSTRUCTURE").startswith(b"OK")
        assert client.tagged("CREATE Kept").startswith(b"OK")
        assert client.tagged("COPY 1:* Kept").startswith(b"OK")
    # Blank every message in place (same names, same lengths): a file read from now on
    # would find an ASCII message and answer its stored size.
    root = dep.paths.maildir(USER)
    files = [f for d in ("cur", "new", ".Kept/cur", ".Kept/new") for f in (root / d).iterdir()]
    assert len(files) == 2 * len(ALL)
    for f in files:
        f.write_bytes(b"x" * f.stat().st_size)
    seen = {n: seen_size(m) for n, m in enumerate(ALL, 1)}
    with login(server, utf8=False) as client:
        for folder in ("INBOX", "Kept"):
            lines = client.command(f"STATUS {folder} (SIZE)")
            assert f"(SIZE {sum(seen.values())})".encode() in lines[0], lines
            assert client.tagged(f"EXAMINE {folder}").startswith(b"OK")
            assert numbers(client.command("SORT (SIZE) UTF-8 ALL"), "SORT") == by_size(seen)


@pytest.mark.parametrize("utf8", [False, True], ids=["plain-client", "utf8-client"])
def test_sort_context_places_new_mail_by_the_seen_size(
    dep: ImapDeployment, server: ImapServerThread, utf8: bool
) -> None:
    """CONTEXT=SORT (RFC 5267 §4.3.2): a new message's ADDTO position follows the size this
    client sees; INTL lands on the other side of MIDDLE for the two kinds of client."""
    with login(server, utf8=utf8) as client:
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        seen = sizes(client, "RFC822.SIZE")
        lines = client.command("SORT RETURN (UPDATE) (SIZE) UTF-8 ALL")
        assert lines[-1].split(b" ")[1] == b"OK"
        dep.store.deliver([(USER, "INBOX")], INTL)
        new = seen_size(INTL) if not utf8 else len(INTL)
        position = 1 + sum(1 for size in seen.values() if size <= new)
        update = b"".join(client.command("NOOP"))
        assert b"ADDTO (%d %d)" % (position, len(ALL) + 1) in update, update


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" ", b"\xc3\xa9"]), max_size=40))
def test_seen_size_of_a_message_is_its_length_with_crlf_line_ends(pieces: list[bytes]) -> None:
    # An ASCII message is counted without copying it; the count must be to_crlf's length,
    # what BODY[] sends (RFC 3501 §2.3.4).
    raw = b"".join(pieces)
    if raw.isascii():
        assert seen_size(raw) == len(to_crlf(raw))
