"""THREAD=ORDEREDSUBJECT and THREAD=REFERENCES (RFC 5256): hand-made trees, laws over random
reference graphs (gaps, loops, duplicates), and our answers next to Dovecot's on the
messages of tests/imap/sort_fixtures.py."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.store import MessageInfo
from mailstack.imap import commands as c
from mailstack.imap.parser import parse_command
from mailstack.imap.sort import Message, collation_key
from mailstack.imap.thread import Node, ordered_subject, references, render

from tests.imap.test_sort import load, ours, theirs
from tests.support.imapserver import make_deployment


def msg(
    seq: int,
    subject: str = "s",
    date: int | None = None,
    mid: str | None = None,
    refs: tuple[str, ...] = (),
    is_refwd: bool = False,
) -> Message:
    info = MessageInfo(uid=seq, flags=frozenset(), internal_date=0.0, size=1, key=str(seq))
    return Message(
        seq=seq,
        info=info,
        subject=collation_key(subject),
        is_refwd=is_refwd,
        date=seq if date is None else date,
        sender=b"",
        to=b"",
        cc=b"",
        display_from=b"",
        display_to=b"",
        message_id=mid,
        references=refs,
    )


def seq(m: Message) -> int:
    return m.seq


def test_ordered_subject() -> None:
    got = ordered_subject(
        [
            msg(1, "b", 5),
            msg(2, "a", 9),
            msg(3, "b", 1),
            msg(4, "a", 3),
            msg(5, "b", 7),
            msg(6, "c", 2),
        ]
    )
    # Threads by their first message's date; the first message parents all the others.
    assert render(got, seq) == "(3 (1)(5))(6)(4 2)"


def test_references_chain_gap_and_dummy() -> None:
    got = references(
        [
            msg(1, "a", mid="1@x"),
            msg(2, "a", mid="2@x", refs=("1@x",), is_refwd=True),
            msg(3, "a", mid="3@x", refs=("1@x", "2@x"), is_refwd=True),
            msg(4, "q", mid="4@x", refs=("gone@x",)),  # two replies to a missing message:
            msg(5, "r", mid="5@x", refs=("gone@x",)),  # a dummy parent stays at the top
        ]
    )
    assert render(got, seq) == "(1 2 3)((4)(5))"


def test_references_loop_is_not_linked() -> None:
    got = references([msg(1, "x", mid="a@x", refs=("b@x",)), msg(2, "y", mid="b@x", refs=("a@x",))])
    # 1 made b its parent; 2 (b) cannot then take 1 as its own parent.
    assert render(got, seq) == "(2 1)"


def test_duplicate_message_id_belongs_to_the_first() -> None:
    got = references([msg(1, "x", mid="a@x"), msg(2, "y", mid="a@x"), msg(3, "z", refs=("a@x",))])
    assert render(got, seq) == "(1 3)(2)"


def test_same_subject_threads_merge_under_the_original() -> None:
    got = references([msg(1, "t", mid="1@x"), msg(2, "t", mid="2@x", is_refwd=True)])
    assert render(got, seq) == "(1 2)"
    # Neither a reply: both go under a new dummy.
    got = references([msg(1, "t", mid="1@x"), msg(2, "t", mid="2@x")])
    assert render(got, seq) == "((1)(2))"


IDS = [f"{i}@x" for i in range(8)]


@st.composite
def graphs(draw: st.DrawFn) -> list[Message]:
    n = draw(st.integers(1, 12))
    return [
        msg(
            i,
            draw(st.sampled_from(["a", "b", ""])),
            draw(st.integers(0, 5)),
            draw(st.none() | st.sampled_from(IDS)),
            tuple(draw(st.lists(st.sampled_from(IDS), max_size=4))),
            draw(st.booleans()),
        )
        for i in range(1, n + 1)
    ]


def walk(nodes: list[Node], parent: Node | None = None):
    for node in nodes:
        assert node.parent is parent
        yield node
        yield from walk(node.children, node)


@given(graphs())
def test_every_message_appears_once_and_the_tree_is_consistent(found: list[Message]) -> None:
    for algorithm in (references, ordered_subject):
        threads = algorithm(found)
        nodes = list(walk(threads))
        assert sorted(n.message.seq for n in nodes if n.message) == [m.seq for m in found]
        # dummies only at the top, with two or more children (RFC 5256 step 3)
        for node in nodes:
            if node.message is None:
                assert node.parent is None and len(node.children) >= 2
        text = render(threads, seq)
        assert sorted(map(int, re.findall(r"\d+", text))) == [m.seq for m in found]
        assert text.count("(") == text.count(")")


def test_parse_thread() -> None:
    command = parse_command(b"t UID THREAD references US-ASCII SINCE 1-Feb-1994\r\n")
    assert isinstance(command, c.Thread)
    assert (command.algorithm, command.charset, command.uid) == ("REFERENCES", "US-ASCII", True)


@pytest.mark.external
def test_thread_answers_match_dovecot(tmp_path) -> None:
    dep = make_deployment(tmp_path / "state")
    load(dep)
    commands = [
        "THREAD ORDEREDSUBJECT UTF-8 ALL",
        "THREAD REFERENCES UTF-8 ALL",
        "THREAD REFERENCES UTF-8 NOT FROM bob",
        "THREAD ORDEREDSUBJECT UTF-8 SUBJECT thing",
        "THREAD REFERENCES UTF-8 SUBJECT nothing-matches",
    ]
    # Dovecot writes "* THREAD " for no threads; RFC 5256 §4 has no space there.
    assert ours(dep, commands) == [line.rstrip(" ") for line in theirs(commands)]
