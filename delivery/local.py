"""Local delivery: a received message into the Maildir of every local mailbox it is for.

Used by the MX (smtp.handler, `deliver_async`) and by `mailstack deliver` (an LDA for
Postfix's `mailbox_command` or a procmail-style pipe). Per mailbox one copy, whatever number of
recipients or aliases lead to it, into INBOX (or Junk when the verdict says so), each prefixed
with `Return-Path:` and `Delivered-To:` (RFC 5321 §4.4) above the caller's trace fields.

All or nothing: every copy differs (its own Delivered-To), so each is a separate store call;
if a later one fails, the copies already made are expunged again before the error propagates,
and the caller answers 451/452 for the whole transaction. The store fsyncs before returning,
so when `deliver` returns every copy is durable.

`deliver` blocks (SQLite, disk). `deliver_async` is the event loop's: it awaits the store's
group commit (delivery/commit.py) and borrows no thread, given the quotas looked up at RCPT.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mailstack.delivery.layout import lf_slices
from mailstack.delivery.maildir import MaildirStore
from mailstack.delivery.store import (
    INBOX,
    Flag,
    FlagMode,
    FolderNotFoundError,
    MailStore,
    MessageRef,
    QuotaExceededError,
    UnknownUserError,
)
from mailstack.delivery.trace import (
    delivered_to_field,
    header_block,
    local_received_field,
    return_path_field,
)

from mailstack.base.config import load_config
from mailstack.base.errors import MailstackError, UsageError
from mailstack.base.paths import StatePaths
from mailstack.base.users import Accounts, normalize_address

log = logging.getLogger(__name__)

# sysexits.h, which Postfix's pipe(8) and local(8) interpret for an LDA.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_TEMPFAIL = 75


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where the copies of one message went."""

    refs: tuple[MessageRef, ...]

    @property
    def mailboxes(self) -> tuple[str, ...]:
        return tuple(r.user for r in self.refs)


class LocalDelivery:
    def __init__(self, accounts: Accounts, store: MailStore) -> None:
        self._accounts = accounts
        self._store = store

    def deliver(
        self,
        *,
        mail_from: str,
        recipients: Sequence[tuple[str, Sequence[str]]],
        message: bytes | Sequence[bytes],
        prefix_fields: Sequence[str] = (),
        folder: str = INBOX,
    ) -> Delivered:
        """Store one copy per distinct mailbox of `recipients` ((rcpt, mailboxes) pairs).

        `message` whole or in pieces (a 25 MB message is never joined: see `lf_slices`).

        `prefix_fields` (verdict headers, our Received) go below Return-Path/Delivered-To.
        Raises QuotaExceededError (nothing stored), or any store/OS error (nothing stored).
        """
        mailboxes = list(dict.fromkeys(m for _rcpt, boxes in recipients for m in boxes))
        trace = header_block(list(prefix_fields)).replace(b"\r\n", b"\n")
        body = lf_slices(message)
        done: list[MessageRef] = []
        try:
            for mailbox in mailboxes:
                head = header_block([return_path_field(mail_from), delivered_to_field(mailbox)])
                # Slices, never joined: a join or scan of 25 MB holds the GIL for tens of ms.
                copy = [head.replace(b"\r\n", b"\n"), trace, *body]
                quota = {mailbox: self._accounts.quota_bytes(mailbox)}
                try:
                    refs = self._store.deliver_parts([(mailbox, folder)], copy, quota_bytes=quota)
                except FolderNotFoundError:
                    if folder == INBOX:
                        raise
                    # The user deleted their Junk folder: INBOX rather than losing the mail.
                    refs = self._store.deliver_parts([(mailbox, INBOX)], copy, quota_bytes=quota)
                done.extend(refs)
        except BaseException:
            self._undo(done)
            raise
        return Delivered(tuple(done))

    async def deliver_async(
        self,
        *,
        mail_from: str,
        recipients: Sequence[tuple[str, Sequence[str]]],
        message: Sequence[bytes],
        quotas: Mapping[str, int],
        prefix_fields: Sequence[str] = (),
        folder: str = INBOX,
    ) -> Delivered:
        """`deliver` for the event loop, with each mailbox's quota already looked up.

        With a MaildirStore nothing blocks and no thread is borrowed per message: the copy
        (CRLF pieces, converted by the store) goes straight into the group commit and we await
        its future. Another store gets the blocking `deliver` in a worker thread.
        """
        store = self._store
        if not isinstance(store, MaildirStore):
            return await asyncio.to_thread(
                self.deliver,
                mail_from=mail_from,
                recipients=recipients,
                message=message,
                prefix_fields=prefix_fields,
                folder=folder,
            )
        mailboxes = list(dict.fromkeys(m for _rcpt, boxes in recipients for m in boxes))
        trace = header_block(list(prefix_fields))
        done: list[MessageRef] = []
        try:
            for mailbox in mailboxes:
                head = header_block([return_path_field(mail_from), delivered_to_field(mailbox)])
                copy = [head, trace, *message]
                quota = {mailbox: quotas.get(mailbox, 0)}
                try:
                    refs = await asyncio.wrap_future(
                        store.deliver_parts_nowait([(mailbox, folder)], copy, quota_bytes=quota)
                    )
                except FolderNotFoundError:
                    if folder == INBOX:
                        raise
                    # The user deleted their Junk folder: INBOX rather than losing the mail.
                    refs = await asyncio.wrap_future(
                        store.deliver_parts_nowait([(mailbox, INBOX)], copy, quota_bytes=quota)
                    )
                done.extend(refs)
        except BaseException:
            if done:
                await asyncio.shield(asyncio.to_thread(self._undo, done))
            raise
        return Delivered(tuple(done))

    def _undo(self, refs: list[MessageRef]) -> None:
        """Expunge copies already stored when a later one failed (best effort, logged)."""
        for ref in refs:
            try:
                self._store.store_flags(
                    ref.user, ref.folder, [ref.uid], [Flag.DELETED], FlagMode.ADD
                )
                self._store.expunge(ref.user, ref.folder, [ref.uid])
            except Exception:
                log.exception(
                    "could not take back copy %s/%s uid %d after a failed delivery",
                    ref.user,
                    ref.folder,
                    ref.uid,
                )


