"""Stored header fields (imap/header_index.py, delivery/index_headers.py).

- Header SEARCH answered from stored fields gives the answers of search.py over the files
  (the test_search.py table), reads no message once the rows are filled, and gives them again
  after the index file was deleted (rows refilled from the files).
- BODY.PEEK[HEADER.FIELDS (...)] from stored fields is byte-identical to Dovecot's answer and
  to our own answer cut from the file, for messages with LF and CRLF line ends, folded and
  repeated fields, odd case, 8-bit text and no body.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mailstack.delivery import maildir_messages
from mailstack.delivery.index_db import INDEX_FILE
from mailstack.delivery.index_headers import HeaderTable
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import INBOX, MessageGoneError, MessageInfo
from mailstack.imap import header_index, response, session_fetch
from mailstack.imap.cache import CACHE_FILE
from mailstack.imap.commands import Fetch, FetchAttr, SearchHeader
from mailstack.imap.fetch import ParsedMessage, fetch_item
from mailstack.imap.mime import to_crlf
from mailstack.imap.parser import parse_command
from mailstack.imap.search import Scope, search

from mailstack.base import parallel
from tests.imap.rawclient import RawClient
from tests.imap.test_fetch import fetch_values, responses, run_dovecot
from tests.imap.test_search import MESSAGES, TABLE, key_of
from tests.imap.test_structure_cache import CountingStore
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    make_deployment,
    running_server,
)


def store_with_corpus(tmp_path: Path) -> tuple[CountingStore, Path]:
    """The test_search.py corpus as files another program left in cur/ (flags in the names,
    internal dates as mtimes), served by a real store that counts its reads."""
    dep = make_deployment(tmp_path / "state")
    store = CountingStore(dep.paths, dep.events, hostname="mail.example.com")
    root = dep.paths.maildir(USER)
    letters = {"\\Seen": "S", "\\Answered": "R", "\\Flagged": "F", "\\Deleted": "T"}
    for i, (_, flags, date, raw) in enumerate(MESSAGES):
        info = "".join(sorted(letters[f] for f in flags if f in letters))
        path = root / "cur" / f"{1_700_000_000 + i}.M{i}P1.test:2,{info}"
        path.write_bytes(raw)
        os.utime(path, (date, date))
    return store, root


def stored(store: MaildirStore, query: str) -> list[int] | None:
    """Sequence numbers SEARCH finds from stored fields (None: not answered from them)."""
    snap = store.snapshot(USER, INBOX)
    key = key_of(query)
    scope = Scope(len(snap.messages), snap.messages[-1].uid, tz=datetime.UTC)
    found = header_index.search_stored(
        store, USER, INBOX, key, list(snap.messages), scope, frozenset()
    )
    return None if found is None else [c.seq for c in found]


def from_files(store: MaildirStore, query: str) -> list[int]:
    snap = store.snapshot(USER, INBOX)
    scope = Scope(len(snap.messages), snap.messages[-1].uid, tz=datetime.UTC)

    def read(uid: int) -> bytes:
        try:
            return store.read_message(USER, INBOX, uid)
        except MessageGoneError:
            return b""

    return [c.seq for c in search(key_of(query), list(snap.messages), scope, read)]


ANSWERED = [(q, want) for q, want in TABLE if header_index.answers(key_of(q))]
SEQ_OF = {uid: seq for seq, (uid, *_) in enumerate(MESSAGES, start=1)}


def test_the_table_has_stored_field_rows() -> None:
    # The keys below must stay covered: FROM/TO/CC/BCC, SUBJECT, HEADER of indexed names, SENT*.
    queries = {q.split()[0] for q, _ in ANSWERED}
    assert {"FROM", "TO", "CC", "BCC", "SUBJECT", "HEADER", "SENTON", "NOT", "OR"} <= queries
    assert not header_index.answers(key_of("HEADER X-Custom world"))  # not an indexed name
    assert not header_index.answers(key_of("OR FROM alice BODY needle"))  # reads bodies
    assert not header_index.answers(key_of("SEEN"))  # reads no header at all


@pytest.mark.parametrize(("query", "expected"), ANSWERED, ids=[q for q, _ in ANSWERED])
def test_stored_fields_answer_like_the_files(tmp_path: Path, query: str, expected: list) -> None:  # type: ignore[type-arg]
    store, root = store_with_corpus(tmp_path)
    want = [SEQ_OF[u] for u in expected]
    assert from_files(store, query) == want
    assert stored(store, query) == want  # fills the rows
    reads = store.header_reads
    assert stored(store, query) == want
    assert store.header_reads == reads  # answered without reading a message
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / INDEX_FILE}{suffix}").unlink(missing_ok=True)
    fresh = CountingStore(store._paths, hostname="mail.example.com")  # another process
    assert stored(fresh, query) == want  # refilled from the files
    assert stored(fresh, query) == want
    assert fresh.header_reads == len(MESSAGES)


def test_stale_rows_never_answer(tmp_path: Path) -> None:
    """A row whose base name is not the message's (another UIDVALIDITY's) counts as missing."""
    store, root = store_with_corpus(tmp_path)
    assert stored(store, "SUBJECT report") == [1]
    with sqlite3.connect(root / INDEX_FILE) as db:
        db.execute("UPDATE headers SET base = 'other' WHERE uid = 1")
        db.execute(
            "UPDATE headers SET raw = CAST('Subject: report' || x'0d0a' AS BLOB),"
            " plain = 'subject: report' WHERE uid = 2"
        )
    db.close()
    reads = store.header_reads
    # UID 2's row claims "report" but is current; UID 1's is stale and re-read from the file.
    assert stored(store, "SUBJECT report") == [1, 2]
    assert store.header_reads == reads + 1


# -- BODY[HEADER.FIELDS] against Dovecot -------------------------------------------------------

FIELDS_CORPUS = [
    b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: plain CRLF\r\n"
    b"Date: Mon, 5 Feb 2024 10:00:00 +0000\r\nMessage-ID: <a@example.com>\r\n\r\nbody\r\n",
    b"Received: from x\nfrom: lower case <l@example.org>\nSUBJECT: folded\n  over\tlines\n"
    b"To: one@example.org,\n two@example.org\nTo: again@example.org\nX-Other: skip me\n"
    b"References: <r1@example.org>\n <r2@example.org>\nCc: =?utf-8?q?J=C3=B6rg?= <j@e.de>\n"
    b"\nLF body\n",
    "Subject: 8-bit Grüße\nFrom: ünï@example.org\n\nbody\n".encode(),
    b"Subject: no body at all\r\nFrom: x@example.org\r\n",
    b"Subject:\r\nFrom: empty-subject@example.org\r\nMessage-ID:<tight@example.org>\r\n\r\n.\r\n",
]
FIELDS = "From To Cc Subject Date Message-ID References"
COMMANDS = [
    "ENVELOPE",
    f"BODY.PEEK[HEADER.FIELDS ({FIELDS})]",
    "BODY.PEEK[HEADER.FIELDS (subject)]<0.12>",
    "BODY.PEEK[HEADER.FIELDS (To)]",
]


def literals(transcript: bytes) -> dict[tuple[int, bytes], bytes]:
    """(sequence number, BODY[...] or ENVELOPE) -> its value, from every FETCH response."""
    out: dict[tuple[int, bytes], bytes] = {}
    for line in responses(transcript):
        if (m := re.match(rb"\* (\d+) FETCH ", line)) is not None:
            for name, value in fetch_values(m[1] + b" " + line[m.end() :]).items():
                if name.startswith(b"BODY[") or name == b"ENVELOPE":
                    out[(int(m[1]), name.upper())] = value
    return out


@pytest.fixture
def fields_dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store = CountingStore(dep.paths, dep.events, hostname="mail.example.com")
    root = dep.paths.maildir(USER)
    for i, raw in enumerate(FIELDS_CORPUS, 1):
        (root / "new" / f"{1_700_000_000 + i}.M{i}P1.test").write_bytes(raw)
    return dep


def ours(dep: ImapDeployment, items: str, *, utf8: bool = False) -> bytes:
    with running_server(dep) as server, RawClient("127.0.0.1", server.imap_port) as client:
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        if utf8:  # 8-bit header fields as stored, not downgraded (imap/downgrade.py)
            assert client.tagged("ENABLE UTF8=ACCEPT").startswith(b"OK")
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        client.send(f"f FETCH 1:* ({items})\r\n".encode())
        lines = client.until_tagged(b"f")
    assert lines[-1].startswith(b"f OK"), lines
    return b"".join(lines)


def test_header_fields_are_byte_identical_to_the_file(fields_dep: ImapDeployment) -> None:
    store = fields_dep.store
    assert isinstance(store, CountingStore)
    items = " ".join(COMMANDS)
    cut = literals(ours(fields_dep, items + " BODY.PEEK[TEXT]"))  # from the files
    assert store.reads == len(FIELDS_CORPUS)
    first = literals(ours(fields_dep, items))  # stored rows filled
    again = literals(ours(fields_dep, items))  # from stored rows only
    assert store.reads == len(FIELDS_CORPUS)
    assert store.header_reads == len(FIELDS_CORPUS)
    wanted = {k: v for k, v in cut.items() if not k[1].startswith(b"BODY[TEXT]")}
    assert first == again == wanted
    assert len(wanted) == len(FIELDS_CORPUS) * len(COMMANDS)


@pytest.mark.external
def test_header_fields_match_dovecot(fields_dep: ImapDeployment) -> None:
    items = " ".join(COMMANDS)
    # Dovecot 2.3 sends 8-bit header fields as they are to every client; we do so only after
    # ENABLE UTF8=ACCEPT (and downgrade them for other clients).
    mine = literals(ours(fields_dep, items, utf8=True))
    mine = literals(ours(fields_dep, items, utf8=True))  # the second from stored rows
    transcript = run_dovecot(FIELDS_CORPUS, f"f FETCH 1:* ({items})\r\n".encode())
    theirs = literals(transcript)
    assert set(mine) == set(theirs)
    # Known and older than stored rows: Dovecot joins repeated To: fields in ENVELOPE, ours
    # shows the first (imap/envelope.py), read from the file or not.
    del theirs[(2, b"ENVELOPE")]
    for key in sorted(theirs):
        assert mine[key] == theirs[key], key


# -- the SQL pre-filter never drops a match -----------------------------------------------------

PIECES = [
    b"Subject: ",
    b"From: ",
    b"To: ",
    b"Cc: ",
    b"Content-Type: ",
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
    b"<h@w.org>",
    b'"w o" <w@o>',
    b"(com ment)",
    b"hel @ lo",
]


def test_other_fields_do_not_make_an_address_search_read_the_file() -> None:
    # A quoted MIME boundary is no reason to doubt the From field's stored text.
    header = b'From: Ann <ann@example.org>\r\nContent-Type: multipart/mixed; boundary="b1"\r\n'
    assert header_index.make_row(1, "k1", header + b"\r\n").exact
    quoted = b'From: "Ann" <ann@example.org>\r\nSubject: hi\r\n'
    assert not header_index.make_row(1, "k1", quoted + b"\r\n").exact


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(PIECES), max_size=25).map(b"".join),
    st.sampled_from([("Subject", False), ("From", True), ("To", True), ("From", False)]),
    st.text(alphabet="helowrdHWL@<>. \t", min_size=1, max_size=8),
)
@example(b"Subject: =?iso-8859-1?b?SGVsbG8=?=", ("Subject", False), "hello")  # encoded: NULL
@example(b"From: (com ment) hel @ lo", ("From", True), "hel@lo")  # parsing joins the address
@example(b"From: Subject: Subject: ", ("From", True), "@")  # parsing adds @MISSING_DOMAIN
@example(b"To: a@b, hello", ("To", True), "missing")
def test_prefilter_keeps_every_match(header: bytes, field: tuple[str, bool], needle: str) -> None:
    raw = header + b"\r\n\r\nbody\r\n"
    key = SearchHeader(field[0], needle, address=field[1])
    info = MessageInfo(1, frozenset(), 0.0, len(raw), "k1")
    scope = Scope(1, 1)
    expected = bool(search(key, [info], scope, lambda _uid: raw))
    with tempfile.TemporaryDirectory() as tmp:
        sqlite3.connect(Path(tmp) / INDEX_FILE).close()
        table = HeaderTable(Path(tmp))
        table.put([header_index.make_row(1, "k1", raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")])
        got = table.candidates([(1, "k1")], header_index.terms(key))
        table.close()
    assert got is not None
    hits, unknown = got
    assert not unknown
    if expected:
        assert 1 in hits, (header, key)
        # ... and the stored lines decide exactly as the file does.
        assert search(key, [info], scope, lambda _uid: b"", read_header=hits.get)  # type: ignore[arg-type]


FIELD_PIECES = [
    b"From: a@b\r\n",
    b"from :x\r\n",
    b"TO: c@d\r\n",
    b"Reply-To: r@s\r\n",
    b"X-To: no\r\n",
    b"Subject: hi\r\n",
    b"Subject: folded\r\n there\r\n\tand here\r\n",
    b"Cc:\r\n \r\n",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\n",
    b"References: <a@b>\r\n <c@d>\r\n",
    b"Message-ID: <m\r@x>\r\n",
    b"List-Id: caf\xc3\xa9 <l.x>\r\n",
    b" leading continuation\r\n",
    b"To:tight\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(FIELD_PIECES), max_size=12).map(b"".join),
    st.lists(
        st.sampled_from(["From", "to", "CC", "Subject", "Date", "Reply-To", "references"]),
        min_size=1,
        max_size=4,
        unique=True,
    ),
)
def test_header_fields_from_stored_lines_are_those_of_the_file(
    header: bytes, names: list[str]
) -> None:
    # fields_item() picks the named fields out of stored lines without parsing them into
    # fields; whatever the header, it must answer what the whole message's parse answers.
    raw = header + b"\r\nbody\r\n"
    command = parse_command(
        b"t FETCH 1 (BODY.PEEK[HEADER.FIELDS (" + " ".join(names).encode() + b")])\r\n"
    )
    assert isinstance(command, Fetch)
    (attr,) = command.attrs
    row = header_index.make_row(1, "k1", raw.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
    from_file = fetch_item(attr, ParsedMessage.parse(to_crlf(raw)))
    assert header_index.fields_item(attr, row.raw) == from_file


def test_sessions_filling_one_folder_at_once_read_each_header_once(tmp_path: Path) -> None:
    """Eight sessions opening a folder nobody indexed yet, at the same moment: the rows are
    filled once (the others wait and find them), not eight times over (which also held
    eight folders' rows in memory at once)."""
    dep = make_deployment(tmp_path / "state")
    store = CountingStore(dep.paths, dep.events, hostname="mail.example.com")
    root = dep.paths.maildir(USER)
    for i in range(2 * header_index.READ_BATCH + 7):
        (root / "cur" / f"{1_700_000_000 + i}.M{i}P1.test:2,S").write_bytes(
            b"From: a%d@example.org\r\nSubject: s%d\r\n\r\nbody\r\n" % (i, i)
        )
    messages = store.snapshot(USER, INBOX).messages
    start = threading.Barrier(8)
    failures: list[BaseException] = []

    def session() -> None:
        try:
            start.wait()
            header_index.ensure(store, USER, INBOX, messages, envelopes=True)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=session) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert store.header_reads == len(messages)
    rows = store.header_index(USER, INBOX).get([(m.uid, m.key) for m in messages])
    assert len(rows) == len(messages) and all(env for _, env in rows.values())


