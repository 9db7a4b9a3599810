"""Auto-replies ("vacation"): after local delivery, answer the sender once per N days if the
account asked for it (mailstack/base/vacation.py holds the settings and RFC 3834's rules).

RFC 3834 in short, as applied here: answer only mail addressed to the person (their address
or an alias of theirs in To/Cc, §2), never a null sender, a list, a robot or another automatic
message (§2, §5); send from `<>` (§3.3) to the envelope sender (§3.1.1), with
`Auto-Submitted: auto-replied` (§5.2), In-Reply-To and References (§3.1.3, §3.1.4), at most
once per sender in `days` days (§2: "a response SHOULD NOT be sent more than once in a period").
Mail filed as junk gets no answer (a spammer's forged sender would receive it).

Who was answered when lives beside the settings in the Maildir (`mailstack-vacation-sent.json`,
bounded); saving new settings starts afresh. Blocking (files, the queue): callers use a thread.
A failure here never fails the delivery: it is logged and the message stays delivered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.parser import BytesHeaderParser
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Protocol

from mailstack.base import vacation
from mailstack.base.fsutil import atomic_write
from mailstack.base.paths import StatePaths

log = logging.getLogger(__name__)

MAX_SENDERS = 5000  # remembered per account; the oldest are forgotten first
_LOCK = threading.Lock()  # one read-modify-write of a sent file at a time in this process


class Enqueue(Protocol):
    def enqueue(
        self, mail_from: str, rcpts: Sequence[str], message: bytes, *, sign: bool = True
    ) -> str: ...


def sent_path(maildir_root: Path) -> Path:
    return maildir_root / vacation.SENT_FILE_NAME


def _claim(root: Path, sender: str, days: int, now: float) -> bool:
    """Record that `sender` is answered now, unless they were within `days`: True to answer."""
    key = sender.lower()
    with _LOCK:
        try:
            sent = json.loads(sent_path(root).read_text(encoding="utf-8"))
            if not isinstance(sent, dict):
                sent = {}
        except (OSError, ValueError):
            sent = {}
        last = sent.get(key)
        if isinstance(last, int | float) and now - last < days * 86400:
            return False
        sent = {
            k: v for k, v in sent.items() if isinstance(v, int | float) and now - v < 366 * 86400
        }
        sent[key] = now
        if len(sent) > MAX_SENDERS:
            sent = dict(sorted(sent.items(), key=lambda kv: kv[1])[-MAX_SENDERS:])
        atomic_write(sent_path(root), json.dumps(sent), mode=0o600)
        return True


def build_reply(
    settings: vacation.Vacation, mailbox: str, to: str, original_header: bytes, now: float
) -> bytes:
    original = BytesHeaderParser().parsebytes(original_header)
    reply = EmailMessage(policy=SMTP)
    reply["From"] = mailbox
    reply["To"] = to
    reply["Subject"] = settings.subject
    reply["Date"] = formatdate(now, localtime=False)
    reply["Message-ID"] = make_msgid(domain=mailbox.rpartition("@")[2])
    reply["Auto-Submitted"] = "auto-replied"  # RFC 3834 §5.2
    if (msgid := (original.get("Message-ID") or "").strip()) and "\n" not in msgid:
        reply["In-Reply-To"] = msgid  # RFC 3834 §3.1.3
        refs = " ".join((original.get("References") or "").split())
        reply["References"] = f"{refs} {msgid}".strip()  # §3.1.4
    reply.set_content(settings.body if settings.body.endswith("\n") else settings.body + "\n")
    return reply.as_bytes()


def answer(
    paths: StatePaths,
    queue: Enqueue,
    *,
    mail_from: str,
    recipients: Sequence[tuple[str, Sequence[str]]],
    header: bytes,
    now: float | None = None,
) -> list[str]:
    """Queue an auto-reply from each delivered-to mailbox that has one on; their addresses.

    `recipients`: (envelope recipient, mailboxes it reached), as local delivery got them;
    `header`: the message's header section as delivered."""
    now = time.time() if now is None else now
    message = BytesHeaderParser().parsebytes(header)
    addresses: dict[str, set[str]] = {}  # mailbox -> the addresses that reached it
    for rcpt, mailboxes in recipients:
        for mailbox in mailboxes:
            addresses.setdefault(mailbox, {mailbox}).add(rcpt)
    answered = []
    for mailbox, own in addresses.items():
        root = paths.maildir(mailbox)
        settings = vacation.load(root)
        if not settings.enabled or not vacation.should_reply(message, mail_from, own):
            continue
        if not _claim(root, mail_from, settings.days, now):
            continue
        reply = build_reply(settings, mailbox, mail_from, header, now)
        qid = queue.enqueue("", [mail_from], reply, sign=True)  # RFC 3834 §3.3: from <>
        log.info("auto-reply from %s to %s queued as %s", mailbox, mail_from, qid)
        answered.append(mailbox)
    return answered


def answer_safely(
    paths: StatePaths,
    queue: Enqueue,
    mail_from: str,
    recipients: Sequence[tuple[str, Sequence[str]]],
    header: bytes,
) -> None:
    """`answer`, with any failure logged: the message is delivered whatever happens here."""
    try:
        answer(paths, queue, mail_from=mail_from, recipients=recipients, header=header)
    except Exception:
        log.exception("auto-reply failed (the message itself was delivered)")


_PENDING: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks


def schedule(
    paths: StatePaths,
    queue: Enqueue | None,
    *,
    mail_from: str,
    recipients: Sequence[tuple[str, Sequence[str]]],
    header: bytes,
) -> None:
    """After a delivery has been answered 250: answer it in a thread if any mailbox it went
    to has auto-reply settings. That look is one stat per mailbox, on the loop: cheaper than a
    thread hop for the many messages that need no answer."""
    if queue is None or not mail_from:
        return
    mailboxes = {m for _, boxes in recipients for m in boxes}
    if not any(vacation.path_for(paths.maildir(m)).exists() for m in mailboxes):
        return
    work = asyncio.to_thread(answer_safely, paths, queue, mail_from, recipients, header)
    task = asyncio.get_running_loop().create_task(work, name="auto-reply")
    _PENDING.add(task)
    task.add_done_callback(_PENDING.discard)
