"""Pure policy decisions of the MX: which recipients, senders, greetings and messages we take.

Every function takes facts the handler has looked up (hosted domain? resolved mailboxes? over
quota?) and returns a `Reply` to send, or None to carry on. No I/O, no asyncio: the handler
does the lookups, these functions decide, so every decision is tested as a table.

Recipient order follows Postfix's smtpd restrictions: a blocklisted client is refused before
anything else, then the recipient limit, relaying, unknown users, and finally quota.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mailstack.smtp import replies
from mailstack.smtp.replies import Reply

from mailstack.base.config import is_fqdn


@dataclass(frozen=True, slots=True)
class RecipientFacts:
    """What the handler found out about one RCPT TO address."""

    is_hosted_domain: bool
    mailboxes: tuple[str, ...]  # local mailboxes `Accounts.resolve` gave (aliases expanded)
    forwards: tuple[str, ...] = ()  # external targets of aliases (need the outbound queue)
    over_quota: tuple[str, ...] = ()  # mailboxes among `mailboxes` that are already full


def check_recipient(
    facts: RecipientFacts,
    *,
    authenticated: bool,
    accepted_so_far: int,
    max_recipients: int,
    blocklisted_by: str | None = None,
    peer_ip: str = "",
    can_forward: bool = False,
) -> Reply:
    """The reply to `RCPT TO` (RFC 5321 §3.3, codes from RFC 3463).

    `can_forward`: an outbound queue takes aliases' external targets; without one such a
    recipient is deferred (451), never accepted with part of its targets dropped.
    """
    if blocklisted_by is not None:
        return replies.blocklisted(peer_ip, blocklisted_by)  # 554 5.7.1
    if accepted_so_far >= max_recipients:
        # RFC 5321 §4.5.3.1.10: 452 makes the client send the rest in another transaction.
        return replies.TOO_MANY_RECIPIENTS  # 452 4.5.3
    if not facts.is_hosted_domain:
        # An MX never relays for unauthenticated clients (RFC 5321 §3.6.2, RFC 2505).
        return replies.RCPT_OK if authenticated else replies.RELAY_DENIED  # 554 5.7.1
    if facts.forwards and not can_forward:
        return replies.LOCAL_ERROR.with_text("Forwarding is not available here, try later")
    if not facts.mailboxes and not facts.forwards:
        return replies.NO_SUCH_USER  # 550 5.1.1
    if facts.over_quota:
        return replies.OVER_QUOTA  # 452 4.2.2
    return replies.RCPT_OK


def check_declared_size(declared: int | None, max_message_size: int) -> Reply | None:
    """MAIL FROM ... SIZE=n (RFC 1870 §6): refuse up front what DATA would refuse anyway."""
    if declared is not None and max_message_size and declared > max_message_size:
        return replies.MESSAGE_TOO_BIG  # 552 5.3.4
    return None


def is_valid_helo(name: str) -> bool:
    """A FQDN or an address literal (RFC 5321 §4.1.1.1, §4.1.3)."""
    if name.startswith("[") and name.endswith("]"):
        inner = name[1:-1]
        if inner[:5].lower() == "ipv6:":
            inner = inner[5:]
            try:
                return ipaddress.ip_address(inner).version == 6
            except ValueError:
                return False
        try:
            return ipaddress.ip_address(inner).version == 4
        except ValueError:
            return False
    return is_fqdn(name)


def check_helo(name: str, *, reject_invalid: bool) -> Reply | None:
    if not name.strip():
        return replies.SYNTAX_ERROR.with_text("Syntax: EHLO hostname")
    if reject_invalid and not is_valid_helo(name):
        return replies.INVALID_HELO  # 501 5.5.2, as Postfix's reject_invalid_helo_hostname
    return None


def check_received_count(count: int, max_received_headers: int) -> Reply | None:
    """RFC 5321 §6.3: a message with too many Received headers is looping."""
    if count > max_received_headers:
        return replies.TOO_MANY_HOPS  # 554 5.4.6
    return None


# -- submission (RFC 6409) -----------------------------------------------------------------------

MUST_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")  # RFC 3207 §4
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")  # RFC 4954 §6
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")
FROM_NOT_OWNED = Reply(550, "5.7.1", "From: header address rejected: not owned by user")
FROM_MISSING = Reply(550, "5.6.0", "Message has no From: header (RFC 5322 §3.6)")
RESENT_FROM_NOT_OWNED = Reply(
    550, "5.7.1", "Resent-From: header address rejected: not owned by user"
)
QUEUE_UNAVAILABLE = Reply(451, "4.3.0", "Outbound mail is not available now, try later")


def check_sender(address: str, *, owned: bool) -> Reply | None:
    """MAIL FROM on submission (RFC 6409 §6.1): only an address the user owns (their own, a
    +detail of it, an alias reaching them). The null path `<>` is for bounces, which users
    do not send: refused like any address they do not own."""
    if not address or not owned:
        return SENDER_NOT_OWNED
    return None


def check_from_header(owned: list[bool]) -> Reply | None:
    """The From: header on submission: one ownership answer per address it lists. Every
    author must be the user (RFC 6409 §6.1 lets the MSA enforce this), and there must be one
    (RFC 5322 §3.6: From: is required)."""
    if not owned:
        return FROM_MISSING
    if not all(owned):
        return FROM_NOT_OWNED
    return None


def check_resent_from_header(owned: list[bool]) -> Reply | None:
    """Resent-From: on submission (RFC 5322 §3.6.6: the author of a resending): checked as
    From: is, or anyone could resend mail in another user's name, signed by us. Optional."""
    return None if all(owned) else RESENT_FROM_NOT_OWNED


def check_submission_recipient(
    facts: RecipientFacts, *, accepted_so_far: int, max_recipients: int, can_queue: bool
) -> Reply:
    """RCPT TO from an authenticated user: local mailboxes are checked as on the MX; foreign
    addresses (and aliases forwarding outside) need the outbound queue."""
    if accepted_so_far >= max_recipients:
        return replies.TOO_MANY_RECIPIENTS  # 452 4.5.3
    if not facts.is_hosted_domain or facts.forwards:
        if not can_queue:
            return QUEUE_UNAVAILABLE
        if not facts.is_hosted_domain:
            return replies.RCPT_OK
    if not facts.mailboxes and not facts.forwards:
        return replies.NO_SUCH_USER  # 550 5.1.1
    if facts.over_quota:
        return replies.OVER_QUOTA  # 452 4.2.2
    return replies.RCPT_OK
