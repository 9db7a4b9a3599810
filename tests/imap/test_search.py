"""SEARCH evaluation (imap/search.py) over a small corpus, with keys parsed by imap/parser.py.

A table of key -> expected UIDs, checks that header-only and info-only keys do not read the
message body, the timezone rules for dates, and hypothesis laws: NOT is the complement, OR
the union, AND the intersection, over random key trees.
"""

from __future__ import annotations

import base64
import datetime
import functools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.store import MessageInfo
from mailstack.imap.commands import (
    Search,
    SearchAnd,
    SearchDate,
    SearchHeader,
    SearchKey,
    SearchNot,
    SearchOr,
    SearchText,
)
from mailstack.imap.mime import to_crlf
from mailstack.imap.parser import parse_command
from mailstack.imap.search import (
    Candidate,
    MessageText,
    Need,
    Scope,
    matches,
    needed,
    plan,
    search,
)
from mailstack.imap.sequence import parse_sequence_set

from tests.imap.test_fetch import FRAGMENTS, run_dovecot

UTC = datetime.UTC


def ts(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> float:
    return datetime.datetime(year, month, day, hour, minute, tzinfo=UTC).timestamp()


PDF = base64.encodebytes(b"%PDF SECRETWORD inside the attachment").decode()

MESSAGES: list[tuple[int, frozenset[str], float, bytes]] = [
    (
        1,
        frozenset({"\\Seen", "\\Answered"}),
        ts(2024, 10, 1, 12),
        b"""\
From: Alice Example <alice@example.com>
To: Bob <bob@example.net>
Subject: Quarterly report
Date: Tue, 1 Oct 2024 09:00:00 +0000
Message-ID: <q1@example.com>

The numbers are UP this quarter.
""",
    ),
    (
        2,
        frozenset({"\\Flagged", "$Important"}),
        ts(2024, 10, 15, 23, 30),
        (
            "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>\n"
            "To: alice@example.com\n"
            "Subject: =?utf-8?b?R3LDvMOfZQ==?= aus Berlin\n"
            "Date: Tue, 15 Oct 2024 23:30:00 +0200\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: base64\n"
            "\n" + base64.encodebytes("Der Käse ist geheim.\n".encode()).decode()
        ).encode(),
    ),
    (
        5,
        frozenset({"\\Deleted", "\\Draft"}),
        ts(2024, 10, 20),
        f"""\
From: carol@example.org
To: bob@example.net
Cc: Carol Two <carol2@example.org>
Bcc: dave@example.org
Subject: Menu
Content-Type: multipart/mixed; boundary=zz

--zz
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 au lait, soft=
break
--zz
Content-Type: application/pdf
Content-Transfer-Encoding: base64

{PDF}
--zz--
""".encode(),
    ),
    (
        7,
        frozenset(),
        ts(2024, 11, 2, 8),
        b"""\
From: fwd@example.com
To: bob@example.net
Subject: Fwd: something
Date: garbage
Content-Type: multipart/mixed; boundary=out

--out
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: 8bit

Gr\xfc\xdfe vom Forwarder
--out
Content-Type: message/rfc822

From: inner@example.com
Subject: inner topic

a needle in the inner message
--out--
"""
        + b"padding line to make this one large\n" * 100,
    ),
    (
        9,
        frozenset({"\\Seen", "$label1"}),
        ts(2024, 11, 5, 1),
        (
            "From: eve@example.com\n"
            "To: bob@example.net\n"
            "Subject: Küsse, 8-bit\n"
            "X-Custom: Hello World\n"
            "Date: Wed, 6 Nov 2024 00:30:00 +1400\n"
            "\n"
            "short\n"
        ).encode(),
    ),
]
RECENT = frozenset({7, 9})
RAW = {uid: raw for uid, _, _, raw in MESSAGES}
INFOS = [
    MessageInfo(uid, flags, date, len(to_crlf(raw)), f"key{uid}")
    for uid, flags, date, raw in MESSAGES
]
SCOPE = Scope(largest_seq=len(INFOS), largest_uid=INFOS[-1].uid, tz=UTC)
ALL_UIDS = [i.uid for i in INFOS]


def wire(text: str) -> str:
    """SEARCH arguments as a client sends them: non-ASCII strings as literals under CHARSET
    UTF-8."""

    def literal(m: re.Match[str]) -> str:
        word = m[1] if m[1] is not None else m[2]
        return m[0] if word.isascii() else f"{{{len(word.encode())}}}\r\n{word}"

    sent = re.sub(r'"([^"]*)"|([^\s()]+)', literal, text)
    return sent if text.isascii() else "CHARSET UTF-8 " + sent


def key_of(text: str) -> SearchKey:
    command = parse_command(f"a SEARCH {wire(text)}\r\n".encode())
    assert isinstance(command, Search)
    return command.key


def run(key: SearchKey, scope: Scope = SCOPE) -> list[int]:
    return [c.info.uid for c in search(key, INFOS, scope, RAW.__getitem__, recent_uids=RECENT)]


TABLE = [
    ("ALL", ALL_UIDS),
    ("ANSWERED", [1]),
    ("UNANSWERED", [2, 5, 7, 9]),
    ("DELETED", [5]),
    ("UNDELETED", [1, 2, 7, 9]),
    ("DRAFT", [5]),
    ("UNDRAFT", [1, 2, 7, 9]),
    ("FLAGGED", [2]),
    ("UNFLAGGED", [1, 5, 7, 9]),
    ("SEEN", [1, 9]),
    ("UNSEEN", [2, 5, 7]),
    ("RECENT", [7, 9]),
    ("NEW", [7]),
    ("OLD", [1, 2, 5]),
    ("KEYWORD $Important", [2]),
    ("KEYWORD $important", [2]),
    ("UNKEYWORD $label1", [1, 2, 5, 7]),
    ("KEYWORD nosuch", []),
    ("FROM alice", [1]),
    ("FROM ALICE@EXAMPLE", [1]),
    ("FROM jörg", [2]),
    ('FROM "Jörg"', [2]),
    ("TO alice", [2]),
    ("TO bob", [1, 5, 7, 9]),
    ("CC carol2", [5]),
    ("CC carol", [5]),
    ("BCC dave", [5]),
    ("BCC bob", []),
    ("SUBJECT report", [1]),
    ("SUBJECT GRÜSSE", [2]),
    ('SUBJECT "grüße aus"', [2]),
    ("SUBJECT küsse", [9]),
    ('SUBJECT "inner topic"', []),
    ("HEADER X-Custom world", [9]),
    ('HEADER x-custom ""', [9]),
    ("HEADER Message-ID q1", [1]),
    ('HEADER Cc ""', [5]),
    ('HEADER X-Nope ""', []),
    ("BODY numbers", [1]),
    ("BODY KÄSE", [2]),
    ('BODY "café au lait, softbreak"', [5]),
    ("BODY SECRETWORD", []),
    ("BODY grüße", [7]),
    ("BODY needle", [7]),
    ('BODY "inner topic"', [7]),
    ("BODY report", []),
    ("TEXT report", [1]),
    ("TEXT needle", [7]),
    ("TEXT carol2", [5]),
    ("TEXT zzzz", []),
    # TEXT includes the parts' MIME header fields (RFC 9051 §6.4.4); BODY does not.
    ("TEXT application/pdf", [5]),
    ("BODY application/pdf", []),
    ("LARGER 1000", [7]),
    ("SMALLER 199", [9]),
    ("SMALLER 200", [1, 9]),
    ("LARGER 431", [7]),
    ("NOT LARGER 1000", [1, 2, 5, 9]),
    ("BEFORE 15-Oct-2024", [1]),
    ("ON 15-Oct-2024", [2]),
    ("SINCE 20-Oct-2024", [5, 7, 9]),
    ("SENTBEFORE 2-Oct-2024", [1]),
    ("SENTON 15-Oct-2024", [2]),
    ("SENTON 6-Nov-2024", [9]),
    ("SENTSINCE 1-Jan-2000", ALL_UIDS),
    ("NOT SENTSINCE 1-Jan-2000", []),
    # 5 has no Date:, 7 an unparsable one: their internal dates count (RFC 5256 §2.2).
    ("SENTON 20-Oct-2024", [5]),
    ("SENTSINCE 2-Nov-2024", [7, 9]),
    ("1", [1]),
    ("2:3", [2, 5]),
    ("4:*", [7, 9]),
    ("*", [9]),
    ("1,5", [1, 9]),
    ("UID 5:8", [5, 7]),
    ("UID *", [9]),
    ("UID 3,4,6", []),
    ("UID 1:*", ALL_UIDS),
    ("NOT SEEN", [2, 5, 7]),
    ("OR SEEN FLAGGED", [1, 2, 9]),
    ("OR FROM alice BODY needle", [1, 7]),
    ("(SEEN UNANSWERED)", [9]),
    ("SEEN UNANSWERED", [9]),
    ("NOT (OR DELETED (RECENT SEEN))", [1, 2, 7]),
    ("OR (UID 1:2 NOT FLAGGED) (TO bob LARGER 1000)", [1, 7]),
]


@pytest.mark.parametrize(("query", "expected"), TABLE, ids=[q for q, _ in TABLE])
def test_search_table(query: str, expected: list[int]) -> None:
    assert run(key_of(query)) == expected


class Reads:
    """Counts what a search reads; serves the corpus through the two reader hooks."""

    def __init__(self) -> None:
        self.messages: list[int] = []
        self.headers: list[int] = []

    def message(self, uid: int) -> bytes:
        self.messages.append(uid)
        return RAW[uid]

    def header(self, uid: int) -> bytes:
        self.headers.append(uid)
        return RAW[uid].split(b"\n\n", 1)[0] + b"\n\n"


@pytest.mark.parametrize(
    ("query", "need"),
    [
        ("SEEN", Need.INFO),
        ("OR UID 3 LARGER 5", Need.INFO),
        ("SINCE 1-Jan-2024", Need.INFO),
        ("FROM alice", Need.HEADER),
        ("NOT SENTON 1-Jan-2024", Need.HEADER),
        ("HEADER X-Custom hello SEEN", Need.HEADER),
        ("BODY x", Need.MESSAGE),
        ("OR SEEN TEXT zzz", Need.MESSAGE),
    ],
)
def test_keys_read_only_what_they_need(query: str, need: Need) -> None:
    key = key_of(query)
    assert needed(key) == need
    reads = Reads()
    found = search(key, INFOS, SCOPE, reads.message, recent_uids=RECENT, read_header=reads.header)
    assert [c.info.uid for c in found] == run(key)  # same answers with a header reader
    if need == Need.INFO:
        assert (reads.messages, reads.headers) == ([], [])
    elif need == Need.HEADER:
        assert reads.messages == []
        assert reads.headers
    else:
        assert reads.messages


def test_cheap_keys_are_evaluated_first() -> None:
    reads = Reads()
    found = search(key_of("BODY needle SEEN"), INFOS, SCOPE, reads.message, recent_uids=RECENT)
    assert found == []
    assert reads.messages == [1, 9]  # only the \Seen messages were opened
    reads = Reads()
    search(key_of("OR BODY needle UNSEEN"), INFOS, SCOPE, reads.message, recent_uids=RECENT)
    assert reads.messages == [1, 9]  # UNSEEN already decided the others


def test_each_message_is_read_once_per_search() -> None:
    reads = Reads()
    search(
        key_of("BODY a TEXT b FROM c SUBJECT d OR BODY e TEXT f"),
        INFOS,
        SCOPE,
        reads.message,
        recent_uids=RECENT,
    )
    assert reads.messages == ALL_UIDS


def test_internal_date_uses_the_server_zone() -> None:
    # 2024-10-15 23:30 UTC is already 16 October in UTC+2 (the zone INTERNALDATE shows).
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    shifted = Scope(SCOPE.largest_seq, SCOPE.largest_uid, tz=plus2)
    assert run(key_of("ON 15-Oct-2024")) == [2]
    assert run(key_of("ON 16-Oct-2024"), shifted) == [2]
    assert run(key_of("ON 15-Oct-2024"), shifted) == []


def test_sent_date_is_the_header_date_as_written() -> None:
    # Message 9 was sent "Wed, 6 Nov 2024 00:30:00 +1400", which is 5 November in UTC:
    # SENTON ignores the zone and takes the date as written (RFC 9051 §6.4.4).
    assert run(SearchDate("ON", datetime.date(2024, 11, 6), sent=True)) == [9]
    assert run(SearchDate("ON", datetime.date(2024, 11, 5), sent=True)) == []


def test_message_text_is_total_on_junk() -> None:
    for raw in (
        b"",
        b"\xff\xfe",
        b"Content-Type: text/plain; charset=base64\n\nabc",
        b"Subject: =?x-bogus?q?a?= =?utf-8?b?!!!?=\n\nbody",
        b"Content-Type: text/plain; charset=idna\n\n\xff\xff",
    ):
        text = MessageText(functools.partial(bytes, raw))
        assert isinstance(text.header_text(), str)
        assert isinstance(text.body_text(), str)
        assert all(isinstance(v, str) for v in text.header_values("Subject"))


# -- laws -------------------------------------------------------------------------------------

ATOMS = [
    key_of(q)
    for q in (
        "SEEN",
        "RECENT",
        "DELETED",
        "KEYWORD $Important",
        "FROM example.com",
        "TO bob",
        "SUBJECT e",
        "BODY needle",
        "TEXT café",
        "LARGER 400",
        "SINCE 15-Oct-2024",
        "SENTBEFORE 10-Oct-2024",
        "2:4",
        "UID 5:*",
        'HEADER Date ""',
    )
]

keys = st.recursive(
    st.sampled_from(ATOMS),
    lambda inner: st.one_of(
        inner.map(SearchNot),
        st.tuples(inner, inner).map(lambda p: SearchOr(*p)),
        st.lists(inner, min_size=1, max_size=3).map(lambda ks: SearchAnd(tuple(ks))),
    ),
    max_leaves=8,
)


@given(keys)
def test_not_is_the_complement(key: SearchKey) -> None:
    inside = set(run(key))
    assert set(run(SearchNot(key))) == set(ALL_UIDS) - inside


@given(keys)
def test_planning_keeps_the_meaning(key: SearchKey) -> None:
    for seq, info in enumerate(INFOS, start=1):
        candidate = Candidate(seq, info, info.uid in RECENT)
        text = MessageText(functools.partial(RAW.__getitem__, info.uid))
        assert matches(plan(key), candidate, SCOPE, text) == matches(key, candidate, SCOPE, text)


@given(keys, keys)
def test_or_is_the_union_and_and_the_intersection(a: SearchKey, b: SearchKey) -> None:
    assert set(run(SearchOr(a, b))) == set(run(a)) | set(run(b))
    assert set(run(SearchAnd((a, b)))) == set(run(a)) & set(run(b))


@given(
    st.one_of(
        st.binary(max_size=1500), st.lists(st.sampled_from(FRAGMENTS), max_size=30).map(b"".join)
    )
)
def test_any_message_bytes_evaluate_without_raising(raw: bytes) -> None:
    candidate = Candidate(1, MessageInfo(1, frozenset(), 0.0, len(raw), "k"))
    for key in ATOMS:
        text = MessageText(functools.partial(bytes, raw))
        assert isinstance(matches(key, candidate, SCOPE, text), bool)
        assert matches(SearchNot(key), candidate, SCOPE, text) != matches(
            key, candidate, SCOPE, text
        )


@given(st.text(max_size=6))
def test_text_includes_body(needle: str) -> None:
    body, text = run(SearchText("BODY", needle)), run(SearchText("TEXT", needle))
    assert set(body) <= set(text)


def test_matches_one_message_directly() -> None:
    info = INFOS[0]
    text = MessageText(lambda: RAW[1])
    assert matches(key_of("FROM alice SEEN 1"), Candidate(1, info), SCOPE, text)
    assert not matches(key_of("RECENT"), Candidate(1, info), SCOPE, text)


# -- against Dovecot --------------------------------------------------------------------------

# Where we answer differently on purpose:
# - SUBJECT GRÜSSE finds "Grüße": we fold case with Unicode full case folding (ß ~ ss);
#   Dovecot's i;unicode-casemap does not.
# - BODY "inner topic": the header of an attached message is text in the body; Dovecot
#   searches only the body parts' text.
# - SENTBEFORE 2-Oct-2024: without a usable Date: Dovecot takes 1970-01-01, we take the
#   internal date (RFC 5256 §2.2), so 5 and 7 were not sent before October.
# - SENTSINCE / SENTON rows that involve 5 and 7 differ for the same reason.
KNOWN_DIFFERENCES = {
    "SUBJECT GRÜSSE",
    'BODY "inner topic"',
    "SENTBEFORE 2-Oct-2024",
    "SENTSINCE 1-Jan-2000",
    "NOT SENTSINCE 1-Jan-2000",
    "SENTON 20-Oct-2024",
    "SENTSINCE 2-Nov-2024",
}


@pytest.mark.external
def test_search_answers_match_dovecot() -> None:
    # Dovecot numbers UIDs 1..n and makes every message \Recent on this first SELECT, so
    # rows about UIDs and \Recent are left out; the rest compare by sequence number.
    rows = [
        (q, want)
        for q, want in TABLE
        if not re.search(r"RECENT|NEW|OLD|UID", q) and q not in KNOWN_DIFFERENCES
    ]
    commands = b"".join(
        b"s STORE %d +FLAGS (%s)\r\n" % (seq, " ".join(sorted(flags)).encode())
        for seq, (_, flags, _, _) in enumerate(MESSAGES, 1)
        if flags
    )
    # ESEARCH tags each result: Dovecot runs pipelined SEARCHes concurrently.
    commands += b"".join(
        f"q{i} SEARCH RETURN (ALL) {wire(q)}\r\n".encode() for i, (q, _) in enumerate(rows)
    )
    transcript = run_dovecot(
        [raw for *_, raw in MESSAGES], commands, [date for _, _, date, _ in MESSAGES]
    )
    theirs: dict[int, list[int]] = {}
    for line in transcript.split(b"\r\n"):
        if (m := re.match(rb'\* ESEARCH \(TAG "q(\d+)"\)(?: ALL (\S+))?\Z', line)) is not None:
            found = parse_sequence_set(m[2].decode()).expand(len(MESSAGES)) if m[2] else []
            theirs[int(m[1])] = list(found)
    assert len(theirs) == len(rows), transcript.decode(errors="replace")
    seq_of = {uid: seq for seq, uid in enumerate(ALL_UIDS, start=1)}
    for i, (query, want) in enumerate(rows):
        assert theirs[i] == [seq_of[u] for u in want], query


# -- the header prefilter (MessageText.header_may_contain) -------------------------------------

HEADER_PIECES = [
    b"Subject: ",
    b"From: ",
    b"X-A: ",
    b"hello",
    b"World",
    b" ",
    b"\t",
    b"\r\n ",
    b"\n\t",
    b"\r\n",
    b"=?utf-8?q?W=C3=B6rld?=",
    b"=?iso-8859-1?b?SGVsbG8=?=",
    b"caf\xc3\xa9",
    b"wor",
    b"ld",
    b"HELLO",
]


@given(
    st.lists(st.sampled_from(HEADER_PIECES), max_size=25).map(b"".join),
    st.sampled_from(["Subject", "From", "X-A"]),
    st.text(alphabet="helowrdHWLé \t", min_size=1, max_size=8),
)
def test_header_prefilter_never_changes_an_answer(header: bytes, field: str, needle: str) -> None:
    raw = header + b"\r\n\r\nbody hello world\r\n"
    key = SearchHeader(field, needle)
    candidate = Candidate(1, MessageInfo(1, frozenset(), 0.0, len(raw), "k"))
    whole = MessageText(functools.partial(bytes, raw))  # no header reader: no prefilter
    split = MessageText(
        functools.partial(bytes, raw),
        functools.partial(bytes, raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"),
    )
    assert matches(key, candidate, SCOPE, split) == matches(key, candidate, SCOPE, whole)


def test_header_prefilter_skips_parsing_and_sees_folded_values() -> None:
    header = b"Subject: hello\r\n world\r\nFrom: a@example.org\r\n\r\n"
    text = MessageText(lambda: header, lambda: header)
    assert not text.header_may_contain("zebra")
    assert text._header is None  # decided without parsing the fields
    assert text.header_may_contain("hello world")  # unfolded across the line break
    encoded = MessageText(lambda: b"", lambda: b"Subject: =?utf-8?q?zebra?=\r\n\r\n")
    assert encoded.header_may_contain("zebra")  # cannot tell without decoding
