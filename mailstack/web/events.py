"""Recent deliveries and rejections for the admin page, taken from the log records that
delivery and SMTP already write (one INFO line per delivery, per refused MAIL/RCPT, per
outbound result), kept in a ring buffer in memory: nothing new is written to disk, and a
restart starts the list afresh.

Only what happens in this process is seen: with `smtp.workers`, port 25 sessions run in worker
processes whose refusals stay in their own log.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass

MAX_EVENTS = 50

# Which log lines are events, by the logger's message template (the lines' wording is theirs):
# an SMTP transaction's one line (smtp/session.py), a refused MAIL or RCPT, local delivery of
# queued mail, an outbound attempt's result per recipient (delivery/queue.py).
_TRANSACTION = "result=%s"
_KINDS = (
    ("mailstack.smtp", _TRANSACTION, "delivered"),  # or "rejected": see _kind
    ("mailstack.smtp", "refused", "rejected"),
    ("mailstack.delivery.local", "local delivery:", "delivered"),
    ("mailstack.delivery.queue", "queue: %s: %s %s: %s", "outbound"),
)


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    kind: str  # delivered | rejected | outbound
    text: str


class RecentEvents(logging.Handler):
    def __init__(self, maxlen: int = MAX_EVENTS) -> None:
        super().__init__(logging.INFO)
        self.events: deque[Event] = deque(maxlen=maxlen)

    def emit(self, record: logging.LogRecord) -> None:
        template = str(record.msg)
        for prefix, needle, kind in _KINDS:
            if record.name.startswith(prefix) and needle in template:
                try:
                    text = record.getMessage()
                except (TypeError, ValueError):  # a malformed record: skip it, never raise
                    return
                args = record.args if isinstance(record.args, tuple) else ()
                if needle == _TRANSACTION and not (args and str(args[-1]).startswith("2")):
                    kind = "rejected"  # the reply to DATA (the last argument) was 4xx/5xx
                self.events.append(Event(record.created or time.time(), kind, text))
                return

    def latest(self) -> list[Event]:
        return list(reversed(self.events))
