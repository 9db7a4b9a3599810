"""SORT (RFC 5256, RFC 5957): the base subject, sent dates, the sort itself, the parser, and
the answers of our server next to Dovecot's on the same messages (tests/imap/sort_fixtures.py).
"""

from __future__ import annotations

import datetime
import imaplib
import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.delivery.store import INBOX, MessageInfo
from mailstack.imap import commands as c
from mailstack.imap.parser import ParseError, parse_command
from mailstack.imap.sort import (
    Criterion,
    Message,
    base_subject,
    collation_key,
    message_ids,
    sent_date,
    sort,
)

from tests.imap.sort_fixtures import MESSAGES, SORTS
from tests.imap.test_fetch import run_dovecot
from tests.support.imapserver import ImapDeployment, make_deployment, running_server

# -- base subject (RFC 5256 §2.1) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "base", "is_refwd"),
    [
        pytest.param("hello", "hello", False, id="plain"),
        pytest.param("Re: hello", "hello", True, id="re"),
        pytest.param("RE:hello", "hello", True, id="re-no-space"),
        pytest.param("re: Re: RE: hello", "hello", True, id="re-repeated"),
        pytest.param("Fwd: hello", "hello", True, id="fwd"),
        pytest.param("FW: hello", "hello", True, id="fw"),
        pytest.param("Re[2]: hello", "hello", True, id="re-with-blob"),
        pytest.param("Re [2] : hello", "hello", True, id="spaces-around-blob"),
        pytest.param("Re [2] x: hello", "Re [2] x: hello", False, id="not-a-leader"),
        pytest.param("[list] Re: hello", "hello", True, id="blob-then-re"),
        pytest.param("Re: [list] hello", "hello", True, id="re-then-blob"),
        pytest.param("[list] hello", "hello", False, id="blob-removed"),
        pytest.param("[list]", "[list]", False, id="only-blob-kept"),
        pytest.param("[a] [b]", "[b]", False, id="last-blob-is-the-base"),
        pytest.param("hello (fwd)", "hello", True, id="fwd-trailer"),
        pytest.param("hello (FWD) (fwd)  ", "hello", True, id="trailers-repeated"),
        pytest.param("[fwd: hello]", "hello", True, id="fwd-wrapper"),
        pytest.param("[Fwd: Re: hello (fwd)]", "hello", True, id="wrapper-nested"),
        pytest.param("Re: [fwd: Re: thing] (fwd)", "thing", True, id="all-markers"),
        pytest.param("  spaced \t  out   ", "spaced out", False, id="white-space"),
        pytest.param("hello\r\n world", "hello world", False, id="continuation"),
        pytest.param("=?utf-8?q?Re=3A_caf=C3=A9?=", "café", True, id="encoded-word"),
        pytest.param("=?utf-8?q?Re=3A?= =?utf-8?q?_x?=", "x", True, id="adjacent-words"),
        pytest.param("re:", "", True, id="only-re"),
        pytest.param("(fwd)", "", True, id="only-trailer"),
        pytest.param("", "", False, id="empty"),
        pytest.param("Reply: hello", "Reply: hello", False, id="not-a-marker"),
        pytest.param("fwdx: hi", "fwdx: hi", False, id="marker-must-end-in-colon"),
        pytest.param("[unclosed Re: hi", "[unclosed Re: hi", False, id="unclosed-blob"),
    ],
)
def test_base_subject(subject: str, base: str, is_refwd: bool) -> None:
    assert base_subject(subject) == (base, is_refwd)


CORE = st.text(alphabet="abcxyz ", min_size=1, max_size=12).filter(
    lambda s: s.strip() != "" and s.strip()[:2].lower() not in ("re", "fw")
)
LEADERS = st.lists(st.sampled_from(["Re: ", "RE:", "Fwd: ", "fw:", "[list] ", "Re[3]: ", " "]))
TRAILERS = st.lists(st.sampled_from([" (fwd)", " ", "(FWD)"]))


@given(CORE, LEADERS, TRAILERS, st.booleans())
def test_markers_never_change_the_base(
    core: str, leaders: list[str], trailers: list[str], wrap: bool
) -> None:
    base, _ = base_subject(core)
    subject = "".join(leaders) + core + "".join(trailers)
    if wrap:
        subject = "[fwd: " + subject + "]"
    got, is_refwd = base_subject(subject)
    assert got == base
    marked = wrap or any(t.strip() for t in trailers) or any(":" in x for x in leaders)
    assert is_refwd == marked