def sort_lines(dep: ImapDeployment, commands: list[str]) -> list[bytes]:
    with running_server(dep) as server, RawClient("127.0.0.1", server.imap_port) as client:
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        out = []
        for command in commands:
            lines = client.command(command)
            assert lines[-1].split(b" ")[1] == b"OK", lines
            out += [x for x in lines if x.startswith((b"* SORT", b"* THREAD"))]
    return out


def test_sort_and_thread_use_stored_rows(fields_dep: ImapDeployment) -> None:
    store = fields_dep.store
    assert isinstance(store, CountingStore)
    commands = [
        "SORT (SUBJECT) UTF-8 ALL",
        "SORT (REVERSE FROM DATE) UTF-8 ALL",
        "SORT (TO) UTF-8 SUBJECT o",
        "THREAD REFERENCES UTF-8 ALL",
    ]
    other = ["SORT (SUBJECT) UTF-8 HEADER X-Other skip"]  # not a stored field: files decide
    first = sort_lines(fields_dep, commands)
    assert store.header_reads == len(FIELDS_CORPUS)  # the rows, filled once
    assert sort_lines(fields_dep, commands) == first
    assert store.header_reads == len(FIELDS_CORPUS)
    assert sort_lines(fields_dep, other) == [b"* SORT 2\r\n"]
    assert store.reads == 0


