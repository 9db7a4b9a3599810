"""The full-text pre-filter (delivery/fulltext.py) as SEARCH uses it (imap/session_select.py).

The one law: with the pre-filter, SEARCH answers exactly what a scan of every message answers.
Checked on a generated corpus in mixed charsets (UTF-8, ISO-8859-1/-7, windows-1251/-1252) and
transfer encodings (7bit, quoted-printable with soft breaks inside words, base64), HTML parts
and named attachments: in-process against the brute-force `search.search` for random needles
(hypothesis), and over the wire on a running server, cold (the index fills), warm, and after a
restart, with the store counting how many messages each search reads.
"""

from __future__ import annotations

import random
import sqlite3
import stat
from email.message import EmailMessage
from email.policy import SMTP
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.delivery.fulltext import FILE_NAME, FolderText, trigram_query
from mailstack.delivery.store import INBOX, MessageInfo
from mailstack.imap.commands import SearchAnd, SearchHeader, SearchKey, SearchText
from mailstack.imap.search import MessageText, Scope, html_text, required_texts, search

from mailstack.base.flags import FlagMode
from tests.imap.rawclient import RawClient
from tests.imap.test_structure_cache import CountingStore
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

WORDS = [
    "report", "invoice", "meeting", "Käse", "Grüße", "Straße", "Ελλάδα", "Москва", "naïve",
    "café", "œuvre", "€uro", "deadline", "Übermorgen", "ΣΊΣΥΦΟΣ", "привет", "zebra", "quartz",
]  # fmt: skip
CHARSETS = {
    "utf-8": WORDS,
    "iso-8859-1": [w for w in WORDS if w.isascii() or all(ord(c) < 256 for c in w)],
    "iso-8859-7": [w for w in WORDS if w.isascii() or w in ("Ελλάδα", "ΣΊΣΥΦΟΣ")],
    "windows-1251": [w for w in WORDS if w.isascii() or w in ("Москва", "привет")],
    "windows-1252": [w for w in WORDS if w.isascii() or w in ("café", "œuvre", "€uro", "naïve")],
}
N_MESSAGES = 160  # above imap/session_select.FULLTEXT_MIN: the server uses the index


def make_message(rng: random.Random, n: int) -> bytes:
    charset = rng.choice(sorted(CHARSETS))
    words = CHARSETS[charset]
    body = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + f" serial{n:04d}\n"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = f"Sender {n} <s{n}@example.org>"
    msg["To"] = "alice@example.com"
    msg["Subject"] = f"{rng.choice(WORDS)} number {n}"
    msg["Date"] = "Mon, 5 Feb 2024 10:00:00 +0000"
    cte = rng.choice(["quoted-printable", "base64", "8bit"])
    if rng.random() < 0.3:
        markup = f"<html><body><p><b>{rng.choice(words)}</b> {body}</p></body></html>"
        msg.set_content(markup, subtype="html", charset=charset, cte=cte)
    else:
        msg.set_content(body, charset=charset, cte=cte)
    if rng.random() < 0.25:
        name = rng.choice(["Grüße-Anhang.pdf", "plan quarterly.xlsx", "Ελλάδα.txt"])
        msg.add_attachment(b"%PDF binary \x00\x01 data", maintype="application",
                           subtype="octet-stream", filename=name)  # fmt: skip
    return msg.as_bytes()


_RNG = random.Random(7)
CORPUS = [make_message(_RNG, n) for n in range(N_MESSAGES)]
TERMS = [
    "report", "käse", "GRÜSSE", "straße", "ελλάδα", "москва", "€uro", "serial0042", "serial01",
    "bold", "html", "grüße-anhang", "quarterly.xlsx", "ber", "zebra quartz", "number 15",
    "nothing-like-this", "ab", "ca",
]  # fmt: skip


def infos() -> list[MessageInfo]:
    return [MessageInfo(i + 1, frozenset(), 0.0, len(m), f"k{i}") for i, m in enumerate(CORPUS)]