@given(st.text(max_size=60))
@example("[fwd: [fwd: ]]")
@example("[\x00]:")
def test_base_subject_is_total_and_idempotent(subject: str) -> None:
    base, _ = base_subject(subject)
    assert base == base.strip(" ")
    assert "  " not in base and "\t" not in base
    if "=?" not in subject:  # decoding twice may decode what decoding made
        assert base_subject(base)[0] == base


def test_collation_folds_only_ascii_letters() -> None:
    assert collation_key("abc") == collation_key("ABC")
    assert collation_key("_") > collation_key("Z")  # i;ascii-casemap upper-cases
    assert collation_key("é") != collation_key("É")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Fri, 1 Mar 2024 12:00:00 +0100", datetime.datetime(2024, 3, 1, 11)),
        ("1 Mar 2024 12:00:00 -0030", datetime.datetime(2024, 3, 1, 12, 30)),
        ("Fri, 1 Mar 2024 12:00:00", datetime.datetime(2024, 3, 1, 12)),
        ("5 Mar 24 10:00 GMT", datetime.datetime(2024, 3, 5, 10)),
        ("Thu, 31 Feb 2024 10:00:00 +0000", None),
        ("Thu, 1 Feb 2024 25:00:00 +0000", None),
        ("garbage date", None),
        (None, None),
    ],
)
def test_sent_date(value: str | None, expected: datetime.datetime | None) -> None:
    want = None if expected is None else int(expected.replace(tzinfo=datetime.UTC).timestamp())
    assert sent_date(value) == want


def test_message_ids_skip_invalid_ones() -> None:
    assert message_ids("no-at <bad> <a@b>\r\n <c @ d> <@x> <e@f") == ["a@b", "c@d"]


# -- sorting ---------------------------------------------------------------------------------


def messages(raw: list[tuple[bytes, float]]) -> list[Message]:
    out = []
    for seq, (data, date) in enumerate(raw, start=1):
        info = MessageInfo(
            uid=seq * 10, flags=frozenset(), internal_date=date, size=len(data), key=f"k{seq}"
        )
        out.append(Message.of(seq, info, data.split(b"\r\n\r\n")[0]))
    return out


ALL = messages(MESSAGES)


def test_ties_keep_sequence_order_even_reversed() -> None:
    same = [m for m in ALL if m.arrival == ALL[4].arrival]
    assert len(same) == 2
    for program in ([Criterion("ARRIVAL")], [Criterion("ARRIVAL", reverse=True)]):
        got = [m.seq for m in sort(same, program)]
        assert got == sorted(got)


@given(
    st.lists(
        st.sampled_from(
            sorted(
                [
                    "ARRIVAL",
                    "CC",
                    "DATE",
                    "FROM",
                    "SIZE",
                    "SUBJECT",
                    "TO",
                    "DISPLAYFROM",
                    "DISPLAYTO",
                ]
            )
        ),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.booleans(), min_size=3, max_size=3),
)
def test_sort_is_a_permutation_ordered_by_its_first_key(keys: list[str], rev: list[bool]) -> None:
    program = [Criterion(k, r) for k, r in zip(keys, rev, strict=False)]
    got = sort(ALL, program)
    assert sorted(m.seq for m in got) == [m.seq for m in ALL]
    first = program[0]
    attr = {
        "FROM": "sender",
        "SIZE": "info",
        "DISPLAYFROM": "display_from",
        "DISPLAYTO": "display_to",
    }.get(first.key, first.key.lower())
    values = [getattr(m, attr) for m in got]
    if first.key == "SIZE":
        values = [v.size for v in values]
    assert values == sorted(values, reverse=first.reverse)


def test_missing_headers_sort_first() -> None:
    got = sort(ALL, [Criterion("FROM")])
    assert got[0].seq == 14  # no From at all


# -- parsing ---------------------------------------------------------------------------------


def test_parse_sort() -> None:
    command = parse_command(b"a UID SORT (REVERSE DATE subject) utf-8 SUBJECT x ALL\r\n")
    assert command == c.Sort(
        "a",
        (c.SortCriterion("DATE", True), c.SortCriterion("SUBJECT")),
        "UTF-8",
        c.SearchAnd((c.SearchHeader("Subject", "x"), c.SearchAll())),
        uid=True,
    )