def test_envelope_is_added_to_rows_a_search_filled(fields_dep: ImapDeployment) -> None:
    """SEARCH fills rows without ENVELOPE; the first FETCH ENVELOPE renders it from the
    stored lines (no file read) and stores it."""
    store = fields_dep.store
    assert isinstance(store, CountingStore)
    from_files = literals(ours(fields_dep, "ENVELOPE BODY.PEEK[TEXT]"))
    assert sort_lines(fields_dep, ["SORT (SUBJECT) UTF-8 SUBJECT o"])
    assert store.header_reads == len(FIELDS_CORPUS)
    root = fields_dep.paths.maildir(USER)
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM headers WHERE envelope IS NULL").fetchone() == (
            len(FIELDS_CORPUS),
        )
    db.close()
    envelopes = {k: v for k, v in from_files.items() if k[1] == b"ENVELOPE"}
    assert literals(ours(fields_dep, "ENVELOPE")) == envelopes
    assert store.header_reads == len(FIELDS_CORPUS)
    assert store.reads == len(FIELDS_CORPUS)  # only the BODY[TEXT] fetch read files
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM headers WHERE envelope IS NULL").fetchone() == (0,)
    db.close()


def test_a_fetch_renders_envelopes_of_old_rows_and_fills_new_ones(
    fields_dep: ImapDeployment,
) -> None:
    """Rows a SEARCH filled (no ENVELOPE) and messages with no row yet, in one FETCH: the
    fill renders the new rows' ENVELOPE and the old rows get theirs from the stored lines."""
    root = fields_dep.paths.maildir(USER)
    assert sort_lines(fields_dep, ["SORT (SUBJECT) UTF-8 SUBJECT o"])  # rows, no ENVELOPE
    later = FIELDS_CORPUS[:2]
    for i, raw in enumerate(later, len(FIELDS_CORPUS) + 1):
        (root / "new" / f"{1_700_000_000 + i}.M{i}P1.test").write_bytes(raw)
    from_files = literals(ours(fields_dep, "ENVELOPE BODY.PEEK[TEXT]"))
    envelopes = {k: v for k, v in from_files.items() if k[1] == b"ENVELOPE"}
    assert len(envelopes) == len(FIELDS_CORPUS) + len(later)
    assert literals(ours(fields_dep, "ENVELOPE")) == envelopes
    with sqlite3.connect(root / INDEX_FILE) as db:
        assert db.execute("SELECT count(*) FROM headers WHERE envelope IS NULL").fetchone() == (0,)
    db.close()


