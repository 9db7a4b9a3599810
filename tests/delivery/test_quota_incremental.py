"""`quota.usage` parses only what was appended since its last read, and never trusts a stale sum."""

from __future__ import annotations

import os
from pathlib import Path

from mailstack.delivery import quota


def _maildir(tmp_path: Path, content: bytes) -> Path:
    root = tmp_path / "md"
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / quota.FILE_NAME).write_bytes(content)
    return root


def test_appended_lines_are_added_to_the_known_sum(tmp_path: Path) -> None:
    root = _maildir(tmp_path, b"0S\n100 1\n")
    assert quota.usage(root) == 100
    with quota.changing(root):
        quota.record(root, 50, 1)
        quota.record(root, -30, -1)
    assert quota.usage(root) == 120
    assert quota.usage(root) == 120  # nothing appended: the same answer


def test_a_replaced_file_is_parsed_whole(tmp_path: Path) -> None:
    root = _maildir(tmp_path, b"0S\n100 1\n")
    assert quota.usage(root) == 100
    # Another writer (Dovecot, a recount) replaces the file with a longer one that does not
    # begin with what we read: the old sum must not be carried over.
    replacement = root / "maildirsize.new"
    replacement.write_bytes(b"0S\n7 1\n5 1\n")
    os.replace(replacement, root / quota.FILE_NAME)
    assert quota.usage(root) == 12


def test_a_torn_appended_line_makes_it_recount(tmp_path: Path) -> None:
    root = _maildir(tmp_path, b"0S\n999 9\n")
    assert quota.usage(root) == 999
    with open(root / quota.FILE_NAME, "ab") as f:
        f.write(b"12")  # a writer died mid-line
    (root / "new" / "1.M1P1.host,S=40,W=42").write_bytes(b"x" * 40)
    assert quota.usage(root) == 40  # recounted from the listing, the file rewritten
    assert (root / quota.FILE_NAME).read_bytes() == b"0S\n40 1\n"


def test_an_unchanged_file_is_not_read_again(tmp_path: Path) -> None:
    root = _maildir(tmp_path, b"0S\n100 1\n")
    assert quota.usage(root) == 100
    # Change the bytes in place, keeping inode, size and mtime: a reader would see 999; the
    # cached stamp says nothing changed, so no read happens.
    path = root / quota.FILE_NAME
    st = os.stat(path)
    path.write_bytes(b"0S\n999 1\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert quota.usage(root) == 100
    with quota.changing(root):
        quota.record(root, 5, 1)  # an append moves the size: read again (whole, as the
    assert quota.usage(root) == 1004  # first bytes differ from those summed before)
