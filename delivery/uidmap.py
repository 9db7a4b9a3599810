"""`dovecot-uidlist` version 3: the UID <-> file name map of one Maildir folder.

The format (Dovecot's docs, admin_manual/mailbox_formats/maildir):

    3 V<uidvalidity> N<nextuid> G<128-bit mailbox guid in hex>
    <uid> [<ext>...] :<last known file name>

Header fields may come in any order and others may follow; record extension fields (`W<vsize>`,
`G<guid>`, ...) sit between the UID and the ":". The file name is the last one known; flags
change it, so records are matched on the base name (before ":2,"). Writers hold
`dovecot-uidlist.lock`; they may append lines to the file, otherwise they replace it by
renaming the lock file over it. After appends the header's N may lag, so the next UID is the
larger of N and the last UID + 1.

This module is pure: it parses and serialises; `delivery/maildir.py` does the file work.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

VERSION = 3


class UidListError(ValueError):
    """The file is not a dovecot-uidlist we understand."""


def base_name(file_name: str) -> str:
    """A Maildir file name without its ":2,<flags>" info (the part that never changes).

    Interned: an open folder keys several maps by it (delivery/index.py), and one shared
    string per message instead of a copy per map saves about 100 bytes a copy."""
    return sys.intern(file_name.split(":", 1)[0])


def new_guid() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True, slots=True)
class UidRecord:
    uid: int
    name: str  # last known file name (may carry ":2,<flags>")
    ext: str = ""  # extension fields as read, e.g. "W2481", kept verbatim on rewrite

    @property
    def base(self) -> str:
        return base_name(self.name)

    def line(self) -> str:
        ext = f" {self.ext}" if self.ext else ""
        return f"{self.uid}{ext} :{self.name}\n"


@dataclass(slots=True)
class UidList:
    """One parsed uidlist; records in UID order."""

    uid_validity: int
    next_uid: int = 1
    guid: str = field(default_factory=new_guid)
    records: list[UidRecord] = field(default_factory=list)
    extra_header: tuple[str, ...] = ()  # header fields we do not interpret, kept on rewrite

    @classmethod
    def parse(cls, data: bytes) -> UidList:
        """Parse a whole file; an unterminated last line (a torn append) is ignored."""
        text = data.decode("utf-8", "surrogateescape")
        lines = text.split("\n")
        lines.pop()  # "" after the last "\n", or the unterminated tail
        if not lines:
            raise UidListError("empty dovecot-uidlist")
        fields = lines[0].split()
        if not fields or fields[0] != str(VERSION):
            raise UidListError(f"unsupported dovecot-uidlist header: {lines[0]!r}")
        uid_validity, next_uid, guid, extra = 0, 1, "", []
        for item in fields[1:]:
            key, value = item[:1], item[1:]
            if key == "V" and value.isdigit():
                uid_validity = int(value)
            elif key == "N" and value.isdigit():
                next_uid = int(value)
            elif key == "G":
                guid = value
            else:
                extra.append(item)
        if uid_validity == 0:
            raise UidListError("dovecot-uidlist has no UIDVALIDITY")
        records = _parse_records(lines[1:], last=0)
        last = records[-1].uid if records else 0
        return cls(
            uid_validity=uid_validity,
            next_uid=max(next_uid, last + 1),
            guid=guid or new_guid(),
            records=records,
            extra_header=tuple(extra),
        )

    def extend(self, appended: bytes, *, last: int | None = None) -> None:
        """Add the records of complete lines appended to the file since it was parsed (Dovecot
        and we append with O_APPEND and replace the file by rename for anything else).
        `last`: the UID they must ascend from, when `records` no longer holds it."""
        lines = appended.decode("utf-8", "surrogateescape").split("\n")
        lines.pop()
        if last is None:
            last = self.records[-1].uid if self.records else 0
        added = _parse_records(lines, last=last)
        self.records.extend(added)
        if added:
            self.next_uid = max(self.next_uid, added[-1].uid + 1)

    def header(self) -> str:
        extra = "".join(f" {item}" for item in self.extra_header)
        return f"{VERSION} V{self.uid_validity} N{self.next_uid} G{self.guid}{extra}\n"

    def serialize(self) -> bytes:
        return (self.header() + "".join(r.line() for r in self.records)).encode(
            "utf-8", "surrogateescape"
        )

    def assign(self, names: Iterable[str]) -> list[UidRecord]:
        """Give each name the next UID (in the order given); returns the new records."""
        added = []
        for name in names:
            record = UidRecord(uid=self.next_uid, name=name)
            self.next_uid += 1
            self.records.append(record)
            added.append(record)
        return added

    def by_base(self) -> dict[str, UidRecord]:
        return {r.base: r for r in self.records}


def _parse_records(lines: Iterable[str], *, last: int) -> list[UidRecord]:
    """Record lines, UIDs ascending above `last`."""
    records: list[UidRecord] = []
    for line in lines:
        head, sep, name = line.partition(" :")
        uid_text, _, ext = head.partition(" ")
        if not sep or not name or not uid_text.isdigit():
            raise UidListError(f"malformed dovecot-uidlist line: {line!r}")
        uid = int(uid_text)
        if uid <= last:
            # UIDs must ascend (Dovecot rejects such a file too); rebuilding it would
            # silently renumber messages, so the caller decides.
            raise UidListError(f"dovecot-uidlist UIDs not ascending at {uid}")
        last = uid
        # Interned: the directory listing holds the same name (delivery/index_listing.py).
        records.append(UidRecord(uid=uid, name=sys.intern(name), ext=ext.strip()))
    return records


def serialize_records(records: Iterable[UidRecord]) -> bytes:
    """Lines to append to an existing file."""
    return "".join(r.line() for r in records).encode("utf-8", "surrogateescape")