ENVELOPE_PIECES = [
    b"From: Ann <ann@example.org>\r\n",
    b'from: b@c, "D, E" <d@e>\r\n',
    b"Sender:\r\n",
    b"Sender: s@x\r\n",
    b"Reply-To: g: a@b, c@d;\r\n",
    b"To: caf\xc3\xa9 <x@y>\r\n",
    b"Cc: \xff@x\r\n",
    b"Bcc: (c) <@r,@s:u@v>\r\n",
    b"Subject: folded\r\n  there\r\n\tand\there\r\n",
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\n",
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n",
    b'Message-ID: <m"q\\@x>\r\n',
    b"In-Reply-To: a\x00b\r\n",
    b"In-Reply-To: \xc3\x28\r\n",
    b"X-Other: 1\r\n",
]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(ENVELOPE_PIECES), max_size=14).map(b"".join))
def test_envelope_of_stored_fields_is_the_parsed_message_envelope(header: bytes) -> None:
    # make_row renders ENVELOPE from the fields straight to bytes; a client must get what
    # the whole message's parse (the value tree of imap/envelope.py) renders.
    row = header_index.make_row(1, "k1", header + b"\r\n", with_envelope=True)
    parsed = ParsedMessage.parse(header + b"\r\nbody\r\n")
    from_file = response.value(fetch_item(FetchAttr("ENVELOPE"), parsed))
    assert row.envelope == from_file
    assert header_index.render_envelope(row.raw) == from_file


