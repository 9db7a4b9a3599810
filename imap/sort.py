"""SORT (RFC 5256 §3, RFC 5957 DISPLAYFROM/DISPLAYTO) and what THREAD shares with it: the
base subject (RFC 5256 §2.1), the sent date (§2.2) and the header values a message is sorted
or threaded by. Pure: no I/O; nothing here raises on any header text.

- Strings compare by the i;ascii-casemap collation RFC 5256 §3 names: a-z folded to A-Z, then
  octet by octet of the UTF-8 text (non-ASCII letters are not folded; Dovecot uses
  i;unicode-casemap, which only differs for them).
- CC/FROM/TO sort by the addr-mailbox (the local part) of the field's first address, as
  ENVELOPE shows it (imap/envelope.py parses both); DISPLAYFROM/DISPLAYTO by its decoded
  display name, or the address "mailbox@host" when that is missing or empty (RFC 5957 §2).
  A missing field sorts as the empty string, i.e. first.
- ARRIVAL is INTERNALDATE, DATE the Date: field in UTC, or INTERNALDATE when that is missing
  or unparsable; both in whole seconds, as clients see them.
- Messages equal by every criterion stay in sequence-number order, REVERSE or not (§3:
  "the order in which they appear in the mailbox").
"""

from __future__ import annotations

import calendar
import email.utils
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailstack.delivery.store import MessageInfo
from mailstack.imap.envelope import parse_addresses
from mailstack.imap.mime import decode_words, parse_header, to_crlf
from mailstack.imap.sequence import compress, compress_ordered

# RFC 5256 §3 and RFC 5957 §3.
SORT_KEYS = frozenset(
    {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"}
)
# The header fields SORT and THREAD read.
FIELDS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "References", "In-Reply-To")

_WHITE = re.compile(r"[ \t\r\n]+")  # step (1): tabs, continuations, runs of spaces


# -- base subject (RFC 5256 §2.1) -------------------------------------------------------------
#   subj-trailer = "(fwd)" / WSP
#   subj-leader  = (*subj-blob subj-refwd) / WSP
#   subj-blob    = "[" *BLOBCHAR "]" *WSP          ; BLOBCHAR: any char but "[" and "]"
#   subj-refwd   = ("re" / ("fw" ["d"])) *WSP [subj-blob] ":"
#   subj-fwd-hdr = "[fwd:"      subj-fwd-trl = "]"
# All literals match case-insensitively (ASCII). After step (1) every WSP is a single space.


def _blob_end(text: str, i: int) -> int | None:
    """End of the subj-blob starting at text[i] (its trailing space included), or None."""
    if text[i : i + 1] != "[":
        return None
    j = i + 1
    while j < len(text) and text[j] not in "[]":
        j += 1
    if j >= len(text) or text[j] != "]":
        return None
    j += 1
    return j + 1 if text[j : j + 1] == " " else j


def _leader_end(text: str) -> tuple[int, bool]:
    """Length of one subj-leader at the start of `text` (0: none), and whether it was a
    subj-refwd (which marks the message a reply or forward)."""
    if text.startswith(" "):
        return 1, False
    i = 0
    while (end := _blob_end(text, i)) is not None:
        i = end
    word = text[i : i + 3].lower()
    if word == "fwd":
        i += 3
    elif word[:2] in ("re", "fw"):
        i += 2
    else:
        return 0, False
    if text[i : i + 1] == " ":
        i += 1
    if (end := _blob_end(text, i)) is not None:
        i = end
    if text[i : i + 1] != ":":
        return 0, False
    return i + 1, True


def base_subject(value: str) -> tuple[str, bool]:
    """The base subject of a Subject field value (raw: encoded words allowed), and whether
    extracting it removed a reply/forward marker (subj-refwd, "(fwd)", "[fwd: ...]"), which
    THREAD=REFERENCES needs (RFC 5256 §2.1 steps 1-7)."""
    # (1) decode RFC 2047 words to UTF-8; tabs and continuations to space; one space per run.
    text = _WHITE.sub(" ", decode_words(value))
    is_refwd = False
    while True:
        # (2) remove trailers, repeatedly.
        while True:
            if text.endswith(" "):
                text = text[:-1]
            elif text[-5:].lower() == "(fwd)":
                text, is_refwd = text[:-5], True
            else:
                break
        # (5) repeat (3) and (4) until neither matches.
        while True:
            # (3) remove every subj-leader at the start.
            changed = False
            while (found := _leader_end(text))[0]:
                text, changed = text[found[0] :], True
                is_refwd = is_refwd or found[1]
            # (4) a subj-blob prefix goes if a non-empty subj-base remains.
            end = _blob_end(text, 0)
            if end is not None and text[end:].strip(" "):
                text, changed = text[end:], True
            if not changed:
                break
        # (6) "[fwd:" ... "]" around the rest: unwrap and start again from (2).
        if text[:5].lower() == "[fwd:" and text.endswith("]"):
            text, is_refwd = text[5:-1], True
            continue
        return text, is_refwd  # (7)


