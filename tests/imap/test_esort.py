"""ESORT (RFC 5267 §3: SORT RETURN) and PARTIAL (§4.4) for SORT and SEARCH, over raw bytes
(UPDATE contexts: tests/imap/test_context_search.py):
every answer is checked against the plain SORT's order on the same messages
(tests/imap/sort_fixtures.py), and next to Dovecot's where Dovecot answers the same."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery.store import INBOX

from tests.imap.rawclient import RawClient
from tests.imap.sort_fixtures import MESSAGES, SORTS
from tests.imap.test_fetch import run_dovecot
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapServerThread,
    make_deployment,
    running_server,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImapServerThread]:
    dep = make_deployment(Path(tmp_path_factory.mktemp("esort")) / "state")
    for raw, date in MESSAGES:
        dep.store.append(USER, INBOX, raw, internal_date=date)
    with running_server(dep) as started:
        yield started


@pytest.fixture
def client(server: ImapServerThread) -> Iterator[RawClient]:
    with RawClient("127.0.0.1", server.imap_port) as raw:
        assert raw.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert raw.tagged("SELECT INBOX").startswith(b"OK")
        yield raw


def untagged(client: RawClient, command: str, prefix: bytes) -> bytes:
    lines = client.command(command)
    assert b" OK " in lines[-1], (command, lines[-1])
    [found] = [line for line in lines if line.startswith(prefix)]
    return found.rstrip(b"\r\n")


def plain_sort(client: RawClient, program: str, uid: bool = False) -> list[int]:
    line = untagged(client, f"{'UID ' if uid else ''}SORT {program} UTF-8 ALL", b"* SORT")
    return [int(n) for n in line.split()[2:]]


def expand(sequence: bytes) -> list[int]:
    """An ordered sequence-set as ESORT writes it (ranges ascending) back to numbers."""
    out: list[int] = []
    for part in sequence.split(b","):
        low, _, high = part.partition(b":")
        out.extend(range(int(low), int(high or low) + 1))
    return out


def items(line: bytes) -> dict[str, bytes]:
    """`* ESEARCH (TAG "t") [UID] NAME value ...` -> {NAME: value} (PARTIAL's value in ())."""
    rest = re.sub(rb'^\* ESEARCH \(TAG "[^"]*"\)( UID)?', b"", line)
    return {m[1].decode(): m[2] for m in re.finditer(rb" ([A-Z]+) (\([^)]*\)|\S+)", rest)}


@pytest.mark.parametrize("program", SORTS)
def test_esort_all_min_max_count_follow_the_sort_order(client: RawClient, program: str) -> None:
    order = plain_sort(client, program)
    line = untagged(client, f"SORT RETURN (MIN MAX COUNT ALL) {program} UTF-8 ALL", b"* ESEARCH")
    got = items(line)
    assert expand(got["ALL"]) == order
    assert int(got["MIN"]) == order[0] and int(got["MAX"]) == order[-1]
    assert int(got["COUNT"]) == len(order)
    # RETURN () is ALL (RFC 4731 §3.1, which ESORT follows).
    empty = untagged(client, f"SORT RETURN () {program} UTF-8 ALL", b"* ESEARCH")
    assert expand(items(empty)["ALL"]) == order


def test_uid_esort_and_partial_windows(client: RawClient) -> None:
    program = "(REVERSE SUBJECT REVERSE DATE)"
    order = plain_sort(client, program, uid=True)
    line = untagged(client, f"UID SORT RETURN (COUNT PARTIAL 2:4) {program} UTF-8 ALL", b"* ES")
    assert re.match(rb'\* ESEARCH \(TAG "t\d+"\) UID PARTIAL \(2:4 ', line)
    assert expand(items(line)["PARTIAL"][5:-1]) == order[1:4]
    # The window may be given high:low and may reach past the end; past it: NIL.
    line = untagged(client, f"UID SORT RETURN (PARTIAL 100:3) {program} UTF-8 ALL", b"* ES")
    assert expand(items(line)["PARTIAL"][7:-1]) == order[2:]
    line = untagged(client, f"SORT RETURN (PARTIAL 500:600) {program} UTF-8 ALL", b"* ESEARCH")
    assert line.endswith(b"PARTIAL (500:600 NIL)")


def test_esort_with_nothing_found(client: RawClient) -> None:
    line = untagged(client, "SORT RETURN (MIN MAX ALL COUNT) (DATE) UTF-8 SUBJECT nope", b"* ES")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "t\d+"\) COUNT 0', line)


