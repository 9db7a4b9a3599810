"""The outbound queue's per-message state: the envelope and each recipient's progress, and
its JSON form in `queue/state/<id>.json`. Pure: no I/O (delivery/queue.py reads and writes it).

A state file is read back strictly: an unknown version, a missing or mistyped field is a
ValueError, and the queue leaves such a message alone (and says so) rather than guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

Status = Literal["pending", "delivered", "failed"]
STATUSES: tuple[Status, ...] = ("pending", "delivered", "failed")

STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Recipient:
    address: str
    status: Status = "pending"
    attempts: int = 0
    next_attempt: float = 0.0  # Unix time; due when <= now
    last_reply: str = ""
    remote_mta: str = ""
    warned: bool = False  # a "delayed" DSN went out


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued message's state file."""

    id: str
    mail_from: str
    created: float
    recipients: tuple[Recipient, ...]
    size: int = 0
    user: str = ""  # the authenticated account that submitted it; "" if none

    @property
    def is_done(self) -> bool:
        return all(r.status != "pending" for r in self.recipients)

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "id": self.id,
            "mail_from": self.mail_from,
            "created": self.created,
            "size": self.size,
            "user": self.user,
            "recipients": [
                {f: getattr(r, f) for f in Recipient.__dataclass_fields__} for r in self.recipients
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), ensure_ascii=False, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Entry:
        """Parse a state file; ValueError naming what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ValueError("not a version 1 queue state")
        try:
            recipients = tuple(_recipient(r) for r in data["recipients"])
            entry = cls(
                id=_typed(data["id"], str),
                mail_from=_typed(data["mail_from"], str),
                created=float(_typed(data["created"], int | float)),
                size=_typed(data["size"], int),
                user=_typed(data.get("user", ""), str),  # absent in files written before it
                recipients=recipients,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"bad queue state: {exc!r}") from None
        if not recipients:
            raise ValueError("bad queue state: no recipients")
        return entry


def _typed(value: Any, tp: Any) -> Any:
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        raise TypeError(f"expected {tp}, got {value!r}")
    return value


def _recipient(raw: Any) -> Recipient:
    if not isinstance(raw, dict):
        raise TypeError(f"recipient must be an object, got {raw!r}")
    status = _typed(raw["status"], str)
    if status not in STATUSES:
        raise TypeError(f"unknown status {status!r}")
    return Recipient(
        address=_typed(raw["address"], str),
        status=cast(Status, status),
        attempts=_typed(raw["attempts"], int),
        next_attempt=float(_typed(raw["next_attempt"], int | float)),
        last_reply=_typed(raw["last_reply"], str),
        remote_mta=_typed(raw["remote_mta"], str),
        warned=_typed(raw["warned"], bool),
    )
