"""FETCH attributes and SEARCH keys: the values inside FETCH, SEARCH, SORT and THREAD commands.

Split from `imap.commands` (which re-exports every name) to keep each file short; plain values,
no I/O. RFCs: 3501/9051 §6.4.4-6.4.5, 3516 BINARY, 7162 MODSEQ.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from mailstack.imap.sequence import SequenceSet

# -- FETCH ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """A body section spec (RFC 9051 §6.4.5), the part between "[" and "]".

        section-spec  = section-msgtext / (section-part ["." section-text])
        section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
        section-text  = section-msgtext / "MIME"

    `part` is the part path ((), i.e. the whole message, for "BODY[]" and "BODY[HEADER]";
    (1, 2) for "BODY[1.2]"). `text` is None (the whole part), "HEADER", "HEADER.FIELDS",
    "HEADER.FIELDS.NOT", "TEXT" or "MIME". `fields` lists header names (upper-cased) for
    HEADER.FIELDS and HEADER.FIELDS.NOT.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        pieces = [".".join(str(p) for p in self.part)] if self.part else []
        if self.text is not None:
            pieces.append(self.text)
        spec = ".".join(pieces)
        if self.fields:
            spec += " (" + " ".join(self.fields) + ")"
        return spec


# Names of FETCH attributes (RFC 9051 §6.4.5, RFC 3501 §6.4.5 for the RFC822 forms).
FETCH_NAMES = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "RFC822.SIZE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "BINARY",
        "BINARY.SIZE",
        "MODSEQ",  # RFC 7162 §3.1.4.1
    }
)


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """One FETCH data item.

    `name` is one of FETCH_NAMES. "BODY" with `section` None is the non-extensible
    BODYSTRUCTURE; "BODY" with a section is `BODY[section]<partial>` (`peek` for BODY.PEEK,
    which does not set \\Seen). "BINARY"/"BINARY.SIZE" carry a section with only `part`.
    `partial` is (offset, count) from `<offset.count>`.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False

    @property
    def sets_seen(self) -> bool:
        """Does fetching this set \\Seen? (RFC 9051 §6.4.5: BODY[...], BINARY[...], RFC822,
        RFC822.TEXT do; .PEEK forms and everything else do not.)"""
        if self.name in ("BODY", "BINARY"):
            return self.section is not None and not self.peek
        return self.name in ("RFC822", "RFC822.TEXT")

    def response_name(self) -> str:
        """How the item is named in the FETCH response: `BODY[1.HEADER]<0>` for
        BODY.PEEK[1.HEADER]<0.100> (RFC 9051 §7.5.2: no PEEK, only the partial's origin)."""
        if self.section is None:
            return self.name
        name = f"{self.name}[{self.section}]"
        if self.partial is not None:
            name += f"<{self.partial[0]}>"
        return name


# RFC 9051 §6.4.5 macros.
FETCH_MACROS: dict[str, tuple[FetchAttr, ...]] = {
    "ALL": (
        FetchAttr("FLAGS"),
        FetchAttr("INTERNALDATE"),
        FetchAttr("RFC822.SIZE"),
        FetchAttr("ENVELOPE"),
    ),
    "FAST": (FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE")),
    "FULL": (
        FetchAttr("FLAGS"),
        FetchAttr("INTERNALDATE"),
        FetchAttr("RFC822.SIZE"),
        FetchAttr("ENVELOPE"),
        FetchAttr("BODY"),
    ),
}


# -- SEARCH ---------------------------------------------------------------------------------
# RFC 9051 §6.4.4. The parser desugars NEW into And(Recent, Not(Seen)), OLD into
# Not(Recent), and a parenthesised list or a run of keys into SearchAnd.


@dataclass(frozen=True, slots=True)
class SearchAll:
    """ALL (and the empty conjunction)."""


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A flag test: ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, RECENT, KEYWORD k (flag=k) and
    their UN- forms (`is_set` False). `flag` is "\\Seen" etc. for system flags,
    "\\Recent" for RECENT, the keyword otherwise."""

    flag: str
    is_set: bool = True


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """Substring of a header field, case-insensitive (RFC 9051 §6.4.4). BCC, CC, FROM,
    SUBJECT, TO map to their field names ("Bcc", "Cc", "From", "Subject", "To"); HEADER f s
    keeps f as given. An empty `value` matches every message that has the field.
    `address` (FROM, TO, CC, BCC): match the parsed addresses, as ENVELOPE shows them."""

    field: str
    value: str
    address: bool = False


@dataclass(frozen=True, slots=True)
class SearchText:
    """BODY s (where="BODY": the text after the header) or TEXT s (where="TEXT": header and
    body). Case-insensitive substring."""

    where: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchDate:
    """BEFORE/ON/SINCE (internal date, `sent` False) or SENTBEFORE/SENTON/SENTSINCE (the
    Date: header, `sent` True). `op` is "BEFORE", "ON" or "SINCE". Dates compare as calendar
    dates, ignoring time and timezone (RFC 9051 §6.4.4)."""

    op: str
    date: datetime.date
    sent: bool = False


@dataclass(frozen=True, slots=True)
class SearchSize:
    """LARGER n (op="LARGER": RFC822.SIZE > n) or SMALLER n (op="SMALLER": size < n)."""

    op: str
    size: int


@dataclass(frozen=True, slots=True)
class SearchSeq:
    """A sequence set of message numbers (`uid` False) or UID s (`uid` True). A "$" set is
    replaced by the session with the saved result before evaluation (RFC 5182)."""

    seqset: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModseq:
    """RFC 7162 §3.1.5 MODSEQ [entry-name entry-type] n: MODSEQ >= n. We keep one MODSEQ
    per message (no per-flag ones), so the optional entry name and type change nothing."""

    modseq: int


@dataclass(frozen=True, slots=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAnd:
    keys: tuple[SearchKey, ...]


SearchKey = (
    SearchAll
    | SearchFlag
    | SearchHeader
    | SearchText
    | SearchDate
    | SearchSize
    | SearchSeq
    | SearchModseq
    | SearchNot
    | SearchOr
    | SearchAnd
)
