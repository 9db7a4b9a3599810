"""Differential test against an isolated Dovecot: the same script of deliveries, flag changes
from another session and expunges on each server, then a CONDSTORE/QRESYNC resync from a
stale state (RFC 7162). Both must report the same changed UIDs, flags and vanished UIDs.

Each server has its own Maildir (Dovecot's under its fixture's work dir, ours in a running
mailstack IMAP server), so neither sees the other's index; only the answers are compared.
MODSEQ values differ by design (ours start at the clock, delivery/index_db.py): only which
messages changed is compared, and that each server's values order the same way.
"""

from __future__ import annotations

import re

from tests.imap.servers import Endpoint  # the `endpoints` fixture: tests/imap/conftest.py

BODIES = [
    f"Subject: message {i}\r\nMessage-ID: <{i}@example.org>\r\n\r\nbody {i}\r\n".encode()
    for i in range(1, 11)
]


def uid_set(text: str) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition(":")
        out.update(range(int(low), int(high or low) + 1))
    return out


def parse(lines: list[bytes]) -> tuple[set[int], dict[int, frozenset[str]], dict[int, int]]:
    """(vanished UIDs, UID -> flags, UID -> MODSEQ) from a resync's untagged responses."""
    gone: set[int] = set()
    flags: dict[int, frozenset[str]] = {}
    modseqs: dict[int, int] = {}
    for line in lines:
        if m := re.match(rb"\* VANISHED \(EARLIER\) ([\d:,]+)", line):
            gone |= uid_set(m[1].decode())
        elif (m := re.match(rb"\* \d+ FETCH \((.*)\)\r\n$", line)) is not None:
            items = m[1]
            uid = int(re.search(rb"UID (\d+)", items)[1])  # type: ignore[index]
            listed = re.search(rb"FLAGS \(([^)]*)\)", items)
            if listed is not None:
                flags[uid] = frozenset(listed[1].decode().split()) - {"\\Recent"}
            modseqs[uid] = int(re.search(rb"MODSEQ \((\d+)\)", items)[1])  # type: ignore[index]
    return gone, flags, modseqs


def script(endpoint: Endpoint) -> dict[str, tuple[set[int], dict[int, frozenset[str]]]]:
    """Run the script on one server; returns what each resync reported."""
    results: dict[str, tuple[set[int], dict[int, frozenset[str]]]] = {}
    with endpoint.connect() as writer:
        for body in BODIES[:8]:
            writer.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
            assert writer.until_tagged(b"a")[-1].startswith(b"a OK")
        writer.command("ENABLE QRESYNC")
        writer.command("SELECT INBOX")
        writer.command("UID STORE 2 +FLAGS (\\Seen)")
        # The stale client: looks once, remembers UIDVALIDITY and HIGHESTMODSEQ, goes away.
        with endpoint.connect() as stale:
            stale.command("ENABLE QRESYNC")
            lines = stale.command("SELECT INBOX")
            joined = b"".join(lines)
            validity = int(re.search(rb"UIDVALIDITY (\d+)", joined)[1])  # type: ignore[index]
            mark = int(re.search(rb"HIGHESTMODSEQ (\d+)", joined)[1])  # type: ignore[index]
        # Meanwhile, another session: flags, a keyword, expunges, new mail, a flag set and
        # cleared again (a change even though the flags end as they were).
        writer.command("UID STORE 1,3 +FLAGS (\\Flagged)")
        writer.command("UID STORE 4 +FLAGS ($Label1)")
        writer.command("UID STORE 5 +FLAGS (\\Answered)")
        writer.command("UID STORE 5 -FLAGS (\\Answered)")
        writer.command("UID STORE 2,6,8 +FLAGS (\\Deleted)")
        writer.command("UID STORE 3 -FLAGS (\\Flagged)")
        assert writer.tagged("EXPUNGE").startswith(b"OK")
        for body in BODIES[8:]:
            writer.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
            assert writer.until_tagged(b"a")[-1].startswith(b"a OK")
        writer.command("UID STORE 9 +FLAGS (\\Seen)")
    with endpoint.connect() as client:
        client.command("ENABLE QRESYNC")
        lines = client.command(f"SELECT INBOX (QRESYNC ({validity} {mark}))")
        gone, flags, _ = parse(lines)
        results["select qresync"] = (gone, flags)
        lines = client.command(f"EXAMINE INBOX (QRESYNC ({validity} {mark} 1:7))")
        gone, flags, _ = parse(lines)
        results["examine qresync known-uids"] = (gone, flags)
        lines = client.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {mark} VANISHED)")
        gone, flags, modseqs = parse(lines)
        results["uid fetch vanished"] = (gone, flags)
        lines = client.command(f"FETCH 1:* (UID FLAGS) (CHANGEDSINCE {mark})")
        gone, flags, _ = parse(lines)
        results["fetch changedsince"] = (gone, flags)
        # Order check: the newest change (UID 9's \Seen) has the highest MODSEQ.
        assert max(modseqs, key=modseqs.__getitem__) == 9, (endpoint.name, modseqs)
        lines = client.command(f"UID SEARCH MODSEQ {mark + 1}")
        found = re.match(rb"\* SEARCH ([\d ]+?)(?: \(MODSEQ \d+\))?\r\n", lines[0])
        assert found is not None, (endpoint.name, lines)
        results["search modseq"] = ({int(u) for u in found[1].split()}, {})
    return results


def test_resync_answers_equal_dovecots(endpoints: tuple[Endpoint, Endpoint]) -> None:
    ours, theirs = (script(endpoint) for endpoint in endpoints)
    assert ours == theirs
    # And they are what the script did.
    gone, flags = ours["select qresync"]
    assert gone == {2, 6, 8}
    assert set(flags) == {1, 3, 4, 5, 9, 10}
    assert flags[1] == {"\\Flagged"} and flags[3] == frozenset() and flags[4] == {"$Label1"}
