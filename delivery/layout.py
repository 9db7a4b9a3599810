"""Names on disk in a Maildir++ as Dovecot lays it out: folders, message files, subscriptions.

Folders (Courier's README.maildirquota, Dovecot's default LAYOUT=Maildir++): INBOX is the root
(`cur/ new/ tmp/`), folder "A.B" is the directory `.A.B/` (delimiter "."), each with
`cur/ new/ tmp/` and an empty `maildirfolder` file. Names are stored as given: modified UTF-7
(RFC 3501 §5.1.3), which is printable ASCII.

Message files (cr.yp.to/proto/maildir.html plus Dovecot's fields):
`<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<vsize>[:2,<flags>]` where S is the size on disk
(LF line endings) and W the RFC822.SIZE (CRLF endings), so neither needs an open() or stat().

`subscriptions` (Dovecot's subscription-file.c): optional header "V\\t2\\n\\n", then one name
per line; in version 2 the hierarchy delimiter is written as a TAB and TAB/CR/LF/\\x01 inside
a component are escaped as \\x01 followed by "t", "r", "n", "1". Version 1 lines are plain names.
This module is pure.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Sequence

from mailstack.delivery.store import HIERARCHY_DELIMITER, INBOX, InvalidFolderNameError

# Dovecot renames a folder it deletes to this name before removing it (mailbox-list-delete.c).
DOVECOT_TRASH_DIR = ".DOVECOT-TRASHED"
MAX_DIR_NAME_BYTES = 255  # NAME_MAX on Linux file systems: ".<folder name>" must fit
_MUTF7_SHIFT = re.compile(r"&([A-Za-z0-9+,]*)-")
_SIZE_FIELD = re.compile(r",([SW])=(\d+)")

_counter = itertools.count(1)


# -- folders -----------------------------------------------------------------------------------


def normalize_folder(name: str) -> str:
    """Validate an IMAP folder name and give INBOX its canonical case.

    "INBOX" is case-insensitive (RFC 9051 §5.1); so is it as the first component of a child
    ("inbox.Lists" is "INBOX.Lists"), which Dovecot also does.
    """
    if not name:
        raise InvalidFolderNameError("empty folder name")
    if any(not (" " <= c <= "~") for c in name):
        raise InvalidFolderNameError(f"folder name {name!r}: not modified UTF-7 (RFC 3501 §5.1.3)")
    if "/" in name:
        raise InvalidFolderNameError(f"folder name {name!r}: '/' is not allowed")
    parts = name.split(HIERARCHY_DELIMITER)
    if any(not part for part in parts):
        raise InvalidFolderNameError(
            f"folder name {name!r}: empty hierarchy level (leading, trailing or double '.')"
        )
    if _MUTF7_SHIFT.sub("", name).count("&"):
        raise InvalidFolderNameError(f"folder name {name!r}: '&' must start a mUTF-7 sequence")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    name = HIERARCHY_DELIMITER.join(parts)
    if name != INBOX and len(name.encode()) + 1 > MAX_DIR_NAME_BYTES:
        raise InvalidFolderNameError(f"folder name {name[:40]!r}...: too long")
    return name


def folder_dir_name(name: str) -> str:
    """The directory (relative to the Maildir root) of a normalized folder name."""
    return "" if name == INBOX else "." + name


def folder_from_dir_name(dir_name: str) -> str | None:
    """Inverse of folder_dir_name for entries of the root; None for non-folder entries."""
    if not dir_name.startswith(".") or dir_name in (".", "..", DOVECOT_TRASH_DIR):
        return None
    try:
        return normalize_folder(dir_name[1:])
    except InvalidFolderNameError:
        return None


def parent_folders(name: str) -> list[str]:
    """ "A.B.C" -> ["A", "A.B"]."""
    parts = name.split(HIERARCHY_DELIMITER)
    return [HIERARCHY_DELIMITER.join(parts[:i]) for i in range(1, len(parts))]


# -- message files -----------------------------------------------------------------------------


def to_lf(message: bytes) -> bytes:
    """Maildir stores LF line endings (what Dovecot's LDA writes too)."""
    return message.replace(b"\r\n", b"\n")


def crlf_size(lf_message: bytes) -> int:
    """RFC822.SIZE of a message stored with LF endings: every LF goes out as CRLF."""
    return len(lf_message) + lf_message.count(b"\n")


def _escape_host(host: str) -> str:
    # Dovecot escapes "/" and ":" as octal; "," would end our S=/W= fields early, so it too.
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054") or "localhost"


def unique_name(host: str, size: int, vsize: int, *, now: float | None = None) -> str:
    """`<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<vsize>`: unique per host, process, call."""
    now = time.time() if now is None else now
    secs = int(now)
    usecs = int((now - secs) * 1_000_000)
    return f"{secs}.M{usecs}P{_pid[0]}Q{next(_counter)}.{_escape_host(host)},S={size},W={vsize}"


def current_pid() -> int:
    """os.getpid() without a system call per message (kept right across fork)."""
    return _pid[0]


_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def sizes_from_name(base: str) -> tuple[int | None, int | None]:
    """(S, W) from a base name; None where the field is absent."""
    found = dict(_SIZE_FIELD.findall(base))
    s, w = found.get("S"), found.get("W")
    return (int(s) if s else None, int(w) if w else None)


_TIME_FIELDS = re.compile(r"(\d+)\.(?:M(\d+))?")


def time_from_name(base: str) -> float | None:
    """Delivery time from "<secs>.M<usecs>..." (None if the name is not of that form)."""
    m = _TIME_FIELDS.match(base)
    if m is None:
        return None
    return int(m[1]) + (int(m[2]) / 1_000_000 if m[2] else 0.0)


# -- subscriptions -----------------------------------------------------------------------------

SUBSCRIPTIONS_V2_HEADER = "V\t2\n\n"
_TAB_ESCAPES = {"\x01": "\x011", "\t": "\x01t", "\r": "\x01r", "\n": "\x01n"}
_TAB_UNESCAPES = {v[1]: k for k, v in _TAB_ESCAPES.items()}


def _tab_escape(text: str) -> str:
    return "".join(_TAB_ESCAPES.get(c, c) for c in text)


def _tab_unescape(text: str) -> str:
    out, chars = [], iter(text)
    for c in chars:
        out.append(_TAB_UNESCAPES.get(next(chars, ""), "") if c == "\x01" else c)
    return "".join(out)


def parse_subscriptions(data: bytes) -> list[str]:
    text = data.decode("utf-8", "replace")
    if text.startswith(SUBSCRIPTIONS_V2_HEADER):
        lines = text[len(SUBSCRIPTIONS_V2_HEADER) :].split("\n")
        names = [
            HIERARCHY_DELIMITER.join(_tab_unescape(p) for p in line.split("\t"))
            for line in lines
            if line
        ]
    else:
        names = [line for line in text.split("\n") if line]
    return list(dict.fromkeys(names))


def serialize_subscriptions(names: list[str]) -> bytes:
    lines = ("\t".join(_tab_escape(p) for p in n.split(HIERARCHY_DELIMITER)) for n in names)
    return (SUBSCRIPTIONS_V2_HEADER + "".join(f"{line}\n" for line in lines)).encode()


# Slices of this size take about a ms each to convert: between them the thread lets the event loop
# have the GIL, where one replace (or join, or count) over 25 MB held it for 20-80 ms.
_SLICE_BYTES = 1 << 20


def lf_slices(message: bytes | Sequence[bytes]) -> list[bytes]:
    """The message (whole, or in pieces as the DATA framer hands them over) with LF line
    endings, as Maildir stores it, in slices of at most `_SLICE_BYTES`.

    The same bytes as `b"".join(message).replace(b"\r\n", b"\n")`, but no C call ever works on
    more than a slice: a CR that ends a slice is carried over to the next one, so a CRLF cut in
    two is still found.
    """
    pieces = [message] if isinstance(message, bytes) else message
    out: list[bytes] = []
    carry = b""
    for piece in pieces:
        for start in range(0, len(piece), _SLICE_BYTES):
            chunk = carry + piece[start : start + _SLICE_BYTES]
            carry = b""
            if chunk.endswith(b"\r"):
                chunk, carry = chunk[:-1], b"\r"
            if chunk:
                out.append(chunk.replace(b"\r\n", b"\n"))
    if carry:
        out.append(carry)
    return out
