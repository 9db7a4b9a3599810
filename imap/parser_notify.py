"""Parses NOTIFY (RFC 5465 §8) into `imap.commands.Notify`. Pure: no I/O.

    notify           = "NOTIFY" SP (notify-set / notify-none)
    notify-none      = "NONE"
    notify-set       = "SET" [status-indicator] SP event-groups
    status-indicator = SP "STATUS"
    event-groups     = event-group *(SP event-group)
    event-group      = "(" filter-mailboxes SP events ")"
    filter-mailboxes = "selected" / "selected-delayed" / "inboxes" / "personal"
                       / "subscribed" / ("subtree" SP one-or-more-mailbox)
                       / ("mailboxes" SP one-or-more-mailbox)
    one-or-more-mailbox = mailbox / "(" mailbox *(SP mailbox) ")"
    events           = ("(" event *(SP event) ")") / "NONE"
    event            = ("MessageNew" [SP "(" fetch-att *(SP fetch-att) ")"])
                       / "MessageExpunge" / "FlagChange" / "AnnotationChange"
                       / "MailboxName" / "SubscriptionChange" / "MailboxMetadataChange"
                       / "ServerMetadataChange" / event-ext        ; event-ext = atom

What the grammar alone cannot say but RFC 5465 §5 makes a BAD is checked here too: MessageNew
and MessageExpunge go together, FlagChange and AnnotationChange need both, fetch attributes
only for the selected mailbox, one selected filter at most. An event we do not implement is
not a syntax error: the session answers it with NO [BADEVENT] (§3.1).
`imap/parser.py` registers this and passes its fetch-att parser in (one-way imports).
"""

from __future__ import annotations

from collections.abc import Callable

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader

FetchAttParser = Callable[[Reader], c.FetchAttr]

SELECTED_FILTERS = frozenset({"SELECTED", "SELECTED-DELAYED"})
_FILTERS = SELECTED_FILTERS | {"INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"}
# Event names by their upper-case spelling (atoms are case-insensitive).
KNOWN_EVENTS = {
    name.upper(): name
    for name in (
        "MessageNew",
        "MessageExpunge",
        "FlagChange",
        "AnnotationChange",
        "MailboxName",
        "SubscriptionChange",
        "MailboxMetadataChange",
        "ServerMetadataChange",
    )
}
MAX_GROUPS = 100  # a real client sends 2-4; bounds the work one command can ask for
MAX_MAILBOXES = 1000


def parse_notify(r: Reader, tag: str, fetch_att: FetchAttParser) -> c.Notify:
    r.sp()
    what = r.keyword("SET or NONE")
    if what == "NONE":
        return c.Notify(tag, None)
    if what != "SET":
        raise BadSyntaxError("expected SET or NONE")
    r.sp()
    status = r.accept(b"STATUS ")
    groups = [_group(r, fetch_att)]
    while r.accept(b" "):
        groups.append(_group(r, fetch_att))
        if len(groups) > MAX_GROUPS:
            raise BadSyntaxError("too many NOTIFY event groups")
    if sum(g.filter in SELECTED_FILTERS for g in groups) > 1:
        raise BadSyntaxError("the selected mailbox may be named once")
    return c.Notify(tag, tuple(groups), status)


def _group(r: Reader, fetch_att: FetchAttParser) -> c.NotifyGroup:
    r.expect(b"(", "( filter-mailboxes events )")
    name = r.keyword("a mailbox filter")
    if name not in _FILTERS:
        raise BadSyntaxError(f"unknown mailbox filter {name}")
    mailboxes: tuple[str, ...] = ()
    if name in ("SUBTREE", "MAILBOXES"):
        r.sp()
        if r.peek() == b"(":
            mailboxes = r.paren_list(r.mailbox, "mailboxes")
            if len(mailboxes) > MAX_MAILBOXES:
                raise BadSyntaxError("too many mailboxes in one filter")
        else:
            mailboxes = (r.mailbox(),)
    r.sp()
    events: list[str] = []
    fetch: list[c.FetchAttr] = []
    if not r.accept(b"NONE"):
        r.expect(b"(", "a list of events or NONE")
        while True:
            event = r.atom("an event")
            event = KNOWN_EVENTS.get(event.upper(), event)
            events.append(event)
            if event == "MessageNew" and r.accept(b" ("):
                fetch.append(fetch_att(r))
                while not r.accept(b")"):
                    r.sp()
                    fetch.append(fetch_att(r))
            if r.accept(b")"):
                break
            r.sp()
    r.expect(b")", ")")
    _check(name, set(events), bool(fetch))
    return c.NotifyGroup(name, mailboxes, tuple(dict.fromkeys(events)), tuple(fetch))


def _check(name: str, events: set[str], has_fetch: bool) -> None:
    """RFC 5465 §5: the combinations a server must answer with BAD."""
    new_expunge = {"MessageNew", "MessageExpunge"}
    if (events & new_expunge) and not new_expunge <= events:
        raise BadSyntaxError("MessageNew and MessageExpunge go together (RFC 5465 §5)")
    if events & {"FlagChange", "AnnotationChange"} and not new_expunge <= events:
        raise BadSyntaxError("FlagChange needs MessageNew and MessageExpunge (RFC 5465 §5)")
    if has_fetch and name not in SELECTED_FILTERS:
        raise BadSyntaxError("fetch attributes are only for the selected mailbox (RFC 5465 §5.2)")
