"""An account's auto-reply ("vacation"): its settings, and RFC 3834's rules for when to answer.

The settings live in the account's Maildir root as `mailstack-vacation.json` (beside Dovecot's
own `dovecot-*` files, which it ignores), so they move and go with the mailbox. The web page
writes them; `should_reply` is the pure decision local delivery applies before answering.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from email.message import Message
from pathlib import Path

from mailstack.base.fsutil import atomic_write

FILE_NAME = "mailstack-vacation.json"
SENT_FILE_NAME = "mailstack-vacation-sent.json"  # who was answered when (delivery/autoreply.py)
MAX_SUBJECT_CHARS = 200
MAX_BODY_CHARS = 10_000
# RFC 3834 §4: "once per sender per N days"; it suggests 7 as the default interval.
DEFAULT_DAYS = 7
MAX_DAYS = 365


@dataclass(frozen=True, slots=True)
class Vacation:
    enabled: bool = False
    subject: str = "Out of office"
    body: str = ""
    days: int = DEFAULT_DAYS  # answer one sender at most once in this many days


def path_for(maildir_root: Path) -> Path:
    return maildir_root / FILE_NAME


def load(maildir_root: Path) -> Vacation:
    """The saved settings, or the defaults (off) when none or unreadable."""
    try:
        data = json.loads(path_for(maildir_root).read_text(encoding="utf-8"))
        return Vacation(
            enabled=bool(data["enabled"]),
            subject=str(data["subject"]),
            body=str(data["body"]),
            days=int(data["days"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return Vacation()


def validate(vacation: Vacation) -> str | None:
    """What is wrong with the settings, in words for the person who typed them, or None."""
    if not 1 <= vacation.days <= MAX_DAYS:
        return f"answer each sender once in 1 to {MAX_DAYS} days"
    if len(vacation.subject) > MAX_SUBJECT_CHARS or any(c in vacation.subject for c in "\r\n"):
        return f"the subject must be one line of at most {MAX_SUBJECT_CHARS} characters"
    if len(vacation.body) > MAX_BODY_CHARS:
        return f"the message may have at most {MAX_BODY_CHARS} characters"
    if vacation.enabled and not vacation.body.strip():
        return "an auto-reply needs a message"
    return None


def save(maildir_root: Path, vacation: Vacation) -> None:
    """Write the settings atomically (fsync'd); raises ValueError when they are invalid."""
    if (problem := validate(vacation)) is not None:
        raise ValueError(problem)
    atomic_write(path_for(maildir_root), json.dumps(asdict(vacation)) + "\n", mode=0o600)
    # New settings, a new absence: everyone may get the new message once.
    (maildir_root / SENT_FILE_NAME).unlink(missing_ok=True)


# RFC 3834 §2: answer neither list traffic nor robots; these local parts are robots by custom.
_ROBOT_LOCAL = re.compile(
    r"^(mailer-daemon|postmaster|listserv|majordomo|owner-.*|.*-request|.*-owner|"
    r"no-?reply|do-?not-?reply|bounces?(\+.*)?|.*-bounces?)$",
    re.IGNORECASE,
)


def should_reply(message: Message, mail_from: str, recipients: set[str]) -> bool:
    """RFC 3834 §2: may an automatic reply go to `mail_from` for this message?

    `recipients`: the account's own addresses (the reply is only for mail addressed to the
    person, §2 "recipient's address in To or Cc")."""
    if not mail_from or "@" not in mail_from:  # <>: a bounce or another auto-reply (§2)
        return False
    if _ROBOT_LOCAL.match(mail_from.rpartition("@")[0]):
        return False
    auto = (message.get("Auto-Submitted") or "no").strip().lower()
    if not auto.startswith("no"):  # §5: anything but "no" was sent by a program
        return False
    if any(message.get(h) is not None for h in ("List-Id", "List-Unsubscribe", "List-Post")):
        return False  # RFC 2369/2919 list traffic
    if (message.get("Precedence") or "").strip().lower() in {"bulk", "list", "junk"}:
        return False  # by long custom (§2 mentions Precedence as a hint)
    if message.get("X-Auto-Response-Suppress") is not None:
        return False  # Microsoft's equivalent of Auto-Submitted, honoured as Exchange does
    addressed = " ".join(str(message.get_all(h) or "") for h in ("To", "Cc")).lower()
    return any(r.lower() in addressed for r in recipients)