def collation_key(text: str) -> bytes:
    """i;ascii-casemap (RFC 4790 §9.2): ASCII letters upper-cased, compared as octets."""
    return text.encode("utf-8", "surrogateescape").upper()


# -- what a message is sorted and threaded by ------------------------------------------------


def sent_date(value: str | None) -> int | None:
    """The Date: field as seconds since the epoch in UTC (RFC 5256 §2.2), None if missing
    or unparsable. A zone that is missing counts as +0000 (RFC 5322 §3.3 "-0000")."""
    if value is None:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        year, month, day, hour, minute, second = parsed[:6]
        if not (1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]):
            return None
        if not (0 <= hour <= 23 and 0 <= minute <= 59 and 0 <= second <= 60):
            return None
        return calendar.timegm((year, month, day, hour, minute, second)) - (parsed[9] or 0)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def _first_address(value: str | None) -> tuple[str | None, str | None, str | None] | None:
    """(name, mailbox, host) of the first address of an address-list field, as ENVELOPE."""
    addresses = parse_addresses(value)
    if not isinstance(addresses, tuple) or not addresses:
        return None
    first = addresses[0]
    if not isinstance(first, tuple) or len(first) != 4:  # pragma: no cover - always 4 items
        return None
    name, _adl, mailbox, host = first
    return (
        name if isinstance(name, str) else None,
        mailbox if isinstance(mailbox, str) else None,
        host if isinstance(host, str) else None,
    )


def _mailbox(value: str | None) -> str:
    """addr-mailbox of the first address (RFC 5256 §3 CC/FROM/TO); "" without one."""
    first = _first_address(value)
    return (first[1] or "") if first is not None else ""


def _display(value: str | None) -> str:
    """RFC 5957 §2: the first address's display name, decoded, if not empty; otherwise its
    "mailbox@host"; "" without an address."""
    first = _first_address(value)
    if first is None:
        return ""
    name, mailbox, host = first
    # Only a name-addr (`phrase <addr-spec>`) has a display-name; ENVELOPE also shows the
    # obsolete `addr-spec (Name)` comment as the name, which is no display-name (RFC 5322 §3.4).
    if (
        name is not None
        and "<" in (value or "")
        and (shown := _WHITE.sub(" ", decode_words(name)).strip())
    ):
        return shown
    if mailbox is not None and host is not None:
        return f"{mailbox}@{host}"
    return mailbox or ""


_MSG_ID = re.compile(r"<([^<>]*)>")


