"""Opening an SQLite file that several processes open (serve, its SMTP workers, the CLI).

Two processes opening a new file at the same moment can collide while one switches it to WAL
and the other creates its tables: SQLite then answers "database is locked" at once, without
waiting out the busy timeout (it refuses a lock upgrade that could deadlock). A fresh
deployment's first two submissions, one per SMTP worker, got `451` at MAIL FROM that way.
A folder index or cache that took that answer for corruption set the new file aside, under
the process that had just made it. `open_shared` retries the connection's setup instead; every
SQLite file of mailstack is opened through it (tests/mailstack/test_sqlite_files.py).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

SETUP_TRIES = 50
SETUP_PAUSE_S = 0.02  # x 50: a second, far beyond a collision (microseconds of lock)


def open_shared(
    path: Path | str,
    setup: Callable[[sqlite3.Connection], None],
    *,
    timeout_s: float,
    check_same_thread: bool = True,
    autocommit: bool = True,
) -> sqlite3.Connection:
    """A connection to `path` on which `setup` (journal mode, schema) ran. `autocommit`
    False: the sqlite3 module's implicit transactions (`with db:` commits)."""
    for attempt in range(1, SETUP_TRIES + 1):
        db = sqlite3.connect(
            path,
            timeout=timeout_s,
            isolation_level=None if autocommit else "DEFERRED",
            check_same_thread=check_same_thread,
        )
        try:
            setup(db)
        except sqlite3.OperationalError as exc:
            db.close()
            if attempt == SETUP_TRIES or ("locked" not in str(exc) and "busy" not in str(exc)):
                raise
            time.sleep(SETUP_PAUSE_S)
            continue
        except BaseException:
            db.close()
            raise
        return db
    raise AssertionError("unreachable")  # pragma: no cover
