"""\\Recent for messages stored straight into cur/ (IMAP APPEND or COPY with flags).

RFC 3501 §2.3.2: a message is \\Recent for the first session that selects its mailbox after
it arrived, whatever flags it came with. A message in new/ carries that by where it lies, but
the Maildir spec allows no flags in new/, so APPEND/COPY with flags write to cur/ and record
the UIDs here: `mailstack-recent` in the folder's directory, one UID per line. The next
claiming snapshot (SELECT) takes them and removes the file; EXAMINE and STATUS only read it.
(Dovecot keeps the same fact as a "first recent UID" in its own index.)

The caller holds the folder lock for every function here. \\Recent is advisory: a lost file
(a crash before it reached the disk) costs a flag, never a message, so it is not fsynced.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

RECENT_FILE = "mailstack-recent"


def add(fdir: Path, uids: Iterable[int]) -> None:
    """Record `uids` (just stored in cur/) as recent."""
    lines = "".join(f"{uid}\n" for uid in uids)
    if lines:
        with open(fdir / RECENT_FILE, "a", encoding="ascii") as f:
            f.write(lines)


def peek(fdir: Path) -> frozenset[int]:
    """The recorded UIDs, left in place (EXAMINE, STATUS)."""
    try:
        text = (fdir / RECENT_FILE).read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return frozenset()
    return frozenset(int(word) for word in text.split() if word.isdigit())


def take(fdir: Path) -> frozenset[int]:
    """The recorded UIDs, removed: this snapshot is the one session that sees them recent."""
    uids = peek(fdir)
    if uids:
        (fdir / RECENT_FILE).unlink(missing_ok=True)
    return uids