def deliver_message(
    accounts: Accounts,
    store: MailStore,
    *,
    hostname: str,
    recipient: str,
    message: bytes,
    mail_from: str = "",
) -> tuple[int, str]:
    """`mailstack deliver ADDR < message`: store for one address; (sysexits status, problem).

    0 delivered · 67 EX_NOUSER no such local recipient · 75 EX_TEMPFAIL quota or disk trouble
    (the calling MTA retries later) · 65 EX_DATAERR an empty message.
    """
    if message.startswith(b"From "):  # an mbox "From " line from a pipe: not part of the mail
        message = message.split(b"\n", 1)[1] if b"\n" in message else b""
    if not message.strip():
        return EX_DATAERR, "the message is empty"
    resolution = accounts.resolve(recipient)
    if not resolution.mailboxes:
        return EX_NOUSER, f"no such local recipient: {recipient}"
    queue_id = secrets.token_hex(6)
    received = local_received_field(
        by_host=hostname, queue_id=queue_id, recipient=recipient, when=datetime.now(UTC)
    )
    try:
        LocalDelivery(accounts, store).deliver(
            mail_from=mail_from,
            recipients=[(recipient, resolution.mailboxes)],
            message=message,
            prefix_fields=[received],
        )
    except QuotaExceededError as exc:
        return EX_TEMPFAIL, f"{exc}; try again later"
    except UnknownUserError as exc:
        return EX_TEMPFAIL, f"{exc} (the account has no Maildir)"
    except OSError as exc:
        return EX_TEMPFAIL, f"cannot store the message: {exc}"
    log.info("deliver: %s -> %s id %s", recipient, ", ".join(resolution.mailboxes), queue_id)
    return EX_OK, ""


def run_lda(
    root: Path, recipient: str | None, message: bytes, *, mail_from: str = ""
) -> tuple[int, str]:
    """The whole of `mailstack deliver`: (sysexits status, a line for stderr or "").

    A deployment that cannot be opened is EX_TEMPFAIL, not 1: for the MTA calling us a
    non-sysexits status can mean "bounce", and a broken config should not lose mail.
    """
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
        store = MaildirStore(paths, None, hostname=config.server.hostname)
        return deliver_message(
            accounts,
            store,
            hostname=config.server.hostname,
            recipient=recipient,
            message=message,
            mail_from=mail_from,
        )
    finally:
        accounts.close()
