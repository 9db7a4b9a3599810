#!/usr/bin/env python3
"""What finding shared folders costs a LIST, per user, among many accounts: the registry of
shared folders (delivery/acl_registry.py) against the walk of every account's folders that
LIST did before it.

Not a test (pytest does not collect bench/). Run from the repository root with the installed
mailstack, e.g. `python -P bench/list_shared.py --accounts 1000 --shares 200`.

`--accounts` Maildirs of six folders each are made on disk as Dovecot would lay them out (a
walk finds them without rows in users.sqlite3), `--shares` of their folders are shared with a
random other account, and ten real accounts share one folder each with the measured user.
In this process, no server: per call, the median wall time over `--rounds` and the number of
files opened and directories listed (sys.addaudithook), for
- walk: what SharedStore._shared_infos did before (acl.shared_folders, rights per file);
- registry: SharedStore._shared_infos now (a query, then the candidates' own files);
- LIST: the whole SharedStore.list_folders (own folders too).
One run (2 shared cores, load average 3.5; 1,000 accounts, 200 shares): walk 208 ms and 7,079
opens/listings per call, registry 1.2 ms and 10 (the ten shared folders' files), LIST 1.6 ms
and 18.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mailstack.delivery import acl
from mailstack.delivery.events import EventHub
from mailstack.delivery.maildir import MaildirStore
from mailstack.imap.shared import SharedStore

from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts

FOLDERS = ("", ".Sent", ".Drafts", ".Trash", ".Junk", ".Archive")
USER = "me@example.com"
COUNTED = frozenset({"open", "os.listdir", "os.scandir"})
counting = [False, 0]


def audit(event: str, _args: tuple[object, ...]) -> None:
    if counting[0] and event in COUNTED:
        counting[1] = int(counting[1]) + 1


def measure(call: Callable[[], object], rounds: int) -> tuple[float, int]:
    """(median ms, audited opens and listings) of `call`."""
    times = []
    for _ in range(rounds):
        counting[:] = [True, 0]
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
        counting[0] = False
    return statistics.median(times), int(counting[1])


def old_shared_infos(store: SharedStore, user: str) -> list[str]:
    """The walk LIST did before the registry (imap/shared.py at ae9a8c8, parents left out)."""
    names = []
    for shared in acl.shared_folders(store.paths.mail_dir):
        if shared.owner == user or "l" not in acl.rights_of(shared.entries, user, shared.owner):
            continue
        if store._prefix_of(shared.owner) is not None:
            names.append(f"{shared.owner}/{shared.folder}")
    return names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--shares", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="list-shared-") as tmp:
        paths = StatePaths(Path(tmp))
        accounts = Accounts(paths.users_db)
        accounts.add_domain("example.com", exist_ok=True)
        inner = MaildirStore(paths, EventHub(), hostname="mail.example.com")
        store = SharedStore(inner, paths, accounts)
        for address in (USER, *(f"owner{i}@example.com" for i in range(10))):
            accounts.add_user(address, "a bench password")
            inner.create_account(address)
        domain = paths.mail_dir / "example.com"
        for i in range(args.accounts):
            for folder in FOLDERS:
                for sub in ("cur", "new", "tmp"):
                    (domain / f"user{i:04}" / folder / sub).mkdir(parents=True)
        for _ in range(args.shares):
            owner, grantee = rng.sample(range(args.accounts), 2)
            folder = domain / f"user{owner:04}" / rng.choice(FOLDERS)
            (folder / acl.ACL_FILE).write_text(f"user=user{grantee:04}@example.com lr\n")
        for i in range(10):
            inner.acls.set_rights(f"owner{i}@example.com", "Sent", f"user={USER}", "lr")
        sys.addaudithook(audit)
        store.list_folders(USER)  # builds the registry
        rows = [
            ("walk", measure(lambda: old_shared_infos(store, USER), args.rounds)),
            ("registry", measure(lambda: store._shared_infos(USER), args.rounds)),
            ("LIST", measure(lambda: store.list_folders(USER), args.rounds)),
        ]
        assert len(old_shared_infos(store, USER)) == 10
        print(f"{args.accounts} accounts x {len(FOLDERS)} folders, {args.shares} shares")
        for name, (ms, events) in rows:
            print(f"{name:10} {ms:9.2f} ms  {events:7d} opens/listings per call")
        inner.acls.close()
        accounts.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
