"""NOTIFY (RFC 5465) as values and rules: which events the client asked for on which
mailbox, and the untagged responses mailbox-level events become. Pure: no I/O, no asyncio;
imap/session_notify.py does the waiting and the store calls.

- Filters (§6): INBOXES is INBOX (the only folder our MX delivers to; Sieve-free); PERSONAL
  every folder of the personal namespace; SUBSCRIBED the subscribed names, as they are at
  each event; SUBTREE a name and everything below it (its namespace's delimiter); MAILBOXES
  exactly the names. Shared/Public names (imap/shared.py) match SUBTREE/MAILBOXES/SUBSCRIBED,
  never PERSONAL. A mailbox two groups match takes the first group's events.
- The selected mailbox is never reported by STATUS; its events are the SELECTED group's
  (none without one: then it is reported as RFC 9051 does, in command responses).
- Events we implement: MessageNew (with fetch attributes for the selected mailbox),
  MessageExpunge, FlagChange, MailboxName, SubscriptionChange, and MailboxMetadataChange /
  ServerMetadataChange for the METADATA (RFC 5464) the account's sessions set. AnnotationChange
  needs per-message annotations (RFC 5257, not implemented): NO [BADEVENT] (§3.1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mailstack.delivery.store import INBOX, FolderNotFoundError
from mailstack.imap import commands as c
from mailstack.imap.parser_notify import SELECTED_FILTERS
from mailstack.imap.shared import _split, delimiter_of

SUPPORTED_EVENTS = (
    "MessageNew",
    "MessageExpunge",
    "FlagChange",
    "MailboxName",
    "SubscriptionChange",
    "MailboxMetadataChange",
    "ServerMetadataChange",
)
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange"})
# Changes waiting to be told before we give up and say NOTIFICATIONOVERFLOW (§5.8): enough
# for a client that reads its socket; a bound for one that does not.
MAX_PENDING = 1000

Key = tuple[str, str]  # (account, folder) as the store and the EventHub name a folder


class BadEventError(Exception):
    """NOTIFY named an event we do not implement: NO [BADEVENT (...)] (§3.1)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated NOTIFY SET: the selected mailbox's events and the other groups in order."""

    selected: frozenset[str]
    is_delayed: bool  # SELECTED-DELAYED: expunges wait for a command that allows them (§6)
    fetch: tuple[c.FetchAttr, ...]
    others: tuple[c.NotifyGroup, ...]

    @property
    def wants_selected(self) -> bool:
        return bool(self.selected & MESSAGE_EVENTS)


@dataclass(frozen=True, slots=True)
class MailboxNameChange:
    """CREATE (old None), DELETE (new None) or RENAME, by the session `origin`."""

    old: str | None
    new: str | None
    origin: int


@dataclass(frozen=True, slots=True)
class SubscriptionChange:
    name: str
    is_subscribed: bool
    origin: int


@dataclass(frozen=True, slots=True)
class MetadataChange:
    """SETMETADATA of `entries` on `mailbox` ("" for the server's), by the session `origin`."""

    mailbox: str
    entries: tuple[str, ...]
    origin: int


Change = MailboxNameChange | SubscriptionChange | MetadataChange


def plan(groups: Iterable[c.NotifyGroup]) -> Plan:
    selected: frozenset[str] = frozenset()
    is_delayed = False
    fetch: tuple[c.FetchAttr, ...] = ()
    others = []
    for group in groups:
        unknown = [e for e in group.events if e not in SUPPORTED_EVENTS]
        if unknown:
            raise BadEventError(unknown[0])
        if group.filter in SELECTED_FILTERS:
            selected = frozenset(group.events)
            is_delayed = group.filter == "SELECTED-DELAYED"
            fetch = group.fetch
        else:
            others.append(group)
    return Plan(selected, is_delayed, fetch, tuple(others))


def is_shared_name(name: str) -> bool:
    try:
        return _split(name) is not None
    except FolderNotFoundError:
        return True  # a malformed name in those namespaces: still not personal


def key_of(user: str, name: str) -> Key:
    """The (account, folder) whose changes the visible `name` shows (cf. SharedStore.locate,
    without reading the ACL: rights are checked when the folder is read)."""
    try:
        split = _split(name)
    except FolderNotFoundError:
        return user, name
    return (user, name) if split is None else (split[1], split[2])


def matches(group: c.NotifyGroup, name: str, subscribed: frozenset[str]) -> bool:
    match group.filter:
        case "INBOXES":
            return name == INBOX
        case "PERSONAL":
            return not is_shared_name(name)
        case "SUBSCRIBED":
            return name in subscribed
        case "SUBTREE":
            return any(
                name == top or name.startswith(top + delimiter_of(top)) for top in group.mailboxes
            )
        case "MAILBOXES":
            return name in group.mailboxes
    return False  # pragma: no cover - the parser admits no other filter


def events_for(p: Plan, name: str, subscribed: frozenset[str]) -> frozenset[str]:
    """The events the client wants for the non-selected mailbox `name` (first group wins)."""
    for group in p.others:
        if matches(group, name, subscribed):
            return frozenset(group.events)
    return frozenset()


def status_items(*, condstore: bool, is_initial: bool = False) -> tuple[str, ...]:
    """What a STATUS for MessageNew/MessageExpunge/FlagChange carries (§5.2-§5.4 ask for at
    least MESSAGES and UIDNEXT; UNSEEN shows a flag change, HIGHESTMODSEQ with CONDSTORE), as
    Dovecot sends them; NOTIFY SET STATUS adds UIDVALIDITY, which a client starts from (§3.1)."""
    items = (
        ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
        if is_initial
        else (
            "MESSAGES",
            "UIDNEXT",
            "UNSEEN",
        )
    )
    return (*items, "HIGHESTMODSEQ") if condstore else items


def wants_change(p: Plan, change: object, subscribed: frozenset[str]) -> bool:
    """Whether a mailbox-level change is for this client (§5.4 MailboxName, §5.5
    SubscriptionChange, §5.6/§5.7 metadata: a group with the event that matches the old or
    the new name; ServerMetadataChange in any group, the selected one included)."""
    if isinstance(change, MetadataChange) and change.mailbox == "":
        everything = p.selected.union(*(g.events for g in p.others))
        return "ServerMetadataChange" in everything
    if isinstance(change, MetadataChange):
        event, names = "MailboxMetadataChange", [change.mailbox]
    elif isinstance(change, MailboxNameChange):
        event, names = "MailboxName", [n for n in (change.old, change.new) if n is not None]
    elif isinstance(change, SubscriptionChange):
        event, names = "SubscriptionChange", [change.name]
    else:
        return False
    return any(
        event in group.events and any(matches(group, n, subscribed) for n in names)
        for group in p.others
    )
