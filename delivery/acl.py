"""Access control lists of folders (RFC 4314), stored where Dovecot stores them.

Each folder may hold a `dovecot-acl` file in its directory (the Maildir root for INBOX, `.Name/`
for the others), as Dovecot's `vfile` ACL backend reads it, so a Dovecot serving the same Maildir
enforces the same rights. One entry per line: an identifier, a space, the rights letters:

    owner lrwstipekxa
    user=bob@example.com lrs
    authenticated l

Identifiers, most specific first: `user=ADDRESS`, `owner`, `authenticated` (any logged-in user),
`anyone`. A user's rights are those of the first identifier in that order that has an entry
(Dovecot's precedence: a `user=` entry replaces, not adds to, what `authenticated` grants).
A folder without the file has Dovecot's default: the owner has every right, nobody else any.
When we write a file we always keep an `owner` entry, so sharing never locks the owner out.

Rights letters (RFC 4314 §2.1): l lookup, r read, s keep \\Seen, w write other flags, i insert,
p post, k create child folders, x delete the folder, t set \\Deleted, e expunge, a administer.
The obsolete RFC 2086 letters are mapped as RFC 4314 §2.1.1 allows: c to k and x, d to t, e and x.
Lines we cannot read (a group identifier, negative `-user=` rights, unknown letters) are kept
as written when we rewrite the file, and ignored when computing rights: unknown entries never
grant anything.

The files stay the only record of rights, as they are for Dovecot. Which folders have one is
found by walking every account's Maildir (`shared_folders`), which a deployment of 1,000
accounts cannot afford per LIST: delivery/acl_registry.py keeps what the walk would find in
the state directory, and walks only to fill or check it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mailstack.delivery.layout import folder_dir_name, folder_from_dir_name, normalize_folder
from mailstack.delivery.store import INBOX

from mailstack.base.errors import UsageError
from mailstack.base.fsutil import atomic_write

log = logging.getLogger(__name__)

ACL_FILE = "dovecot-acl"
ALL_RIGHTS = "lrswipkxtea"
OBSOLETE = {"c": "kx", "d": "tex"}  # RFC 4314 §2.1.1
OWNER, AUTHENTICATED, ANYONE = "owner", "authenticated", "anyone"
FILE_MODE = 0o600


def parse_rights(text: str, *, allow_obsolete: bool = False) -> str:
    """Rights letters in canonical order; UsageError naming the first letter we do not know."""
    out: set[str] = set()
    for ch in text:
        if ch in ALL_RIGHTS:
            out.add(ch)
        elif allow_obsolete and ch in OBSOLETE:
            out.update(OBSOLETE[ch])
        else:
            raise UsageError(
                f"unknown right {ch!r} in {text!r}: use letters of {ALL_RIGHTS} (RFC 4314)"
            )
    return "".join(ch for ch in ALL_RIGHTS if ch in out)


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a dovecot-acl file. `rights` is None for a line we only carry along."""

    identifier: str
    rights: str | None
    line: str = field(default="", compare=False)  # as read, for lines we carry along

    @property
    def user(self) -> str | None:
        return self.identifier[5:] if self.identifier.startswith("user=") else None


def parse_acl(text: str) -> list[Entry]:
    entries: list[Entry] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        identifier, _, rest = line.partition(" ")
        letters = rest.strip().partition(" ")[0]  # Dovecot's optional ":named rights" follow
        known = identifier in (OWNER, AUTHENTICATED, ANYONE) or identifier.startswith("user=")
        try:
            rights = parse_rights(letters, allow_obsolete=True) if known else None
        except UsageError:
            rights = None
        if rights is None:
            log.debug("dovecot-acl line kept but not applied: %r", line)
        entries.append(Entry(identifier, rights, line))
    return entries


def serialize_acl(entries: Sequence[Entry]) -> str:
    return "".join(
        (f"{e.identifier} {e.rights}" if e.rights is not None else e.line) + "\n" for e in entries
    )


def rights_of(entries: Sequence[Entry] | None, user: str, owner: str) -> str:
    """The rights `user` has on a folder of `owner` whose ACL is `entries` (None: no file)."""
    if entries is None:
        return ALL_RIGHTS if user == owner else ""
    usable = {e.identifier: e.rights for e in entries if e.rights is not None}
    for identifier in (f"user={user}", OWNER if user == owner else None, AUTHENTICATED, ANYONE):
        if identifier is not None and identifier in usable:
            return usable[identifier] or ""
    return ""


def folder_dir(maildir: Path, folder: str) -> Path:
    name = normalize_folder(folder)
    return maildir if name == INBOX else maildir / folder_dir_name(name)


def read_acl(directory: Path) -> list[Entry] | None:
    try:
        return parse_acl((directory / ACL_FILE).read_text(encoding="utf-8", errors="replace"))
    except FileNotFoundError:
        return None


def write_acl(directory: Path, entries: Sequence[Entry]) -> None:
    atomic_write(directory / ACL_FILE, serialize_acl(entries).encode(), mode=FILE_MODE)


def set_rights(directory: Path, identifier: str, rights: str) -> list[Entry]:
    """Give `identifier` exactly `rights` ("" removes its entry); keeps an owner entry with
    every right if the file had none (the no-file default), and every line it cannot read."""
    entries = read_acl(directory)
    if entries is None:
        entries = [Entry(OWNER, ALL_RIGHTS, f"{OWNER} {ALL_RIGHTS}")]
    kept = [e for e in entries if e.identifier != identifier]
    if rights:
        kept.append(Entry(identifier, rights, f"{identifier} {rights}"))
    write_acl(directory, kept)
    return kept


@dataclass(frozen=True, slots=True)
class SharedFolder:
    owner: str
    folder: str
    entries: tuple[Entry, ...]


def touch_views(maildirs: Iterable[Path]) -> None:
    """Touch these accounts' Maildir roots after a change to what is shared with them: a
    running `serve` watches the roots of accounts with a NOTIFY session (delivery/watch.py)
    and those sessions then look at their folder list again. Best effort: a session that
    misses it sees the change at its next LIST. Dovecot reads nothing from a root's times."""
    for maildir in maildirs:
        with contextlib.suppress(OSError):
            os.utime(maildir)


def account_folders(maildir: Path) -> Iterator[tuple[str, Path]]:
    """(folder name, directory) of every folder of one Maildir++, INBOX first."""
    yield INBOX, maildir
    try:
        names = sorted(os.listdir(maildir))
    except FileNotFoundError:
        return
    for entry in names:
        folder = folder_from_dir_name(entry)
        if folder is not None and (maildir / entry / "cur").is_dir():
            yield folder, maildir / entry


def shared_folders(mail_dir: Path) -> Iterator[SharedFolder]:
    """Every folder under `mail_dir` (<domain>/<localpart>/) that has a dovecot-acl file."""
    try:
        domains = sorted(os.listdir(mail_dir))
    except FileNotFoundError:
        return
    for domain in domains:
        try:
            locals_ = sorted(os.listdir(mail_dir / domain))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for local in locals_:
            if local.startswith("."):  # no account's: one being deleted (delivery/maildir.py)
                continue
            for folder, directory in account_folders(mail_dir / domain / local):
                entries = read_acl(directory)
                if entries is not None:
                    yield SharedFolder(f"{local}@{domain}", folder, tuple(entries))