def scan(key: SearchKey, only: set[int] | None = None) -> list[int]:
    def read(uid: int) -> bytes:
        return CORPUS[uid - 1]

    found = search(key, infos(), Scope(N_MESSAGES, N_MESSAGES), read, only_uids=only)
    return [c.info.uid for c in found]


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> FolderText:
    text = FolderText(tmp_path_factory.mktemp("fts"))
    text.add(1, [(i + 1, MessageText(lambda m=m: m).fulltext()) for i, m in enumerate(CORPUS)])
    return text


def prefiltered(index: FolderText, key: SearchKey) -> list[int]:
    hits = index.candidates(1, required_texts(key))
    return scan(key, hits)


def test_trigram_query() -> None:
    assert trigram_query("ab") is None
    assert trigram_query("abcd") == '"abc" AND "bcd"'
    assert trigram_query('a"bc"') == '"a""b" AND """bc" AND "bc"""'
    assert trigram_query("aaaa") == '"aaa"'  # each trigram once


@pytest.mark.parametrize("term", TERMS)
@pytest.mark.parametrize("where", ["BODY", "TEXT"])
def test_prefilter_gives_the_scans_answer(indexed: FolderText, term: str, where: str) -> None:
    key = SearchText(where, term)
    expected = scan(key)
    assert prefiltered(indexed, key) == expected
    hits = indexed.candidates(1, required_texts(key))
    if len(term) >= 3:
        assert hits is not None and len(hits) <= N_MESSAGES
        if term == "nothing-like-this":
            assert hits == set()
    else:
        assert hits is None  # too short for a trigram: the caller scans


def test_html_attachment_names_and_charsets_are_searchable() -> None:
    assert scan(SearchText("TEXT", "grüße-anhang")), "attachment names (RFC 2231) searchable"
    assert scan(SearchText("BODY", "ελλάδα")), "ISO-8859-7 decoded"
    assert scan(SearchText("BODY", "москва")), "windows-1251 decoded"
    assert html_text("<p>two <b>bold</b>&amp;words</p><script>x()</script>") == "two bold&words"


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    uid=st.integers(1, N_MESSAGES),
    start=st.integers(0, 4000),
    length=st.integers(1, 12),
    where=st.sampled_from(["BODY", "TEXT"]),
    other=st.sampled_from(["", "serial", "ber", "zebra"]),
)
def test_random_needles_give_the_scans_answer(
    indexed: FolderText, uid: int, start: int, length: int, where: str, other: str
) -> None:
    text = MessageText(lambda: CORPUS[uid - 1]).fulltext()
    start %= max(1, len(text))
    needle = text[start : start + length]
    key: SearchKey = SearchText(where, needle)
    if other:  # an AND of two text keys: both must be in every candidate
        key = SearchAnd((key, SearchText("BODY", other), SearchHeader("From", "sender")))
    assert prefiltered(indexed, key) == scan(key)


def test_uidvalidity_change_empties_the_index(tmp_path: Path) -> None:
    text = FolderText(tmp_path)
    text.add(1, [(1, "alpha beta"), (2, "gamma")])
    assert text.candidates(1, ["beta"]) == {1}
    assert text.indexed(2, {1, 2}) == set()  # another UIDVALIDITY: nothing is known
    assert text.candidates(2, ["beta"]) == set()
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600


def test_expunged_rows_are_never_answered_and_rows_are_not_reused(tmp_path: Path) -> None:
    text = FolderText(tmp_path)
    text.add(1, [(1, "alpha"), (2, "beta"), (3, "alpha beta")])
    assert text.indexed(1, {2, 3}) == {2, 3}  # UID 1 expunged
    assert text.candidates(1, ["alpha"]) == {3}
    text.add(1, [(4, "delta")])  # a new row must not inherit UID 1's trigrams
    assert text.candidates(1, ["alpha"]) == {3}
    assert text.candidates(1, ["delta"]) == {4}


