"""The seam between the SMTP receiver and inbound checks (SPF, DKIM, DMARC, spam filters).

After the message is received and before anything is stored, `smtp.handler` awaits one
`Verifier`:

    verdict = await verify(session_info, envelope, message_bytes)

and acts on the `Verdict`: prepends `header_lines` (e.g. `Authentication-Results:`, RFC 8601)
to every delivered copy, then

- `DELIVER`  stores into INBOX and answers 250,
- `JUNK`     stores into the Junk folder and answers 250,
- `REJECT`   answers `verdict.reply` (a 5xx, e.g. 550 5.7.1 for DMARC p=reject), stores nothing,
- `TEMPFAIL` answers `verdict.reply` (a 4xx, e.g. 451 4.7.5 when DNS timed out), stores nothing.

A verifier must not raise for anything the message or the network can cause; if it does,
the handler answers 451 4.3.0 (never a 5xx for our own failure, STYLE.md). The default
`accept_all` delivers with no header. `message` is the message as received (CRLF line endings,
dot-unstuffed), without the headers the receiver itself prepends.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from mailstack.smtp.replies import REJECTED, TEMPFAIL, Reply


class Disposition(enum.Enum):
    DELIVER = "deliver"
    JUNK = "junk"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What the receiver knows about the client when the message arrives."""

    connection_id: str
    peer_ip: str  # the client's address as a string, "203.0.113.5" or "2001:db8::1"
    peer_port: int
    helo: str  # the HELO/EHLO argument, as sent
    is_esmtp: bool
    tls_version: str | None  # "TLSv1.3" when STARTTLS was used, else None
    tls_cipher: str | None
    authenticated_as: str | None  # never set on port 25; submission sets it


@dataclass(frozen=True, slots=True)
class EnvelopeInfo:
    """The SMTP envelope (RFC 5321 §2.3.1): MAIL FROM and the accepted RCPT TOs."""

    mail_from: str  # "" for the null reverse-path <>
    rcpt_tos: tuple[str, ...]
    smtp_utf8: bool = False
    body_8bit: bool = False  # BODY=8BITMIME was given


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a received message.

    `header_lines` are whole header fields without their final CRLF (continuation lines
    joined with CRLF + whitespace allowed), ASCII or UTF-8. Each stored copy reads, top down:
    Return-Path, Delivered-To, `header_lines` in order, our Received, the original message
    (RFC 8601 §5: Authentication-Results is prepended after the receiving Received).
    `reply` is used for REJECT and TEMPFAIL (a generic one when None).
    `message`, when set, replaces the received message for storage (e.g. with forged
    Authentication-Results removed, RFC 8601 §5); None stores the message as received.
    """

    disposition: Disposition = Disposition.DELIVER
    header_lines: tuple[str, ...] = ()
    reply: Reply | None = None
    message: bytes | None = None

    def __post_init__(self) -> None:
        if self.reply is None:
            return
        if self.disposition is Disposition.REJECT and not self.reply.is_permanent:
            raise ValueError("a REJECT verdict needs a 5xx reply")
        if self.disposition is Disposition.TEMPFAIL and not self.reply.is_transient:
            raise ValueError("a TEMPFAIL verdict needs a 4xx reply")

    @property
    def effective_reply(self) -> Reply | None:
        """The reply for REJECT/TEMPFAIL (a generic one if none was given); None otherwise."""
        if self.disposition is Disposition.REJECT:
            return self.reply or REJECTED
        if self.disposition is Disposition.TEMPFAIL:
            return self.reply or TEMPFAIL
        return None


DELIVER = Verdict()


class Verifier(Protocol):
    async def __call__(
        self, session: SessionInfo, envelope: EnvelopeInfo, message: bytes
    ) -> Verdict: ...


async def accept_all(session: SessionInfo, envelope: EnvelopeInfo, message: bytes) -> Verdict:
    """The default verifier: deliver, add no header."""
    return DELIVER
