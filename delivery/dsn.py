"""Pure builder of delivery status notifications (RFC 3464, RFC 3462/6522 multipart/report).

A DSN is a `multipart/report; report-type=delivery-status` with three parts:

    1. text/plain                 what happened, for a human
    2. message/delivery-status    per-message fields (Reporting-MTA, Arrival-Date), then one
                                  block per recipient (Final-Recipient, Action, Status,
                                  Remote-MTA, Diagnostic-Code, Last-Attempt-Date)
    3. text/rfc822-headers        the original message's header (RFC 3462 §3: not the body,
                                  which the sender already has and which may be large)

Invariants: no I/O (the caller queues the result with a null envelope sender, RFC 5321 §4.5.5);
`needs_dsn` refuses a null sender `<>`, so a bounce never bounces (loops). Status codes are
RFC 3463 enhanced codes taken from the remote reply when it carries one.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import Literal

_ENHANCED = re.compile(r"^\s*\d{3}[ -]([245]\.\d{1,3}\.\d{1,3})\b")

Action = Literal["failed", "delayed"]


@dataclass(frozen=True, slots=True)
class DsnRecipient:
    address: str
    action: Action
    reply: str  # the last SMTP reply, "550 5.1.1 no such user", or our own words for local errors
    remote_mta: str = ""  # the host that gave the reply, if any

    @property
    def status(self) -> str:
        """RFC 3463 status: the reply's enhanced code, else the class from the basic code."""
        if m := _ENHANCED.match(self.reply):
            return m[1]
        if self.action == "delayed":
            return "4.0.0"
        return "5.0.0"


def needs_dsn(mail_from: str) -> bool:
    """RFC 5321 §4.5.5 / RFC 3464 §2: never a DSN to the null reverse-path."""
    return bool(mail_from.strip().strip("<>"))


def _header_block(message: bytes) -> bytes:
    """The original header, up to (not including) the blank line; CRLF line ends."""
    m = re.search(rb"\r?\n\r?\n", message)
    head = message[: m.start()] if m else message
    return b"\r\n".join(head.splitlines()) + b"\r\n"


def _xtext_free(value: str) -> str:
    """Field values stay on one line: a reply with CR/LF must not inject fields."""
    return " ".join(value.split())


def build_dsn(
    *,
    reporting_mta: str,
    from_address: str,
    to: str,
    original: bytes,
    recipients: Sequence[DsnRecipient],
    arrival: datetime,
    now: datetime,
) -> bytes:
    """The DSN message (CRLF line ends) reporting on `recipients` of `original` to `to`."""
    if not recipients:
        raise ValueError("a DSN reports on at least one recipient")
    failed = any(r.action == "failed" for r in recipients)
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    subject = (
        "Undelivered Mail Returned to Sender" if failed else "Delayed Mail (still being retried)"
    )
    lines = [
        f"From: Mail Delivery System <{from_address}>",
        f"To: <{to}>",
        f"Subject: {subject}",
        f"Date: {format_datetime(now)}",
        f"Message-ID: <{secrets.token_hex(12)}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",  # RFC 3834 §5: responders must not answer this
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at {reporting_mta}.",
        "",
    ]
    if failed:
        lines += [
            "Your message could not be delivered to one or more recipients.",
            "It has been returned without its body; the headers are attached.",
            "",
        ]
    else:
        lines += [
            "Your message has not been delivered yet to the recipients below.",
            "The mail system will keep trying; you need not send it again.",
            "",
        ]
    for r in recipients:
        lines.append(f"<{r.address}>: {r.action}: {_xtext_free(r.reply)}")
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        # RFC 3464 §2.2: per-message fields
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {format_datetime(arrival)}",
    ]
    for r in recipients:
        # RFC 3464 §2.3: per-recipient fields, each block preceded by a blank line
        lines += [
            "",
            f"Final-Recipient: rfc822; {r.address}",
            f"Action: {r.action}",
            f"Status: {r.status}",
        ]
        if r.remote_mta:
            lines.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.reply:
            lines.append(f"Diagnostic-Code: smtp; {_xtext_free(r.reply)}")
        lines.append(f"Last-Attempt-Date: {format_datetime(now)}")
    head = _header_block(original)
    is_8bit = not head.isascii()
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        *(["Content-Transfer-Encoding: 8bit"] if is_8bit else []),
        "",
    ]
    text = "\r\n".join(lines).encode("utf-8") + b"\r\n"
    return text + head + f"\r\n--{boundary}--\r\n".encode("ascii")