@pytest.mark.parametrize(
    "line",
    [
        b"a SORT () UTF-8 ALL\r\n",
        b"a SORT (NAME) UTF-8 ALL\r\n",
        b"a SORT (REVERSE) UTF-8 ALL\r\n",
        b"a SORT (DATE) ALL\r\n",  # the charset is not optional
        b"a SORT (DATE) UTF-8\r\n",
        b"a SORT DATE UTF-8 ALL\r\n",
        b"a THREAD JWZ UTF-8 ALL\r\n",
        b"a THREAD REFERENCES UTF-8\r\n",
    ],
)
def test_bad_sort_and_thread_are_parse_errors(line: bytes) -> None:
    with pytest.raises(ParseError):
        parse_command(line)


# -- our server next to Dovecot ----------------------------------------------------------------


def load(dep: ImapDeployment) -> None:
    for raw, date in MESSAGES:
        dep.store.append("alice@example.com", INBOX, raw, internal_date=date)


def ours(dep: ImapDeployment, commands: list[str], *, utf8: bool = False) -> list[str]:
    """Each command's untagged SORT/THREAD line from our server."""
    with running_server(dep) as server:
        client = server.login()
        try:
            if utf8:
                typ, _ = client._simple_command("ENABLE", "UTF8=ACCEPT")
                assert typ == "OK"
            client.select("INBOX")
            out = []
            for command in commands:
                tag = client._new_tag().decode()
                client.send(f"{tag} {command}\r\n".encode())
                lines = []
                while not (line := client.readline()).startswith(tag.encode()):
                    lines.append(line.rstrip(b"\r\n").decode())
                assert b" OK " in line, (command, line)
                [found] = [x for x in lines if x.startswith(("* SORT", "* THREAD"))]
                out.append(found)
            return out
        finally:
            client.logout()


def theirs(commands: list[str]) -> list[str]:
    transcript = run_dovecot(
        [raw for raw, _ in MESSAGES],
        b"".join(f"q{i} {cmd}\r\n".encode() for i, cmd in enumerate(commands)),
        [date for _, date in MESSAGES],
    )
    lines = transcript.decode().split("\r\n")
    return [x for x in lines if x.startswith(("* SORT", "* THREAD"))]


@pytest.mark.external
def test_sort_answers_match_dovecot(tmp_path) -> None:
    dep = make_deployment(tmp_path / "state")
    load(dep)
    commands = [f"SORT {program} UTF-8 ALL" for program in SORTS]
    commands += [
        "SORT (SUBJECT) US-ASCII FROM bob",
        "SORT (DATE) UTF-8 NOT SUBJECT hello",
        "SORT (REVERSE SIZE) UTF-8 OR TO zoe CC alice",
    ]
    # Dovecot hands every client the stored bytes and sizes (it downgrades nothing), as we
    # do a UTF8=ACCEPT client; one without it sorts by the downgraded sizes
    # (tests/imap/test_utf8_size_keys.py).
    sized = [command for command in commands if "SIZE" in command]
    plain = [command for command in commands if command not in sized]
    got = dict(zip(plain, ours(dep, plain), strict=True))
    got |= dict(zip(sized, ours(dep, sized, utf8=True), strict=True))
    assert [got[command] for command in commands] == theirs(commands)


def test_uid_sort_and_refusals(tmp_path) -> None:
    dep = make_deployment(tmp_path / "state")
    load(dep)
    with running_server(dep) as server:
        client = server.login()
        client.select("INBOX")
        typ, data = client.uid("SORT", "(REVERSE ARRIVAL)", "UTF-8", "ALL")
        assert typ == "OK"
        uids = [int(x) for x in data[0].split()]
        assert uids[0] == max(uids) and len(uids) == len(MESSAGES)
        typ, data = client.sort("(SIZE)", "UTF-8", "UID", "1:3")
        assert typ == "OK" and sorted(int(x) for x in data[0].split()) == [1, 2, 3]
        typ, data = client.sort("(DATE)", "KOI8-R", "ALL")  # RFC 5256 §3: NO, not BAD
        assert typ == "NO" and b"[BADCHARSET (UTF-8 US-ASCII)]" in data[0]
        with pytest.raises(imaplib.IMAP4.error, match="sort key"):
            client.sort("(COLOUR)", "UTF-8", "ALL")
        typ, data = client.sort("(DATE)", "UTF-8", "SUBJECT", "no-such-subject")
        assert typ == "OK" and data in ([None], [b""])
        typ, caps = client.capability()
        for cap in ("SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES"):
            assert re.search(rf"\b{re.escape(cap)}\b", caps[0].decode())
        client.logout()
