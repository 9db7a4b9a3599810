"""Local delivery: a received message into the Maildir of every local mailbox it is for.

The one local-delivery path: the MX and submission (`deliver_async`), the outbound queue for
mail to our own users (`deliver_to`, DSNs mostly) and `mailstack deliver`, the LDA, which maps
`deliver_to`'s typed result to sysexits codes in the CLI layer (mailstack.lda). Per mailbox one
copy, whatever number of recipients or aliases lead to it, into INBOX (or Junk when the verdict
says so), each prefixed with `Return-Path:` and `Delivered-To:` (RFC 5321 §4.4) above the
caller's trace fields.

All or nothing: every copy differs (its own Delivered-To), so each is a separate store call;
if a later one fails, the copies already made are taken back (`take_back`) before the error
propagates, and the caller answers 451/452 for the whole transaction. Each copy goes into the
store's group commit (delivery/commit.py) and is durable when its future resolves, so when a
deliver returns every copy is durable. `deliver_async` borrows no thread per message;
`deliver` blocks its caller's thread until the same steps are done.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime

from mailstack.delivery.store import (
    INBOX,
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

from mailstack.base.flags import Flag, FlagMode
from mailstack.base.users import Accounts

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Delivered:
    """Where the copies of one message went."""

    refs: tuple[MessageRef, ...]

    @property
    def mailboxes(self) -> tuple[str, ...]:
        return tuple(r.user for r in self.refs)


class Outcome(enum.Enum):
    """What became of a message for one recipient (`deliver_to`)."""

    DELIVERED = "delivered"
    NO_SUCH_USER = "no such user"  # permanent: nobody here has that address
    TRY_LATER = "try later"  # quota, a missing Maildir, the disk: the sender retries
    BAD_MESSAGE = "bad message"  # permanent: nothing to deliver


@dataclass(frozen=True, slots=True)
class LocalResult:
    outcome: Outcome
    problem: str = ""  # for the log, a DSN or the LDA's stderr; empty when delivered
    mailboxes: tuple[str, ...] = ()


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
        """Store one copy per distinct mailbox of `recipients` ((rcpt, mailboxes) pairs),
        blocking until all are durable; each mailbox's quota is looked up here.

        Raises QuotaExceededError (nothing stored), or any store/OS error (nothing stored).
        """
        parts = [message] if isinstance(message, bytes) else message
        done: list[MessageRef] = []
        try:
            for mailbox, copy in self._copies(mail_from, recipients, parts, prefix_fields):
                try:
                    refs = self._submit(mailbox, folder, copy).result()
                except FolderNotFoundError:
                    if folder == INBOX:
                        raise
                    # The user deleted their Junk folder: INBOX rather than losing the mail.
                    refs = self._submit(mailbox, INBOX, copy).result()
                done.extend(refs)
        except BaseException:
            self.take_back(done)
            raise
        return Delivered(tuple(done))

    async def deliver_async(
        self,
        *,
        mail_from: str,
        recipients: Sequence[tuple[str, Sequence[str]]],
        message: Sequence[bytes],
        prefix_fields: Sequence[str] = (),
        folder: str = INBOX,
    ) -> Delivered:
        """`deliver` for the event loop, with each mailbox's quota already looked up (at
        RCPT): nothing blocks and no thread is borrowed per message (`message` in the pieces
        it arrived in, CRLF endings and all: the group commit converts them)."""
        done: list[MessageRef] = []
        try:
            for mailbox, copy in self._copies(mail_from, recipients, message, prefix_fields):
                try:
                    refs = await asyncio.wrap_future(self._submit(mailbox, folder, copy))
                except FolderNotFoundError:
                    if folder == INBOX:
                        raise
                    # The user deleted their Junk folder: INBOX rather than losing the mail.
                    refs = await asyncio.wrap_future(self._submit(mailbox, INBOX, copy))
                done.extend(refs)
        except BaseException:
            if done:
                await asyncio.shield(asyncio.to_thread(self.take_back, done))
            raise
        return Delivered(tuple(done))

    @staticmethod
    def _copies(
        mail_from: str,
        recipients: Sequence[tuple[str, Sequence[str]]],
        message: Sequence[bytes],
        prefix_fields: Sequence[str],
    ) -> list[tuple[str, list[bytes]]]:
        """(mailbox, the copy's pieces) per distinct mailbox. Pieces, never joined: a join or
        scan of 25 MB holds the GIL for tens of ms."""
        mailboxes = dict.fromkeys(m for _rcpt, boxes in recipients for m in boxes)
        trace = header_block(list(prefix_fields))
        return [
            (
                mailbox,
                [
                    header_block([return_path_field(mail_from), delivered_to_field(mailbox)]),
                    trace,
                    *message,
                ],
            )
            for mailbox in mailboxes
        ]

    def _submit(self, mailbox: str, folder: str, copy: list[bytes]) -> Future[list[MessageRef]]:
        return self._store.deliver_parts_nowait([(mailbox, folder)], copy)

    def take_back(self, refs: Sequence[MessageRef]) -> None:
        """Expunge copies already stored when the transaction they belong to failed (a later
        copy, or the forward to an outside address): the client retries the whole message.
        Best effort, logged."""
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


def deliver_to(
    accounts: Accounts,
    store: MailStore,
    *,
    hostname: str,
    recipient: str,
    message: bytes,
    mail_from: str = "",
) -> LocalResult:
    """One message for one local address (and whoever its aliases lead to), with a Received:
    field of its own; the outcome as a value, never raised."""
    if message.startswith(b"From "):  # an mbox "From " line from a pipe: not part of the mail
        message = message.split(b"\n", 1)[1] if b"\n" in message else b""
    if not message.strip():
        return LocalResult(Outcome.BAD_MESSAGE, "the message is empty")
    resolution = accounts.resolve(recipient)
    if not resolution.mailboxes:
        return LocalResult(Outcome.NO_SUCH_USER, f"no such local recipient: {recipient}")
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
        return LocalResult(Outcome.TRY_LATER, f"{exc}; try again later")
    except UnknownUserError as exc:
        return LocalResult(Outcome.TRY_LATER, f"{exc} (the account has no Maildir)")
    except OSError as exc:
        return LocalResult(Outcome.TRY_LATER, f"cannot store the message: {exc}")
    log.info("local delivery: %s -> %s id %s", recipient, ", ".join(resolution.mailboxes), queue_id)
    return LocalResult(Outcome.DELIVERED, mailboxes=resolution.mailboxes)
