"""SRS on the MX (`[smtp] srs`): the envelope sender of mail an alias forwards outside is
rewritten (delivery/srs.py) so that SPF passes at the final hop, and mail to such an address
(the bounces of what we forwarded) goes back to the original sender.

- Forwarding: a sender outside our hosted domains becomes `SRS0=...@<primary domain>` (the
  first of `server.domains`, whose SPF record `init` publishes for this host); `<>` and our own
  domains' senders are left alone (SPF already passes for them, and nobody else's bounce
  would come back to us).
- RCPT of `SRS0=`/`SRS1=` at a hosted domain: a valid one of ours stands for its original
  address, which is where the message then goes (through the outbound queue, or straight
  to the mailbox when the original address is hosted); one with a hash that is not ours or
  a stamp older than 21 days is refused with `550 5.7.1`, so the scheme opens no relay.
- The secret: `DIR/srs.secret` (0600), made on first use; its first line signs, every line
  verifies (add a new first line to rotate, drop the old one weeks later), as postsrsd's
  secret file. Several processes may make it at once: it is written to a temporary name and
  linked into place, so the first one wins and the others read it.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
from collections.abc import Collection
from pathlib import Path

from mailstack.delivery.srs import SrsCodec, SrsError
from mailstack.smtp.replies import Reply

from mailstack.base.config import Config
from mailstack.base.paths import StatePaths


def srs_refused(reason: str) -> Reply:
    return Reply(550, "5.7.1", f"Invalid SRS address: {reason}")


def read_or_make_secrets(path: Path) -> tuple[bytes, ...]:
    """The secrets in `path`, one per line, first the signing one; made when missing."""
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(base64.urlsafe_b64encode(secrets.token_bytes(24)).decode("ascii") + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            with contextlib.suppress(FileExistsError):  # another process was first: use its
                os.link(tmp, path)
        finally:
            tmp.unlink()
    lines = [line.strip() for line in path.read_bytes().splitlines()]
    keys = tuple(line for line in lines if line)
    if not keys:
        raise ValueError(f"{path} holds no secret")
    return keys


def srs_codec(config: Config, paths: StatePaths) -> SrsCodec | None:
    """The codec `serve` uses, or None when `[smtp] srs` is off."""
    if not config.smtp.srs:
        return None
    return SrsCodec(read_or_make_secrets(paths.srs_secret), config.server.domains[0])


def forward_sender(
    codec: SrsCodec | None, mail_from: str, hosted: Collection[str], now: float
) -> str:
    """The envelope sender for forwarding mail from `mail_from` to outside addresses."""
    domain = mail_from.rpartition("@")[2].lower()
    if codec is None or not mail_from or domain in hosted:
        return mail_from
    try:
        return codec.forward(mail_from, now)
    except SrsError:
        return mail_from  # a malformed SRS1 sender: pass it on as it came


def reverse_recipient(codec: SrsCodec, address: str, now: float) -> str | Reply:
    """The original address an SRS recipient of ours stands for, or the refusal."""
    try:
        return codec.reverse(address, now)
    except SrsError as exc:
        return srs_refused(str(exc))
