"""`mailstack deliver ADDR < message`: the local delivery agent for another MTA.

Postfix's pipe(8) and local(8) (`mailbox_command`) read an LDA's exit status as sysexits.h
codes; this maps mailstack.delivery.local's typed outcome onto them. Anything that keeps us from
trying (a config or database we cannot open) is EX_TEMPFAIL, not 1: for the calling MTA a
non-sysexits status can mean "bounce", and a broken config must not lose mail.
"""

from __future__ import annotations

from pathlib import Path

from mailstack.base.config import load_config
from mailstack.base.errors import MailstackError, UsageError
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts, normalize_address
from mailstack.delivery.local import Outcome, deliver_to
from mailstack.delivery.maildir import MaildirStore

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75

SYSEXITS = {
    Outcome.DELIVERED: EX_OK,
    Outcome.NO_SUCH_USER: EX_NOUSER,
    Outcome.TRY_LATER: EX_TEMPFAIL,
    Outcome.BAD_MESSAGE: EX_DATAERR,
}


def run_lda(
    root: Path, recipient: str | None, message: bytes, *, mail_from: str = ""
) -> tuple[int, str]:
    """The whole of `mailstack deliver`: (sysexits status, a line for stderr or "")."""
    if not recipient:
        return EX_USAGE, "usage: mailstack deliver ADDRESS < message"
    try:
        normalize_address(recipient)
        if mail_from:
            normalize_address(mail_from)
    except UsageError as exc:
        return EX_USAGE, str(exc)
    try:
        paths = StatePaths(root)
        config = load_config(paths.config)
        accounts = Accounts(paths.users_db)
    except MailstackError as exc:
        return EX_TEMPFAIL, exc.message
    except Exception as exc:  # sqlite3: locked, unreadable, not a database
        return EX_TEMPFAIL, f"cannot open {root}: {exc}"
    try:
        store = MaildirStore(
            paths, None, hostname=config.server.hostname, quota_of=accounts.quota_bytes
        )
        result = deliver_to(
            accounts,
            store,
            hostname=config.server.hostname,
            recipient=recipient,
            message=message,
            mail_from=mail_from,
        )
        return SYSEXITS[result.outcome], result.problem
    finally:
        accounts.close()
