"""CATENATE (RFC 4469): the IMAP URLs (RFC 5092) an APPEND may join, parsed and resolved.

We take the URLs RFC 4469 §3 asks for, naming a message or a part of one on this server:

    imap://user@host/INBOX;UIDVALIDITY=385759045/;UID=20/;SECTION=1.2;PARTIAL=0.1024
    /INBOX;UIDVALIDITY=385759045/;UID=20/;SECTION=HEADER      (relative to the server)
    ;UID=20/;SECTION=TEXT                                      (relative to the selected mailbox)

The mailbox is UTF-8, %-encoded (RFC 5092 §3.2). ;UIDVALIDITY, when given, must match.
The authority (`user@host`) is not looked at: every URL is read as the logged-in user, with
that user's rights, whoever it names. URLAUTH (RFC 4467) is not supported: BADURL.

`parse_url` is pure; `resolve` reads through the `MailStore`, which enforces ACL rights (a
folder the user has no `r` on reads as missing), so every failure becomes `NO [BADURL url]`
(RFC 4469 §6). Runs in a worker thread (the store is synchronous).
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from mailstack.delivery.store import MailStore, StoreError
from mailstack.imap import commands as c
from mailstack.imap import fetch, utf7
from mailstack.imap.parser import parse_command
from mailstack.imap.parser_reader import ParseError

_SERVER = re.compile(r"imap://[^/]*(?=/)", re.IGNORECASE)
# RFC 5092 §11: "/" enc-mailbox [uidvalidity] iuid [isection] [ipartial]
_PATH = re.compile(
    r"(?:/(?P<mailbox>[^;]+?)(?:;UIDVALIDITY=(?P<uidvalidity>[1-9]\d{0,9}))?/)?"
    r";UID=(?P<uid>[1-9]\d{0,9})"
    r"(?:/;SECTION=(?P<section>[^;]*))?"
    r"(?:/?;PARTIAL=(?P<offset>\d{1,10})(?:\.(?P<length>[1-9]\d{0,9}))?)?",
    re.IGNORECASE,
)


class BadUrlError(Exception):
    """The URL cannot be used: answer `NO [BADURL url] reason`."""


@dataclass(frozen=True, slots=True)
class ImapUrl:
    mailbox: str | None  # as the store names it (modified UTF-7); None: the selected one
    uid_validity: int | None
    uid: int
    section: c.Section
    partial: tuple[int, int | None] | None = None


def parse_url(url: str) -> ImapUrl:
    """The parts of one CATENATE URL. Raises BadUrlError."""
    path = _SERVER.sub("", url, count=1)
    m = _PATH.fullmatch(path)
    if m is None:
        raise BadUrlError("not an IMAP URL naming a message on this server")
    mailbox = None
    if m["mailbox"] is not None:
        name = urllib.parse.unquote(m["mailbox"], errors="strict")
        mailbox = "INBOX" if name.upper() == "INBOX" else utf7.encode(name)
    section = c.Section()
    if m["section"]:
        section = _section(urllib.parse.unquote(m["section"]))
    partial = None
    if m["offset"] is not None:
        partial = (int(m["offset"]), int(m["length"]) if m["length"] else None)
    uid_validity = int(m["uidvalidity"]) if m["uidvalidity"] else None
    return ImapUrl(mailbox, uid_validity, int(m["uid"]), section, partial)


def _section(text: str) -> c.Section:
    """The section as FETCH BODY[...] reads it (RFC 5092 §3.5 uses the same grammar)."""
    try:
        command = parse_command(f"x FETCH 1 BODY[{text}]\r\n".encode())
    except (ParseError, UnicodeEncodeError):
        raise BadUrlError(f"bad section {text!r}") from None
    assert isinstance(command, c.Fetch)  # noqa: S101 - a FETCH parses as a FETCH
    section = command.attrs[0].section
    return section if section is not None else c.Section()


def resolve(
    store: MailStore, user: str, selected: str | None, url: str, *, utf8: bool = False
) -> bytes:
    """The bytes `url` names, read as `user`. Raises BadUrlError. `utf8`: the client takes
    UTF-8, so its section numbers go into message/global parts (imap/mime.py), as in FETCH."""
    where = parse_url(url)
    mailbox = where.mailbox if where.mailbox is not None else selected
    if mailbox is None:
        raise BadUrlError("a relative URL needs a selected mailbox")
    try:
        if where.uid_validity is not None:
            snap = store.snapshot(user, mailbox)
            if snap.uid_validity != where.uid_validity:
                raise BadUrlError("UIDVALIDITY does not match")
        raw = store.read_message(user, mailbox, where.uid)
    except StoreError:  # no such folder or message, or no right to read it (RFC 4314)
        raise BadUrlError("no such message") from None
    message = fetch.ParsedMessage.parse(raw, utf8=utf8)
    data = fetch.section_bytes(message.data, message.root, where.section)
    if where.partial is not None:
        offset, length = where.partial
        data = data[offset : offset + length if length is not None else None]
    return data
