"""STORE on a Maildir folder: flags become the ":2," info letters of the file name (Maildir
spec) and `dovecot-keywords` letters; RFC 7162 §3.1.3 UNCHANGEDSINCE decides per message.
A part of `MaildirStore` (delivery/maildir.py).

A flag change renames the file and is not fsynced (as Dovecot's `mail_fsync = optimized`;
delivery/index_db.py says what that promises); the new MODSEQs are recorded before the lock
is released, so other processes see them at once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mailstack.delivery.index import FolderIndex
from mailstack.delivery.keywords import (
    canonical_flag,
    file_name_with_flags,
    flags_from_letters,
    letters_from_flags,
    split_info,
)
from mailstack.delivery.store import FlagChange

from mailstack.base.flags import FlagMode


def change_flags(
    index: FolderIndex,
    fdir: Path,
    uids: Iterable[int],
    wanted: frozenset[str],
    mode: FlagMode,
    unchanged_since: int | None,
) -> tuple[FlagChange, bool]:
    """Apply a STORE (caller holds the folder lock); returns what was done and whether any
    file was renamed."""
    done: dict[int, frozenset[str]] = {}
    modified: list[int] = []
    changed = False
    index.sync()
    if mode is not FlagMode.REMOVE:
        index.ensure_keywords(wanted)
    wanted = frozenset(f if f.startswith("\\") else index.keywords.canonical(f) for f in wanted)
    by_uid = index.entries_by_uid()
    for uid in uids:
        entry = by_uid.get(uid)
        if entry is None:
            continue
        if unchanged_since is not None and entry.info.modseq > unchanged_since:
            modified.append(uid)  # RFC 7162 §3.1.3: changed since the client looked
            continue
        old = entry.info.flags
        new = {FlagMode.REPLACE: wanted, FlagMode.ADD: old | wanted}.get(mode, old - wanted)
        base, old_letters, extra = split_info(entry.name)
        letters = letters_from_flags(new, index.keywords, keep=old_letters)
        new_name = file_name_with_flags(base, letters, extra)
        if (entry.sub, entry.name) != ("cur", new_name):
            try:
                os.rename(fdir / entry.sub / entry.name, fdir / "cur" / new_name)
            except FileNotFoundError:
                continue  # expunged or renamed by someone else meanwhile: skip it
            index.renamed(base, "cur", new_name)
            changed = True
        done[uid] = flags_from_letters(letters, index.keywords)
    if changed:
        # No directory fsync: a flag change is not fsynced (delivery/index_db.py, as
        # Dovecot's mail_fsync=optimized); a crash may lose it, never the message.
        by_uid = index.entries_by_uid()  # records the new MODSEQs
    infos = {uid: by_uid[uid].info for uid in done if uid in by_uid}
    return FlagChange(done=infos, modified=tuple(modified)), changed


def storable_flags(flags: Iterable[str]) -> frozenset[str]:
    """Flags a message can carry: system flags in canonical case and keywords; no \\Recent."""
    out = set()
    for flag in flags:
        canonical = canonical_flag(flag)
        if canonical is not None:
            out.add(canonical)
    return frozenset(out)