def message_ids(value: str | None) -> list[str]:
    """The msg-ids of a Message-ID/References/In-Reply-To value, in order, without the angle
    brackets and white space. One without "@" is not an RFC 5322 §3.6.4 msg-id: skipped."""
    if value is None:
        return []
    out = []
    for m in _MSG_ID.finditer(value):
        ident = _WHITE.sub("", m[1])
        if "@" in ident and not ident.startswith("@") and not ident.endswith("@"):
            out.append(ident)
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """One searched message as SORT and THREAD see it."""

    seq: int
    info: MessageInfo
    subject: bytes  # collation key of the base subject
    is_refwd: bool  # its subject marks a reply or forward (THREAD=REFERENCES)
    date: int  # sent date, or INTERNALDATE (RFC 5256 §2.2)
    sender: bytes  # FROM: collation key of the first From addr-mailbox
    to: bytes
    cc: bytes
    display_from: bytes
    display_to: bytes
    message_id: str | None
    references: tuple[str, ...]  # References, or the first In-Reply-To msg-id if none
    # RFC822.SIZE as the client sees it when not the stored one (imap/downgrade_size.py)
    seen_size: int | None = None

    @property
    def size(self) -> int:
        return self.info.size if self.seen_size is None else self.seen_size

    @property
    def arrival(self) -> int:
        return int(self.info.internal_date)

    @classmethod
    def of(cls, seq: int, info: MessageInfo, header: bytes, size: int | None = None) -> Message:
        """Build from the message's header block (LF or CRLF; b"" when unreadable); `size`:
        the RFC822.SIZE the client sees when not the stored one."""
        data = to_crlf(header)
        fields, _ = parse_header(data, 0, len(data))
        first: dict[str, str] = {}
        for f in fields:
            first.setdefault(f.name.lower(), f.value.decode("utf-8", "surrogateescape"))
        subject, is_refwd = base_subject(first.get("subject", ""))
        date = sent_date(first.get("date"))
        ids = message_ids(first.get("message-id"))
        references = (
            message_ids(first.get("references")) or message_ids(first.get("in-reply-to"))[:1]
        )
        return cls(
            seq=seq,
            info=info,
            subject=collation_key(subject),
            is_refwd=is_refwd,
            date=int(info.internal_date) if date is None else date,
            sender=collation_key(_mailbox(first.get("from"))),
            to=collation_key(_mailbox(first.get("to"))),
            cc=collation_key(_mailbox(first.get("cc"))),
            display_from=collation_key(_display(first.get("from"))),
            display_to=collation_key(_display(first.get("to"))),
            message_id=ids[0] if ids else None,
            references=tuple(references),
            seen_size=size,
        )


@dataclass(frozen=True, slots=True)
class Criterion:
    """One sort-criterion: `["REVERSE" SP] sort-key` (RFC 5256 §4)."""

    key: str  # one of SORT_KEYS
    reverse: bool = False


_KEYS: dict[str, Callable[[Message], int | bytes]] = {
    "ARRIVAL": lambda m: m.arrival,
    "CC": lambda m: m.cc,
    "DATE": lambda m: m.date,
    "FROM": lambda m: m.sender,
    "SIZE": lambda m: m.size,  # RFC 5256 §3: RFC822.SIZE
    "SUBJECT": lambda m: m.subject,
    "TO": lambda m: m.to,
    "DISPLAYFROM": lambda m: m.display_from,
    "DISPLAYTO": lambda m: m.display_to,
}


def needs_header(criteria: Sequence[Criterion]) -> bool:
    """False when only ARRIVAL/SIZE are asked: no message needs to be read."""
    return any(c.key not in ("ARRIVAL", "SIZE") for c in criteria)


def sort(messages: Sequence[Message], criteria: Sequence[Criterion]) -> list[Message]:
    """`messages` in the order the criteria give; ties in sequence-number order."""
    ordered = sorted(messages, key=lambda m: m.seq)
    # Stable sorts from the last criterion to the first: the first decides, later ones
    # break its ties, and equal messages keep sequence order even when reversed.
    for criterion in reversed(criteria):
        ordered.sort(key=_KEYS[criterion.key], reverse=criterion.reverse)
    return ordered


# -- ESORT and PARTIAL results (RFC 5267 §3.1, §4.4) ------------------------------------------


def partial_item(numbers: Sequence[int], window: tuple[int, int], *, ordered: bool) -> str:
    """`PARTIAL (low:high set)`: the results at positions low..high (1-based) of the whole
    result, NIL when there are none; in sort order for SORT (`ordered`)."""
    low, high = window
    part = numbers[low - 1 : high]
    rendered = (compress_ordered(part) if ordered else compress(part)) or "NIL"
    return f"PARTIAL ({low}:{high} {rendered})"


def esort_items(
    numbers: Sequence[int], returns: Sequence[str], window: tuple[int, int] | None
) -> list[str]:
    """The result items of `* ESEARCH` for SORT RETURN: MIN and MAX are the first and the
    last in sort order, ALL keeps the order (only ascending runs become ranges), COUNT, and
    PARTIAL; RETURN () means ALL (as RFC 4731 §3.1 says for SEARCH)."""
    wanted = set(returns) or {"ALL"}
    items = []
    if numbers and "MIN" in wanted:
        items.append(f"MIN {numbers[0]}")
    if numbers and "MAX" in wanted:
        items.append(f"MAX {numbers[-1]}")
    if numbers and "ALL" in wanted:
        items.append(f"ALL {compress_ordered(numbers)}")
    if window is not None:
        items.append(partial_item(numbers, window, ordered=True))
    if "COUNT" in wanted:
        items.append(f"COUNT {len(numbers)}")
    return items
