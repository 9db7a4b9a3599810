"""The mail transaction of an SMTP session: MAIL, RCPT, DATA and BDAT (RFC 5321 §3.3).

`MxSMTP` is the MX session (port 25); `smtp.submission.SubmissionSMTP` extends it. The
connection around the transaction (reading commands, deadlines, limits, EHLO, STARTTLS) is
`smtp.connection.SmtpConnection`; the listeners are `smtp.server`.

- Paths and parameters are parsed by `smtp.arguments` (pure): a malformed path is
  `501 5.1.7` on MAIL and `501 5.1.3` on RCPT (RFC 3463 §3.2: X.1.7 sender, X.1.3
  destination), and the session goes on; `RCPT TO:<Postmaster>` reaches our postmaster
  (RFC 5321 §4.1.1.3).
- DATA is framed by `smtp.framing.DataFramer` (bytes.find on chunks, not a coroutine step per
  line: a 25 MB message must not stall IMAP clients). CHUNKING / BDAT (RFC 3030), SIZE
  (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8 (RFC 6531). No AUTH on the MX port.
- Bare <CR>/<LF> in DATA or in a BDAT chunk: 554 and disconnect (Postfix's
  smtpd_forbid_bare_newline), so nothing we accept can split into two messages at a next
  hop (SMTP smuggling).
- DATA and BDAT have a deadline, not an idle timer: `data_timeout_s` plus one second per
  `min_data_rate` bytes received (a byte every few seconds does not keep a body open).

Decisions are `smtp.policy`'s and `smtp.handler`'s; this module moves bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiosmtpd.smtp import syntax
from mailstack.smtp import replies
from mailstack.smtp.arguments import (
    POSTMASTER,
    NullRecipientError,
    PathError,
    parse_params,
    parse_path,
    strip_keyword,
)
from mailstack.smtp.connection import READ_CHUNK, SmtpConnection
from mailstack.smtp.framing import DataError, DataFramer, LineEndings, parse_bdat
from mailstack.smtp.handler import MxEnvelope
from mailstack.smtp.policy import check_declared_size
from mailstack.smtp.replies import Reply

BAD_SENDER_SYNTAX = Reply(501, "5.1.7", "Bad sender address syntax")
BAD_RCPT_SYNTAX = Reply(501, "5.1.3", "Bad recipient address syntax")


class MxSMTP(SmtpConnection):
    """One SMTP session on the MX port."""

    async def _sender_refusal(self, address: str) -> Reply | None:
        """A refusal of MAIL FROM's address; the MX takes any (submission checks ownership)."""
        return None

    async def smtp_MAIL(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        syntax = replies.SYNTAX_ERROR.with_text("Syntax: MAIL FROM:<address> [parameters]")
        rest = strip_keyword("FROM:", arg) if arg else None
        if not rest:
            await self.reply(syntax)
            return
        if envelope.mail_from is not None:
            await self.reply(replies.NESTED_MAIL)
            return
        try:
            path = parse_path(rest, is_rcpt=False, local_part_limit=self.local_part_limit)
        except PathError as exc:
            self._log.info("MAIL refused: %s", exc)
            await self.reply(BAD_SENDER_SYNTAX.with_text(f"Bad sender address syntax: {exc}"))
            return
        address = path.address  # "" is the null reverse-path of bounces (RFC 5321 §4.5.5)
        options = path.rest.split()
        params = parse_params([o.upper() for o in options])
        if params is None:
            await self.reply(syntax)
            return
        body = params.pop("BODY", "7BIT")
        if body not in ("7BIT", "8BITMIME"):
            await self.reply(
                replies.PARAM_NOT_IMPLEMENTED.with_text("BODY must be 7BIT or 8BITMIME")
            )
            return
        smtputf8 = params.pop("SMTPUTF8", False)
        if smtputf8 is not True and smtputf8 is not False:
            await self.reply(replies.SYNTAX_ERROR.with_text("SMTPUTF8 takes no value"))
            return
        size = params.pop("SIZE", None)
        declared: int | None = None
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                await self.reply(syntax)
                return
            declared = int(size)
        if params:
            await self.reply(replies.PARAM_NOT_IMPLEMENTED)
            return
        if not address.isascii() and not smtputf8:
            await self.reply(replies.SMTPUTF8_REQUIRED)
            return
        refusal = check_declared_size(declared, self.data_size_limit or 0)
        if refusal is None:
            refusal = await self._sender_refusal(address)
        if refusal is not None:
            await self.reply(refusal)
            return
        envelope.mail_from = address
        envelope.mail_options = options
        envelope.smtp_utf8 = bool(smtputf8)
        envelope.body_8bit = body == "8BITMIME"
        await self.reply(replies.SENDER_OK)

    async def smtp_RCPT(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        if envelope.mail_from is None:
            await self.reply(replies.NEED_MAIL)
            return
        if envelope.bdat_started:
            await self.reply(replies.BAD_SEQUENCE.with_text("RCPT not allowed during BDAT"))
            return
        syntax = replies.SYNTAX_ERROR.with_text("Syntax: RCPT TO:<address>")
        rest = strip_keyword("TO:", arg) if arg else None
        if not rest:
            await self.reply(syntax)
            return
        try:
            path = parse_path(rest, is_rcpt=True, local_part_limit=self.local_part_limit)
        except NullRecipientError:
            await self.reply(replies.BAD_ADDRESS)
            return
        except PathError as exc:
            self._log.info("from=<%s> RCPT refused: %s", envelope.mail_from, exc)
            await self.reply(BAD_RCPT_SYNTAX.with_text(f"Bad recipient address syntax: {exc}"))
            return
        address = path.address
        if address == POSTMASTER:
            # RFC 5321 §4.1.1.3: "<Postmaster>" is the postmaster of our primary domain.
            address = f"{POSTMASTER}@{self._ctx.config.server.domains[0]}"
        if path.rest.strip():
            await self.reply(replies.PARAM_NOT_IMPLEMENTED)
            return
        if not address.isascii() and not envelope.smtp_utf8:
            await self.reply(replies.SMTPUTF8_REQUIRED)
            return
        status = await self.event_handler.handle_RCPT(self, self.session, envelope, address, [])
        if not status.startswith("2"):
            # Refused recipients never reach DATA: log them here (relay probes, dictionary
            # attacks), as Postfix's "NOQUEUE: reject: RCPT" lines.
            self._log.info("from=<%s> rcpt=<%s> refused: %s", envelope.mail_from, address, status)
        await self.push(status)

    async def smtp_DATA(self, arg: str | None) -> None:  # noqa: N802
        if await self.check_helo_needed():
            return
        envelope = self.mx_envelope()
        if arg:
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: DATA"))
            return
        if envelope.bdat_started:
            await self.reply(replies.BAD_SEQUENCE.with_text("DATA not allowed after BDAT"))
            return
        if envelope.mail_from is None:
            await self.reply(replies.NEED_MAIL)
            return
        if not envelope.rcpt_tos:
            await self.reply(replies.NEED_RCPT)
            return
        await self._push_raw("354 End data with <CR><LF>.<CR><LF>")
        framer = DataFramer(max_bytes=self.data_size_limit or 2**62, join=False)
        framer.receive_data(bytes(self._inbuf))
        self._inbuf.clear()
        # A deadline that grows with what arrives: a client below min_data_rate runs out.
        deadline = self.loop.time() + self._cfg.data_timeout_s
        while (event := framer.next_event()) is None:
            data = await self._fill(deadline)
            deadline += len(data) / self._min_rate()
            framer.receive_data(data)
        self._inbuf += event.leftover
        if event.error is DataError.BARE_NEWLINE:
            self._log_transaction(envelope, event.size, replies.BARE_NEWLINE)
            await self.reply(replies.BARE_NEWLINE)
            self._close()
            return
        await self._finish_message(envelope, event.parts, event.size, event.error)

    @syntax("BDAT size [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:  # noqa: N802
        parsed = parse_bdat(arg)
        if parsed is None:
            # RFC 3030 §2: without a valid size we cannot find the next command; give up.
            await self.reply(replies.SYNTAX_ERROR.with_text("Syntax: BDAT size [LAST]"))
            self._close()
            return
        size, last = parsed
        envelope = self.mx_envelope()
        session = self.mx_session()
        refusal: Reply | None = None
        if not session.host_name:
            refusal = replies.NEED_HELO
        elif envelope.mail_from is None:
            refusal = replies.NEED_MAIL
        elif not envelope.rcpt_tos:
            refusal = replies.NEED_RCPT
        if refusal is not None:
            await self._read_exact(size, keep=False)  # the chunk must be consumed regardless
            await self.reply(refusal)
            return
        envelope.bdat_started = True
        limit = self.data_size_limit or 2**62
        keep = envelope.bdat_error is None and envelope.bdat_size + size <= limit
        chunk, clean = await self._read_exact(size, keep=keep, endings=envelope.bdat_endings)
        envelope.bdat_size += size
        if not clean or (last and not envelope.bdat_endings.finish()):
            # As DATA: we no longer agree with the client on what the message is.
            self._log_transaction(envelope, envelope.bdat_size, replies.BARE_NEWLINE)
            await self.reply(replies.BARE_NEWLINE)
            self._close()
            return
        if keep:
            envelope.bdat_chunks.extend(chunk)
        elif envelope.bdat_error is None:
            envelope.bdat_error = DataError.TOO_BIG
            envelope.bdat_chunks.clear()
        if not last:
            if envelope.bdat_error is not None:
                # RFC 3030 §2: an error on a chunk ends the transaction; later chunks get 503.
                await self.reply(replies.MESSAGE_TOO_BIG)
                self._log_transaction(envelope, envelope.bdat_size, replies.MESSAGE_TOO_BIG)
                self._new_envelope()
                return
            await self.reply(replies.chunk_received(size))
            return
        content = tuple(envelope.bdat_chunks)
        envelope.bdat_chunks.clear()
        await self._finish_message(envelope, content, envelope.bdat_size, envelope.bdat_error)

    async def _read_exact(
        self, size: int, *, keep: bool, endings: LineEndings | None = None
    ) -> tuple[list[bytes], bool]:
        """Exactly `size` bytes (a BDAT chunk) in the pieces they came in (never joined: see
        `_finish_message`), discarded as read with keep=False; and False when `endings`
        saw a bare <CR> or <LF> in them."""
        parts: list[bytes] = []
        clean = True

        def take(piece: bytes) -> None:
            nonlocal clean
            if endings is not None and clean:
                clean = endings.feed(piece)
            if keep:
                parts.append(piece)

        buffered = min(size, len(self._inbuf))
        if buffered:
            take(bytes(self._inbuf[:buffered]))
            del self._inbuf[:buffered]
        remaining = size - buffered
        deadline = self.loop.time() + self._cfg.data_timeout_s + buffered / self._min_rate()
        while remaining:
            data = await self._fill(deadline, limit=min(remaining, READ_CHUNK))
            remaining -= len(data)
            deadline += len(data) / self._min_rate()
            take(data)
        return parts, clean

    def _min_rate(self) -> int:
        return max(self._cfg.min_data_rate, 1)

    async def _finish_message(
        self, envelope: MxEnvelope, content: Sequence[bytes], size: int, error: DataError | None
    ) -> None:
        # `content` stays in the pieces it arrived in: joining 25 MB is one C call that holds
        # the GIL for ~20 ms, and four of them finishing together stalled every session.
        if error is DataError.TOO_BIG:
            reply = replies.MESSAGE_TOO_BIG
        elif error is DataError.LINE_TOO_LONG:
            reply = replies.DATA_LINE_TOO_LONG
        else:
            reply = await self.event_handler.deliver(self.session, envelope, content)
        self._log_transaction(envelope, size, reply)
        self._new_envelope()
        await self.reply(reply)

    def _log_transaction(self, envelope: MxEnvelope, size: int, reply: Reply) -> None:
        self._log.info(
            "from=<%s> rcpts=%s size=%d%s result=%s",  # the reply last: web/events.py reads it
            envelope.mail_from,
            ",".join(f"<{r}>" for r in envelope.rcpt_tos),
            size,
            self._transaction_note(envelope),
            str(reply).split("\r\n", 1)[0],
        )

    def _transaction_note(self, envelope: MxEnvelope) -> str:
        """More for the transaction's log line (submission: who sent it)."""
        return ""