def test_a_first_header_fetch_reads_each_file_once_for_rows_and_sizes(
    fields_dep: ImapDeployment,
) -> None:
    # The client header fetch of a folder nobody indexed (a client without UTF8=ACCEPT, so
    # RFC822.SIZE is the downgraded size): the rows and the sizes come from one read of
    # each file, and the sizes are those a later FETCH gives from the cache alone.
    store = fields_dep.store
    assert isinstance(store, CountingStore)
    items = "RFC822.SIZE ENVELOPE BODY.PEEK[HEADER.FIELDS (From Subject)]"
    first = ours(fields_dep, items)
    assert store.reads == len(FIELDS_CORPUS)
    assert store.header_reads == 0
    sizes = re.findall(rb"RFC822\.SIZE (\d+)", first)
    assert len(sizes) == len(FIELDS_CORPUS)
    again = ours(fields_dep, "RFC822.SIZE")
    assert store.reads == len(FIELDS_CORPUS)  # sizes remembered, no file read again
    assert re.findall(rb"RFC822\.SIZE (\d+)", again) == sizes
    # ... and they are the sizes of what BODY[] gives this client.
    whole = ours(fields_dep, "BODY.PEEK[]")
    assert [b"%d" % int(n) for n in re.findall(rb"BODY\[\] \{(\d+)\}", whole)] == sizes


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from(ENVELOPE_PIECES), max_size=14).map(b"".join),
    st.sampled_from([b"body\r\n", b"", b"--x\r\nSubject: inner\r\n\r\n--x--\r\n"]),
)
def test_envelope_of_a_whole_message_from_its_header(header: bytes, body: bytes) -> None:
    # FETCH ENVELOPE with BODY[] takes ENVELOPE from the header of the bytes in hand.
    data = header + b"\r\n" + body
    parsed = ParsedMessage.parse(data)
    expected = response.value(fetch_item(FetchAttr("ENVELOPE"), parsed))
    assert header_index.message_envelope(parsed.data) == expected


