"""DKIM signing of outbound mail (RFC 6376), once, when it enters the queue.

Which key: the From: header's domain (RFC 6376 §1.1 leaves d= to the signer; signing with the
author domain is what DMARC alignment, RFC 7489 §3.1.1, needs), when that domain is hosted
here and `dkim/<selector>.<domain>.key` exists (`paths.dkim_key`). Anything else (no or
several From: addresses, a foreign domain, no key) goes out unsigned, with a log line: a
message we cannot sign is still a message the user wants delivered.

How (delivery/dkim_rsa.py; RSA by OpenSSL): rsa-sha256, relaxed/relaxed canonicalisation
(survives the header re-folding and whitespace changes relays commonly make), the header
fields RFC 6376 §5.4.1 lists as ones that SHOULD be signed, and `From` named twice in h=
("oversigning", RFC 6376 §8.15): a From: added on the way then breaks the signature instead
of being shown to the reader.

Signing happens at enqueue, never per attempt, so every retry sends the same bytes.
The selector is the domain's current one after `mailstack dkim rotate` (delivery/dkim_selectors.py),
else `[dkim] selector`.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Collection
from email.utils import getaddresses

from mailstack.delivery.dkim_selectors import signing_selector

from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths

log = logging.getLogger(__name__)

# RFC 6376 §5.4.1: "The following header fields SHOULD be included in the signature, if they
# are present in the message being signed". Listing a field the message lacks costs nothing.
SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    # Not in §5.4.1's list, but changing them changes what the reader sees (RFC 6376 §5.4):
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
)
OVERSIGNED: tuple[str, ...] = ("from",)


def _wire(message: bytes) -> bytes:
    """The message as it goes on the wire: delivery.remote sends every line end as CRLF, and
    DATA ends a message without one with CRLF before the "." (RFC 5321 §4.1.1.4; smtplib does
    it). Signing exactly that keeps us clear of a reading RFC 6376 §3.4.4 leaves open: whether
    white space ending a last line that lacks its CRLF is "at the end of a line" (dkimpy keeps
    it, we drop it; both agree once the CRLF is there)."""
    wire = re.sub(rb"\r?\n|\r", b"\r\n", message)
    return wire if not wire or wire.endswith(b"\r\n") else wire + b"\r\n"


def _header_block(message: bytes) -> bytes:
    m = re.search(rb"\r?\n\r?\n", message)
    return message[: m.start()] if m else message


def author_domain(message: bytes) -> str | None:
    """The domain of the single From: address, lower-case ASCII; None if not exactly one."""
    head = _header_block(message).decode("utf-8", "replace")
    values = re.findall(r"(?im)^from[ \t]*:(.*(?:\r?\n[ \t].*)*)", head)
    if len(values) != 1:
        return None
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", values[0])  # RFC 5322 §2.2.3
    addresses = [a for _, a in getaddresses([unfolded]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(".")
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError:
        return None


# (selector, domain, SHA-256 digest) -> the RSA signature, by another process that holds
# the key; raises when it cannot (the caller then signs itself).
RemoteSigner = Callable[[str, str, bytes], bytes]


def sign(
    message: bytes,
    *,
    paths: StatePaths,
    selector: str,
    hosted_domains: Collection[str],
    signer: RemoteSigner | None = None,
) -> bytes:
    """`message` with a DKIM-Signature field prepended, or unchanged when it is not ours to sign.
    With `signer`, the RSA step is asked of it (an SMTP worker asks the main process, so
    the worker never loads `cryptography`); if that fails, this process signs.

    Blocking (reads the key file, RSA): async callers use `asyncio.to_thread`.
    """
    domain = author_domain(message)
    if domain is None or domain not in hosted_domains:
        log.info("dkim: not signing: From: domain %s is not hosted here", domain or "(none)")
        return message
    try:
        selector = signing_selector(paths, selector, domain)
    except MailstackError as exc:  # a damaged state file: the configured key still works
        log.warning("dkim: %s; signing %s with selector %s", exc, domain, selector)
    # Fields the message has, in our order, then From again; listing absent fields would
    # freeze them too, which breaks on mailing lists that add List-* (RFC 6376 §5.4.2).
    present = {
        name.lower() for name in re.findall(rb"(?m)^([!-9;-~]+)[ \t]*:", _header_block(message))
    }
    include = [h for h in SIGNED_HEADERS if h.encode("ascii") in present] + list(OVERSIGNED)
    # Imported here: delivery.dkim_rsa is what a worker needs of signing (the spool imports
    # this module); `cryptography` is loaded only by the process that does the RSA step.
    from mailstack.delivery.dkim_rsa import signature_field

    make = functools.partial(
        signature_field,
        _wire(message),
        domain=domain,
        selector=selector,
        signed_headers=include,
        timestamp=int(time.time()),
    )
    field = None
    if signer is not None:
        try:
            field = make(sign=lambda digest: signer(selector, domain, digest))
        except Exception as exc:
            log.warning(
                "dkim: the main process did not sign for %s (%s): signing here", domain, exc
            )
    if field is None:
        key_path = paths.dkim_key(selector, domain)
        try:
            field = make(key_pem=key_path.read_bytes())
        except OSError as exc:
            log.warning("dkim: not signing for %s: cannot read %s: %s", domain, key_path, exc)
            return message
        except ValueError as exc:  # not an RSA key in PEM form
            log.warning("dkim: not signing for %s: %s", domain, exc)
            return message
    if b"\r\n" not in message:  # keep the message's own line ends consistent
        field = field.replace(b"\r\n", b"\n")
    return field + message
