"""The sans-IO parts of NOTIFY and RFC 5267's return options: bytes -> command values
(imap/parser_notify.py, imap/parser_sort.py) and the filter rules (imap/notify.py)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.imap import commands as c
from mailstack.imap import notify
from mailstack.imap.parser import ParseError, parse_command
from mailstack.imap.query import Section

EVERY = ("MessageNew", "MessageExpunge", "FlagChange")


def parsed(line: str) -> c.Command:
    return parse_command(line.encode() + b"\r\n")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        pytest.param("a NOTIFY NONE", c.Notify("a", None), id="none"),
        pytest.param(
            'a NOTIFY SET STATUS (subtree (Lists "a b") (MessageNew MessageExpunge)) '
            "(mailboxes inbox (mailboxname))",
            c.Notify(
                "a",
                (
                    c.NotifyGroup("SUBTREE", ("Lists", "a b"), ("MessageNew", "MessageExpunge")),
                    c.NotifyGroup("MAILBOXES", ("INBOX",), ("MailboxName",)),
                ),
                status=True,
            ),
            id="status-subtree-mailboxes",
        ),
        pytest.param(
            "a NOTIFY SET (SELECTED-DELAYED (messagenew (uid body.peek[header]) messageexpunge "
            "flagchange)) (personal NONE)",
            c.Notify(
                "a",
                (
                    c.NotifyGroup(
                        "SELECTED-DELAYED",
                        (),
                        EVERY,
                        (
                            c.FetchAttr("UID"),
                            c.FetchAttr("BODY", Section(text="HEADER"), peek=True),
                        ),
                    ),
                    c.NotifyGroup("PERSONAL", (), ()),
                ),
            ),
            id="selected-fetch",
        ),
        pytest.param(
            "a UID SORT RETURN (MIN PARTIAL 9:2) (DATE) UTF-8 ALL",
            c.Sort(
                "a",
                (c.SortCriterion("DATE"),),
                "UTF-8",
                c.SearchAll(),
                uid=True,
                returns=("MIN", "PARTIAL"),
                is_esort=True,
                partial=(2, 9),
            ),
            id="esort",
        ),
        pytest.param(
            "a SEARCH RETURN (UPDATE CONTEXT COUNT) ALL",
            c.Search("a", c.SearchAll(), returns=("UPDATE", "CONTEXT", "COUNT"), is_esearch=True),
            id="update",
        ),
        pytest.param('a CANCELUPDATE "x1" "x2"', c.CancelUpdate("a", ("x1", "x2")), id="cancel"),
    ],
)
def test_parse(line: str, expected: c.Command) -> None:
    assert parsed(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        "a NOTIFY",
        "a NOTIFY SET",
        "a NOTIFY SET ()",
        "a NOTIFY SET (personal)",
        "a NOTIFY SET (personal ())",
        "a NOTIFY SET (subtree (MessageNew MessageExpunge))",
        "a NOTIFY SET (mailboxes () (MailboxName))",
        "a NOTIFY SET (personal (MessageExpunge))",
        "a NOTIFY SET (personal (MessageNew (UID) MessageExpunge))",
        "a NOTIFY SET (selected (MessageNew ()) MessageExpunge)",
        "a NOTIFY SET (selected NONE) (selected NONE)",
        "a NOTIFY SET (personal NONE)(inboxes NONE)",
        "a NOTIFY NONE extra",
        "a SEARCH RETURN (PARTIAL 1:*) ALL",
        "a SEARCH RETURN (PARTIAL PARTIAL 1:2) ALL",
        "a CANCELUPDATE",
        'a CANCELUPDATE "x"junk',
    ],
)
def test_bad_syntax(line: str) -> None:
    with pytest.raises(ParseError):
        parsed(line)


@given(st.binary(max_size=200))
def test_any_notify_arguments_parse_or_fail_cleanly(tail: bytes) -> None:
    for head in (b"a NOTIFY SET ", b"a SORT RETURN ", b"a CANCELUPDATE "):
        with contextlib.suppress(ParseError):
            parse_command(head + tail + b"\r\n")


def group(kind: str, *mailboxes: str, events: tuple[str, ...] = EVERY) -> c.NotifyGroup:
    return c.NotifyGroup(kind, mailboxes, events)


def test_filters_and_first_group_wins() -> None:
    plan = notify.plan(
        [
            group("SELECTED", events=("MessageNew", "MessageExpunge")),
            group("SUBTREE", "Lists", events=()),
            group("MAILBOXES", "Lists.ietf", "Shared/bob@example.com/Team"),
            group("SUBSCRIBED", events=("MailboxName",)),
            group("PERSONAL"),
        ]
    )
    assert plan.wants_selected and not plan.is_delayed
    subscribed = frozenset({"Later"})
    assert notify.events_for(plan, "Lists", subscribed) == frozenset()  # SUBTREE first
    assert notify.events_for(plan, "Lists.ietf", subscribed) == frozenset()
    assert notify.events_for(plan, "Listsmore", subscribed) == frozenset(EVERY)  # not below
    assert notify.events_for(plan, "Later", subscribed) == {"MailboxName"}
    assert notify.events_for(plan, "Shared/bob@example.com/Team", subscribed) == set(EVERY)
    assert notify.events_for(plan, "Shared/bob@example.com/Other", subscribed) == frozenset()


def test_shared_names_map_to_their_owner() -> None:
    assert notify.key_of("alice@x", "Shared/bob@x/Team/2024") == ("bob@x", "Team.2024")
    assert notify.key_of("alice@x", "Public/support@x/INBOX") == ("support@x", "INBOX")
    assert notify.key_of("alice@x", "Projects.2024") == ("alice@x", "Projects.2024")
    assert notify.key_of("alice@x", "Shared/broken") == ("alice@x", "Shared/broken")


def test_unsupported_events_are_badevent() -> None:
    with pytest.raises(notify.BadEventError, match="AnnotationChange"):
        notify.plan([group("PERSONAL", events=(*EVERY, "AnnotationChange"))])
    with pytest.raises(notify.BadEventError, match="Fancy"):
        notify.plan([group("INBOXES", events=("Fancy",))])


def test_mailbox_changes_match_old_or_new_name() -> None:
    plan = notify.plan([group("SUBTREE", "Lists", events=("MailboxName",))])
    renamed_out = notify.MailboxNameChange("Lists.a", "Archive.a", origin=1)
    renamed_elsewhere = notify.MailboxNameChange("X", "Y", origin=1)
    subscription = notify.SubscriptionChange("Lists.a", is_subscribed=True, origin=1)
    assert notify.wants_change(plan, renamed_out, frozenset())
    assert not notify.wants_change(plan, renamed_elsewhere, frozenset())
    assert not notify.wants_change(plan, subscription, frozenset())  # not asked for