def corpus_dep(state: Path) -> ImapDeployment:
    dep = make_deployment(state)
    root = dep.paths.maildir(USER)
    for copy in range(3):  # a few dozen messages: several batches and parts
        for i, raw in enumerate(FIELDS_CORPUS, 1):
            n = copy * 100 + i
            path = root / "new" / f"{1_700_000_000 + n}.M{n}P1.test"
            path.write_bytes(raw)
            os.utime(path, (1_700_000_000 + n, 1_700_000_000 + n))  # INTERNALDATE
    return dep


def stored_rows(dep: ImapDeployment) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The header rows and the structure cache's size rows, as stored."""
    root = dep.paths.maildir(USER)
    with contextlib.closing(sqlite3.connect(root / INDEX_FILE)) as db:
        rows = db.execute("SELECT * FROM headers ORDER BY uid").fetchall()
    with contextlib.closing(sqlite3.connect(root / CACHE_FILE)) as db:
        sizes = db.execute("SELECT * FROM structure WHERE key LIKE '%:size' ORDER BY key")
        return rows, sizes.fetchall()


def test_rows_filled_in_workers_and_ahead_are_the_ones_filled_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first header fetch of a big folder fills rows in worker processes, a part ahead of
    the batches it renders (imap/session_fetch.py `_FillAhead`). Made small here, the
    answer and every stored row must be what filling it all in this process gives."""
    items = "UID RFC822.SIZE FLAGS INTERNALDATE " + " ".join(COMMANDS)
    here = corpus_dep(tmp_path / "here")
    answer_here = ours(here, items)
    assert parallel.POOL.pids() == []  # 24 messages: below PARALLEL_MIN
    monkeypatch.setattr(maildir_messages, "PARALLEL_MIN", 1)
    monkeypatch.setattr(maildir_messages, "MAP_BATCH", 2)
    monkeypatch.setattr(session_fetch, "FILL_FIRST", 3)
    monkeypatch.setattr(session_fetch, "FILL_AHEAD", 5)
    away = corpus_dep(tmp_path / "away")
    try:
        answer_away = ours(away, items)
        assert len(parallel.POOL.pids()) == parallel.POOL.workers > 0  # they did the work
    finally:
        parallel.POOL.close()
    assert answer_away == answer_here
    rows_here, sizes_here = stored_rows(here)
    rows_away, sizes_away = stored_rows(away)
    assert len(rows_here) == 3 * len(FIELDS_CORPUS)
    assert len(sizes_here) == 3 * len(FIELDS_CORPUS)
    # The same rows but for the base names (each deployment's messages got their own).
    assert [r[:1] + r[2:] for r in rows_away] == [r[:1] + r[2:] for r in rows_here]
    assert [r[1:] for r in sizes_away] == [r[1:] for r in sizes_here]


def test_header_rows_are_not_fsynced_at_every_commit(tmp_path: Path) -> None:
    """The rows are a cache: the table's own connection must not fsync the WAL at every
    commit (SQLite's default, FULL, for each connection that does not say otherwise)."""
    dep = corpus_dep(tmp_path / "state")
    ours(dep, "ENVELOPE")
    table = dep.store.header_index(USER, INBOX)
    assert isinstance(table, HeaderTable)
    db = table._connect()
    assert db is not None
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