def test_mostly_dead_index_starts_over(tmp_path: Path) -> None:
    text = FolderText(tmp_path)
    text.add(1, [(uid, f"word{uid}") for uid in range(1, 2002)])
    assert text.indexed(1, {2001}) == set()  # 2000 dead rows > max(1000, 1 live): rebuilt
    assert text.candidates(1, ["word2001"]) == set()
    text.add(1, [(2001, "word2001")])
    assert text.candidates(1, ["word2001"]) == {2001}


def test_corrupt_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    text = FolderText(tmp_path)
    assert text.indexed(1, {1}) == set()
    text.add(1, [(1, "alpha")])
    assert text.candidates(1, ["alpha"]) == {1}
    assert (tmp_path / (FILE_NAME.removesuffix(".sqlite3") + ".corrupt")).exists()


# -- over the wire -------------------------------------------------------------------------------
@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    dep = make_deployment(tmp_path / "state")
    dep.store = CountingStore(dep.paths, dep.events, hostname="mail.example.com")
    for message in CORPUS:
        dep.store.deliver([(USER, INBOX)], message)
    return dep


def uid_search(server: ImapServerThread, criteria: str) -> list[int]:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        lines = client.command(f"UID SEARCH CHARSET UTF-8 {criteria}".encode())
    assert lines[-1].split(b" ")[1] == b"OK", lines
    found = [line for line in lines if line.startswith(b"* SEARCH")]
    return [int(n) for n in found[0].split()[2:]]


def literal(term: str) -> str:
    data = term.encode()
    return "{" + str(len(data)) + "+}\r\n" + term


WIRE_TERMS = ["serial0042", "käse", "москва", "grüße-anhang", "bold", "number 15", "nothing-like"]


def test_server_answers_equal_a_scan_cold_warm_and_after_restart(dep: ImapDeployment) -> None:
    store = dep.store
    assert isinstance(store, CountingStore)
    uids = [m.uid for m in store.snapshot(USER, INBOX).messages]
    expected = {
        t: [uids[u - 1] for u in scan(SearchText(w, t))] for t in WIRE_TERMS for w in ("TEXT",)
    }
    with running_server(dep) as server:
        cold = {t: uid_search(server, f"TEXT {literal(t)}") for t in WIRE_TERMS[:1]}
        reads_cold = store.reads
        warm = {t: uid_search(server, f"TEXT {literal(t)}") for t in WIRE_TERMS}
        reads_warm = store.reads - reads_cold
    assert reads_cold == N_MESSAGES  # the first search reads everything and fills the index
    # Warm: only candidates are read; "serial0042" has one.
    assert reads_warm <= sum(len(v) for v in expected.values()) * 3
    with running_server(dep) as server:  # a restart: the index comes from disk
        before = store.reads
        again = {t: uid_search(server, f"TEXT {literal(t)}") for t in WIRE_TERMS}
        assert store.reads - before == reads_warm
    assert cold == {t: expected[t] for t in cold}
    assert warm == again == expected
    assert (dep.paths.maildir(USER) / FILE_NAME).exists()


def test_expunge_and_new_mail_are_seen(dep: ImapDeployment) -> None:
    store = dep.store
    uids = [m.uid for m in store.snapshot(USER, INBOX).messages]
    target = uids[42]
    with running_server(dep) as server:
        assert uid_search(server, "BODY serial0042") == [target]
        store.store_flags(USER, INBOX, [target], ["\\Deleted"], FlagMode.ADD)
        store.expunge(USER, INBOX)
        assert uid_search(server, "BODY serial0042") == []
        store.deliver([(USER, INBOX)], CORPUS[42])  # arrives after the index was filled
        new = store.snapshot(USER, INBOX).messages[-1].uid
        assert uid_search(server, "BODY serial0042") == [new]
    db = sqlite3.connect(dep.paths.maildir(USER) / FILE_NAME)
    assert {u for (u,) in db.execute("SELECT uid FROM docs")} == set(uids[:42] + uids[43:] + [new])
