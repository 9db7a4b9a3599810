"""Reading a Maildir folder's directories for delivery/index.py: the names in new/ and cur/,
and the clean-up of what crashed writers left in tmp/. The caller holds the folder lock."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

TMP_MAX_AGE_S = 36 * 3600  # the Maildir spec's age for abandoned files in tmp/


def list_dirs(folder: Path) -> tuple[dict[str, str], set[str]]:
    """(base -> suffix of every message file in new/ and cur/, the bases of those in new/);
    a file's name is its base and suffix (":2,FLAGS", or "") joined. Names only: the index
    measures a file (delivery/index_entry.py `measure`) when it first makes its entry."""
    listing: dict[str, str] = {}
    in_new: set[str] = set()
    for sub in ("new", "cur"):
        directory = os.path.join(folder, sub)
        for name in os.listdir(directory):  # names only: no stat() per message
            if name[0] == ".":
                continue
            # Interned: the uidlist's map and MessageInfo.key hold the same base strings,
            # and a folder's messages share a handful of suffixes; the whole name is not
            # kept (about 100 bytes a message).
            base, colon, info = name.partition(":")
            listing[sys.intern(base)] = sys.intern(colon + info) if colon else ""
            if sub == "new":
                in_new.add(base)
    return listing, in_new


def clean_tmp(folder: Path) -> None:
    """Remove what crashed writers left in tmp/ (once per process and folder).

    cr.yp.to/proto/maildir.html: a file untouched in tmp/ for 36 hours is garbage. The
    same holds for folders we were building or deleting there (delivery/folders.py).
    """
    cutoff = time.time() - TMP_MAX_AGE_S
    with os.scandir(folder / "tmp") as entries:
        for entry in entries:
            try:
                # ctime, not mtime: APPEND back-dates the mtime (INTERNALDATE) of files
                # it is still writing here.
                if entry.stat(follow_symlinks=False).st_ctime >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue
