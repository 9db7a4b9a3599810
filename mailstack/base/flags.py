"""Message flags and how STORE applies them: the same words for IMAP (RFC 9051 §2.3.2,
§6.4.6) and the store (Maildir info letters), so the IMAP core and the store share them from the
ground floor instead of the protocol reaching into the store. Pure."""

from __future__ import annotations

import enum


class Flag(enum.StrEnum):
    """System flags (RFC 9051 §2.3.2) and their Maildir info letters."""

    SEEN = "\\Seen"
    ANSWERED = "\\Answered"
    FLAGGED = "\\Flagged"
    DELETED = "\\Deleted"
    DRAFT = "\\Draft"


class FlagMode(enum.Enum):
    """How STORE applies flags (RFC 9051 §6.4.6)."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"
