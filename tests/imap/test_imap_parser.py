"""imap/parser.py: command bytes -> Command values, or ParseError with the tag."""

from __future__ import annotations

import contextlib
import datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.imap import commands as c
from mailstack.imap.parser import MAX_DEPTH, ParseError, parse_command
from mailstack.imap.sequence import SeqRange, SequenceSet

from mailstack.base.flags import FlagMode


def seq(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(SeqRange(a, b) for a, b in ranges))


ONE = seq((1, 1))
ALL = seq((1, None))
TZ1 = datetime.timezone(datetime.timedelta(hours=1))

CASES = [
    pytest.param(b"a1 NOOP", c.Noop("a1"), id="noop"),
    pytest.param(b"a1 noop", c.Noop("a1"), id="case-insensitive"),
    pytest.param(b"x.y] CAPABILITY", c.Capability("x.y]"), id="tag-with-bracket"),
    pytest.param(b"a LOGOUT", c.Logout("a"), id="logout"),
    pytest.param(b"a STARTTLS", c.StartTls("a"), id="starttls"),
    pytest.param(b'a LOGIN alice "p\\"w\\\\"', c.Login("a", "alice", 'p"w\\'), id="login-quoted"),
    pytest.param(
        b"a LOGIN {5+}\r\nalice {3}\r\np w", c.Login("a", "alice", "p w"), id="login-literals"
    ),
    pytest.param(b'a LOGIN "j\xc3\xbcrgen" x', c.Login("a", "jürgen", "x"), id="login-utf8"),
    pytest.param(b"a AUTHENTICATE PLAIN", c.Authenticate("a", "PLAIN"), id="authenticate"),
    pytest.param(
        b"a AUTHENTICATE plain AGEAYg==", c.Authenticate("a", "PLAIN", "AGEAYg=="), id="sasl-ir"
    ),
    pytest.param(b"a AUTHENTICATE PLAIN =", c.Authenticate("a", "PLAIN", "="), id="sasl-ir-empty"),
    pytest.param(b"a ID NIL", c.Id("a", None), id="id-nil"),
    pytest.param(
        b'a ID ("name" "mutt" "os" NIL)',
        c.Id("a", (("name", "mutt"), ("os", None))),
        id="id-params",
    ),
    pytest.param(
        b"a ENABLE UTF8=ACCEPT CONDSTORE", c.Enable("a", ("UTF8=ACCEPT", "CONDSTORE")), id="enable"
    ),
    pytest.param(b"a SELECT inbox", c.Select("a", "INBOX"), id="select-inbox-any-case"),
    pytest.param(b'a EXAMINE "Sent"', c.Select("a", "Sent", readonly=True), id="examine"),
    pytest.param(b"a CREATE Foo.Bar", c.Create("a", "Foo.Bar"), id="create"),
    pytest.param(
        b"a CREATE MySent (USE (\\Sent \\Archive))",
        c.Create("a", "MySent", ("\\Sent", "\\Archive")),
        id="create-special-use",
    ),
    pytest.param(b"a DELETE Foo", c.Delete("a", "Foo"), id="delete"),
    pytest.param(b"a RENAME Foo {3}\r\nBar", c.Rename("a", "Foo", "Bar"), id="rename"),
    pytest.param(b"a SUBSCRIBE Foo", c.Subscribe("a", "Foo"), id="subscribe"),
    pytest.param(b"a UNSUBSCRIBE Foo", c.Unsubscribe("a", "Foo"), id="unsubscribe"),
    pytest.param(b'a LIST "" *', c.List("a", "", ("*",)), id="list"),
    pytest.param(b"a LIST Foo. %", c.List("a", "Foo.", ("%",)), id="list-reference"),
    pytest.param(
        b'a LIST (SUBSCRIBED RECURSIVEMATCH) "" ("*" Foo%)',
        c.List("a", "", ("*", "Foo%"), ("SUBSCRIBED", "RECURSIVEMATCH")),
        id="list-extended",
    ),
    pytest.param(
        b'a LIST "" * RETURN (SPECIAL-USE STATUS (MESSAGES UNSEEN))',
        c.List("a", "", ("*",), (), ("SPECIAL-USE", "STATUS"), ("MESSAGES", "UNSEEN")),
        id="list-status",
    ),
    pytest.param(
        b'a LIST (SPECIAL-USE) "" *',
        c.List("a", "", ("*",), ("SPECIAL-USE",)),
        id="list-special-use-selection",
    ),
    pytest.param(b'a LSUB "" *', c.Lsub("a", "", "*"), id="lsub"),
    pytest.param(b"a NAMESPACE", c.Namespace("a"), id="namespace"),
    pytest.param(
        b"a STATUS Sent (MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE DELETED)",
        c.Status(
            "a",
            "Sent",
            ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT", "SIZE", "DELETED"),
        ),
        id="status",
    ),
    pytest.param(b"a APPEND INBOX {3+}\r\nhi!", c.Append("a", "INBOX", b"hi!"), id="append"),
    pytest.param(
        b'a APPEND Drafts (\\Draft \\seen $Label) "05-Feb-2024 13:05:00 +0100" {2}\r\n\r\n',
        c.Append(
            "a",
            "Drafts",
            b"\r\n",
            ("\\Draft", "\\Seen", "$Label"),
            datetime.datetime(2024, 2, 5, 13, 5, tzinfo=TZ1),
        ),
        id="append-flags-date",
    ),
    pytest.param(
        b'a APPEND INBOX " 5-Feb-2024 13:05:00 -0000" ~{1+}\r\n\x00',
        c.Append(
            "a", "INBOX", b"\x00", (), datetime.datetime(2024, 2, 5, 13, 5, tzinfo=datetime.UTC)
        ),
        id="append-literal8",
    ),
    pytest.param(b"a IDLE", c.Idle("a"), id="idle"),
    pytest.param(b'a GETQUOTA ""', c.GetQuota("a", ""), id="getquota"),
    pytest.param(b"a GETQUOTAROOT inbox", c.GetQuotaRoot("a", "INBOX"), id="getquotaroot"),
    pytest.param(
        b'a SETQUOTA "" (STORAGE 512)', c.SetQuota("a", "", (("STORAGE", 512),)), id="setquota"
    ),
    pytest.param(b"a CHECK", c.Check("a"), id="check"),
    pytest.param(b"a CLOSE", c.Close("a"), id="close"),
    pytest.param(b"a UNSELECT", c.Unselect("a"), id="unselect"),
    pytest.param(b"a EXPUNGE", c.Expunge("a"), id="expunge"),
    pytest.param(b"a UID EXPUNGE 1:3,7", c.Expunge("a", seq((1, 3), (7, 7))), id="uid-expunge"),
    pytest.param(b"a COPY 2:* Trash", c.Copy("a", seq((2, None)), "Trash"), id="copy"),
    pytest.param(
        b"a UID MOVE $ Junk",
        c.Move("a", SequenceSet(is_saved=True), "Junk", True),
        id="uid-move-saved",
    ),
    pytest.param(
        b"a STORE 1 FLAGS (\\Seen)", c.Store("a", ONE, FlagMode.REPLACE, ("\\Seen",)), id="store"
    ),
    pytest.param(
        b"a UID STORE 1:* +FLAGS.SILENT (\\Deleted foo)",
        c.Store("a", ALL, FlagMode.ADD, ("\\Deleted", "foo"), True, True),
        id="uid-store-silent",
    ),
    pytest.param(
        b"a STORE 1 -flags \\Flagged bar",
        c.Store("a", ONE, FlagMode.REMOVE, ("\\Flagged", "bar")),
        id="store-bare-flags",
    ),
    pytest.param(b"a STORE 1 FLAGS ()", c.Store("a", ONE, FlagMode.REPLACE, ()), id="store-empty"),
    pytest.param(b"a FETCH 1 ALL", c.Fetch("a", ONE, c.FETCH_MACROS["ALL"]), id="fetch-all"),
    pytest.param(b"a FETCH 1 fast", c.Fetch("a", ONE, c.FETCH_MACROS["FAST"]), id="fetch-fast"),
    pytest.param(
        b"a UID FETCH 1:* FULL",
        c.Fetch("a", ALL, c.FETCH_MACROS["FULL"], True),
        id="uid-fetch-full",
    ),
    pytest.param(
        b"a FETCH 1 (UID FLAGS INTERNALDATE RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY)",
        c.Fetch(
            "a",
            ONE,
            tuple(
                c.FetchAttr(n)
                for n in (
                    "UID",
                    "FLAGS",
                    "INTERNALDATE",
                    "RFC822.SIZE",
                    "ENVELOPE",
                    "BODYSTRUCTURE",
                    "BODY",
                )
            ),
        ),
        id="fetch-list",
    ),
    pytest.param(
        b"a FETCH 1 (RFC822 RFC822.HEADER RFC822.TEXT)",
        c.Fetch(
            "a", ONE, tuple(c.FetchAttr(n) for n in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"))
        ),
        id="fetch-rfc822",
    ),
    pytest.param(
        b"a FETCH 1 BODY[]",
        c.Fetch("a", ONE, (c.FetchAttr("BODY", c.Section()),)),
        id="body-empty-section",
    ),
    pytest.param(
        b"a FETCH 1 BODY.PEEK[]<0.1024>",
        c.Fetch("a", ONE, (c.FetchAttr("BODY", c.Section(), (0, 1024), True),)),
        id="body-peek-partial",
    ),
    pytest.param(
        b'a FETCH 1 BODY[HEADER.FIELDS (From "To" {7}\r\nSubject)]',
        c.Fetch(
            "a",
            ONE,
            (c.FetchAttr("BODY", c.Section((), "HEADER.FIELDS", ("FROM", "TO", "SUBJECT"))),),
        ),
        id="header-fields",
    ),
    pytest.param(
        b"a FETCH 1 BODY[1.2.HEADER.FIELDS.NOT (X-Spam)]",
        c.Fetch(
            "a", ONE, (c.FetchAttr("BODY", c.Section((1, 2), "HEADER.FIELDS.NOT", ("X-SPAM",))),)
        ),
        id="header-fields-not",
    ),
    pytest.param(
        b"a FETCH 1 (BODY[TEXT] BODY[2.MIME] BODY[3] BODY[3.1.TEXT])",
        c.Fetch(
            "a",
            ONE,
            (
                c.FetchAttr("BODY", c.Section((), "TEXT")),
                c.FetchAttr("BODY", c.Section((2,), "MIME")),
                c.FetchAttr("BODY", c.Section((3,))),
                c.FetchAttr("BODY", c.Section((3, 1), "TEXT")),
            ),
        ),
        id="sections",
    ),
    pytest.param(
        b"a FETCH 1 (BINARY.PEEK[1]<0.5> BINARY.SIZE[1])",
        c.Fetch(
            "a",
            ONE,
            (
                c.FetchAttr("BINARY", c.Section((1,)), (0, 5), True),
                c.FetchAttr("BINARY.SIZE", c.Section((1,))),
            ),
        ),
        id="binary",
    ),
    pytest.param(b"a SEARCH ALL", c.Search("a", c.SearchAll()), id="search-all"),
    pytest.param(
        b'a UID SEARCH CHARSET utf-8 SUBJECT "\xc3\xa4"',
        c.Search("a", c.SearchHeader("Subject", "ä"), True, "UTF-8"),
        id="search-charset",
    ),
    pytest.param(
        b"a SEARCH OR FROM alice (TO bob CC carol) NOT DELETED",
        c.Search(
            "a",
            c.SearchAnd(
                (
                    c.SearchOr(
                        c.SearchHeader("From", "alice", address=True),
                        c.SearchAnd(
                            (c.SearchHeader("To", "bob", True), c.SearchHeader("Cc", "carol", True))
                        ),
                    ),
                    c.SearchNot(c.SearchFlag("\\Deleted")),
                )
            ),
        ),
        id="search-or-not-parens",
    ),
    pytest.param(
        b"a SEARCH 2:4 UID 10:* LARGER 5 SMALLER 9000",
        c.Search(
            "a",
            c.SearchAnd(
                (
                    c.SearchSeq(seq((2, 4))),
                    c.SearchSeq(seq((10, None)), uid=True),
                    c.SearchSize("LARGER", 5),
                    c.SearchSize("SMALLER", 9000),
                )
            ),
        ),
        id="search-seq",
    ),
    pytest.param(
        b'a SEARCH SINCE 1-Feb-2024 BEFORE "10-Mar-2024" SENTON 29-Feb-2024',
        c.Search(
            "a",
            c.SearchAnd(
                (
                    c.SearchDate("SINCE", datetime.date(2024, 2, 1)),
                    c.SearchDate("BEFORE", datetime.date(2024, 3, 10)),
                    c.SearchDate("ON", datetime.date(2024, 2, 29), sent=True),
                )
            ),
        ),
        id="dates",
    ),
    pytest.param(
        b'a SEARCH HEADER X-Mailer "" BODY hello TEXT "a b" KEYWORD $Junk UNKEYWORD x',
        c.Search(
            "a",
            c.SearchAnd(
                (
                    c.SearchHeader("X-Mailer", ""),
                    c.SearchText("BODY", "hello"),
                    c.SearchText("TEXT", "a b"),
                    c.SearchFlag("$Junk"),
                    c.SearchFlag("x", False),
                )
            ),
        ),
        id="header-body-keyword",
    ),
    pytest.param(
        b"a SEARCH NEW OLD UNANSWERED DRAFT",
        c.Search(
            "a",
            c.SearchAnd(
                (
                    c.SearchAnd((c.SearchFlag("\\Recent"), c.SearchFlag("\\Seen", False))),
                    c.SearchFlag("\\Recent", False),
                    c.SearchFlag("\\Answered", False),
                    c.SearchFlag("\\Draft"),
                )
            ),
        ),
        id="new-old",
    ),
    pytest.param(
        b"a SEARCH RETURN (MIN MAX COUNT ALL SAVE) UNSEEN",
        c.Search(
            "a",
            c.SearchFlag("\\Seen", False),
            False,
            None,
            ("MIN", "MAX", "COUNT", "ALL", "SAVE"),
            True,
        ),
        id="esearch",
    ),
    pytest.param(
        b"a SEARCH RETURN () $",
        c.Search("a", c.SearchSeq(SequenceSet(is_saved=True)), is_esearch=True),
        id="esearch-saved",
    ),
]


@pytest.mark.parametrize(("data", "command"), CASES)
def test_parse(data: bytes, command: c.Command) -> None:
    assert parse_command(data + b"\r\n") == command


ERRORS = [
    pytest.param(b"", "*", id="empty"),
    pytest.param(b"a1", "a1", id="tag-only"),
    pytest.param(b"+x NOOP", "*", id="plus-in-tag"),
    pytest.param(b"a1 FROB", "a1", id="unknown-command"),
    pytest.param(b"a1 NOOP extra", "a1", id="trailing-garbage"),
    pytest.param(b"a1  NOOP", "a1", id="double-space"),
    pytest.param(b"a1 LOGIN alice", "a1", id="missing-argument"),
    pytest.param(b'a1 LOGIN alice "pw', "a1", id="unterminated-quote"),
    pytest.param(b'a1 LOGIN alice "p\\w"', "a1", id="bad-escape"),
    pytest.param(b"a1 LOGIN alice {5}\r\npw", "a1", id="short-literal"),
    pytest.param(b"a1 SELECT", "a1", id="select-no-mailbox"),
    pytest.param(b"a1 FETCH 0 FLAGS", "a1", id="seq-zero"),
    pytest.param(b"a1 FETCH 1:4294967296 FLAGS", "a1", id="seq-too-large"),
    pytest.param(b"a1 FETCH 1 (FLAGS", "a1", id="unclosed-list"),
    pytest.param(b"a1 FETCH 1 BODY[1.]", "a1", id="section-dot"),
    pytest.param(b"a1 FETCH 1 BODY[MIME]", "a1", id="mime-without-part"),
    pytest.param(b"a1 FETCH 1 BODY[FOO]", "a1", id="bad-section"),
    pytest.param(b"a1 FETCH 1 BODY[]<1.0>", "a1", id="zero-partial"),
    pytest.param(b"a1 FETCH 1 BODY.PEEK", "a1", id="peek-without-section"),
    pytest.param(b"a1 FETCH 1 GARBAGE", "a1", id="unknown-fetch-item"),
    pytest.param(b"a1 STORE 1 FLAGZ (\\Seen)", "a1", id="store-bad-item"),
    pytest.param(b"a1 SEARCH", "a1", id="search-no-key"),
    pytest.param(b"a1 SEARCH FROB", "a1", id="unknown-search-key"),
    pytest.param(b"a1 SEARCH SINCE 31-Feb-2024", "a1", id="impossible-date"),
    pytest.param(b"a1 SEARCH SINCE 2024-02-01", "a1", id="iso-date"),
    pytest.param(b"a1 SEARCH OR SEEN", "a1", id="or-one-key"),
    pytest.param(
        b"a1 SEARCH " + b"(" * (MAX_DEPTH + 5) + b"ALL" + b")" * (MAX_DEPTH + 5),
        "a1",
        id="too-deep",
    ),
    pytest.param(b"a1 SEARCH " + b"NOT " * 5000 + b"ALL", "a1", id="deep-not"),
    pytest.param(b"a1 STATUS INBOX (MESSAGES BOGUS)", "a1", id="bad-status-item"),
    pytest.param(
        b'a1 APPEND INBOX "31-Feb-2024 00:00:00 +0000" {1+}\r\nx', "a1", id="append-bad-date"
    ),
    pytest.param(b"a1 APPEND INBOX hello", "a1", id="append-no-literal"),
    pytest.param(b"a1 UID FROB 1", "a1", id="uid-unknown"),
    pytest.param(b'a1 LIST (RECURSIVEMATCH) "" *', "a1", id="recursivematch-alone"),
    pytest.param(b'a1 LIST (REMOTE RECURSIVEMATCH) "" *', "a1", id="recursivematch-remote"),
    pytest.param(b'a1 LIST "" * RETURN (BOGUS)', "a1", id="bad-return-option"),
    pytest.param(b"a1 AUTHENTICATE PLAIN !!!", "a1", id="bad-base64"),
    pytest.param(b"a1 CREATE X (USE \\Sent)", "a1", id="create-use-not-list"),
    pytest.param(b'a1 SETQUOTA "" (STORAGE)', "a1", id="setquota-no-limit"),
]


@pytest.mark.parametrize(("data", "tag"), ERRORS)
def test_malformed_commands_raise_parse_error_with_tag(data: bytes, tag: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_command(data + b"\r\n")
    assert info.value.tag == tag
    assert info.value.reason


@given(st.binary(max_size=300))
@example(b"a SEARCH " + b"(" * 2000)
@example(b"a FETCH 1 BODY[" + b"1." * 100 + b"]\r\n")
@example(b"a LOGIN {3}\r\n")
def test_any_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    result: object
    try:
        result = parse_command(data + b"\r\n")
    except ParseError as exc:
        result = exc
    assert isinstance(result, c.Command | ParseError)


ATOMS = st.text(
    alphabet='ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ()*:"\\{}[]<>.$%+-~\r\n', max_size=60
)


@given(ATOMS)
def test_command_shaped_text_parses_or_raises_parse_error(text: str) -> None:
    for name in ("SEARCH", "FETCH 1", "UID STORE 1:*", "LIST", "APPEND INBOX", "STATUS X"):
        with contextlib.suppress(ParseError):
            assert isinstance(parse_command(f"t {name} {text}\r\n".encode()), c.Command)


def test_tilde_is_an_atom_char_unless_it_starts_a_literal8() -> None:
    assert parse_command(b"t LOGIN ~ ~x\r\n") == c.Login("t", "~", "~x")
    assert parse_command(b"t LOGIN ~{1}\r\na ~\r\n") == c.Login("t", "a", "~")