def test_search_return_partial(client: RawClient) -> None:
    all_line = untagged(client, "SEARCH RETURN (ALL) ALL", b"* ESEARCH")
    every = expand(items(all_line)["ALL"])
    line = untagged(client, "SEARCH RETURN (PARTIAL 3:5) ALL", b"* ESEARCH")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "t\d+"\) PARTIAL \(3:5 [0-9:,]+\)', line)
    assert expand(items(line)["PARTIAL"][5:-1]) == every[2:5]
    line = untagged(client, "UID SEARCH RETURN (COUNT PARTIAL 1:2) NOT SUBJECT nope", b"* ESE")
    assert re.fullmatch(rb'\* ESEARCH \(TAG "t\d+"\) UID PARTIAL \(1:2 1:2\) COUNT \d+', line)


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("SORT RETURN (SAVE) (DATE) UTF-8 ALL", id="save-has-no-order"),
        pytest.param("SORT RETURN (PARTIAL 0:3) (DATE) UTF-8 ALL", id="zero"),
        pytest.param("SORT RETURN (PARTIAL 3) (DATE) UTF-8 ALL", id="no-range"),
        pytest.param("SORT RETURN (MIN MIN) (DATE) UTF-8 ALL", id="repeated"),
        pytest.param("SORT RETURN (MIN (DATE) UTF-8 ALL", id="unclosed"),
        pytest.param("SEARCH RETURN (PARTIAL -1:-3) ALL", id="negative-is-rfc-9394"),
        pytest.param("SEARCH RETURN (ALL PARTIAL 1:5) ALL", id="all-and-partial"),
    ],
)
def test_bad_return_options(client: RawClient, command: str) -> None:
    assert client.tagged(command).startswith(b"BAD")
    assert client.tagged("NOOP").startswith(b"OK")


def test_capability_names_esort_and_contexts(client: RawClient) -> None:
    caps = client.command("CAPABILITY")[0].split()
    assert b"ESORT" in caps and b"CONTEXT=SEARCH" in caps
    assert b"CONTEXT=SORT" in caps  # tests/imap/test_context_sort.py


@pytest.mark.external
def test_esort_matches_dovecot(tmp_path: Path) -> None:
    commands = [f"SORT RETURN (MIN MAX COUNT) {program} UTF-8 ALL" for program in SORTS]
    commands += [
        "SORT RETURN (COUNT) (SUBJECT) UTF-8 FROM bob",
        "SEARCH RETURN (PARTIAL 5:2) ALL",
        "SEARCH RETURN (COUNT PARTIAL 1:3) NOT SUBJECT hello",
        "UID SEARCH RETURN (UPDATE) ALL",  # CONTEXT=SEARCH: the correlator alone
    ]
    transcript = run_dovecot(
        [raw for raw, _ in MESSAGES],
        b"".join(f"q{i} {cmd}\r\n".encode() for i, cmd in enumerate(commands)),
        [date for _, date in MESSAGES],
    )
    theirs = [
        re.sub(r'TAG "q\d+"', "TAG", x)
        for x in transcript.decode().split("\r\n")
        if x.startswith("* ESEARCH")
    ]
    dep = make_deployment(tmp_path / "state")
    for raw, date in MESSAGES:
        dep.store.append(USER, INBOX, raw, internal_date=date)
    with running_server(dep) as started, RawClient("127.0.0.1", started.imap_port) as raw:
        assert raw.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert raw.tagged("SELECT INBOX").startswith(b"OK")
        ours = [
            re.sub(r'TAG "t\d+"', "TAG", untagged(raw, cmd, b"* ESEARCH").decode())
            for cmd in commands
        ]
    assert ours == theirs
