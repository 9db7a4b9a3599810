"""Trace header fields the receiver prepends: `Received:`, `Return-Path:`, `Delivered-To:`.

- Received: RFC 5321 §4.4 (`from`, `by`, `with`, `id`, `for`, date), the `with` protocol
  names of RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 §3.7.3 (UTF8SMTP...),
  TLS details in a comment as Postfix writes them.
- Return-Path: RFC 5321 §4.4, the envelope sender at final delivery (`<>` for bounces).
- Delivered-To: the mailbox a copy was delivered to (Postfix and qmail write it; forwarding
  software uses it to detect loops).

Also counts existing Received fields for loop detection. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

# Only characters that can appear in a domain or an address literal go into `from`; anything
# else a client sent in HELO is replaced, so a HELO cannot forge header structure.
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-\[\]:_]")
_RECEIVED = re.compile(rb"^received:", re.IGNORECASE | re.MULTILINE)
# Headers end at the first empty line; look no further than this for the count (a message with
# more header bytes than this is not one we want to scan on the event loop).
_MAX_HEADER_SCAN_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TraceInfo:
    """Everything a Received field says about one transaction."""

    helo: str
    peer_ip: str
    by_host: str
    protocol: str  # from `protocol_name`
    queue_id: str
    tls_version: str | None = None
    tls_cipher: str | None = None
    tls_bits: int | None = None
    single_recipient: str | None = None  # RFC 5321 §4.4: `for` only when there is one


def protocol_name(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool = False) -> str:
    """The Received `with` keyword (RFC 3848 §2, RFC 6531 §3.7.3)."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return base + suffix


def safe_helo(helo: str) -> str:
    cleaned = _HELO_UNSAFE.sub("?", helo)[:255]
    return cleaned or "unknown"


def received_field(info: TraceInfo, *, when: datetime) -> str:
    """One Received field, folded (CRLF + tab), without the final CRLF."""
    literal = f"[IPv6:{info.peer_ip}]" if ":" in info.peer_ip else f"[{info.peer_ip}]"
    parts = [
        f"Received: from {safe_helo(info.helo)} ({literal})",
        f"\tby {info.by_host} (mailstack) with {info.protocol} id {info.queue_id}",
    ]
    if info.tls_version:
        bits = f" ({info.tls_bits}/{info.tls_bits} bits)" if info.tls_bits else ""
        parts.append(f"\t(using {info.tls_version} with cipher {info.tls_cipher}{bits})")
    if info.single_recipient is not None:
        parts.append(f"\tfor <{info.single_recipient}>; {format_datetime(when)}")
    else:
        parts[-1] += ";"
        parts.append(f"\t{format_datetime(when)}")
    return "\r\n".join(parts)


def local_received_field(*, by_host: str, queue_id: str, recipient: str, when: datetime) -> str:
    """The Received field of a local (LDA) delivery: no network peer."""
    return (
        f"Received: by {by_host} (mailstack deliver) id {queue_id}\r\n"
        f"\tfor <{recipient}>; {format_datetime(when)}"
    )


def return_path_field(mail_from: str) -> str:
    return f"Return-Path: <{mail_from}>"


def delivered_to_field(mailbox: str) -> str:
    return f"Delivered-To: {mailbox}"


def header_block(fields: list[str]) -> bytes:
    """Fields joined as a header prefix: each ends in CRLF; UTF-8 (RFC 6532) where needed."""
    return "".join(f + "\r\n" for f in fields).encode("utf-8", "surrogateescape")


def count_received(message: bytes) -> int:
    """How many Received fields the message's header section holds."""
    end = message.find(b"\r\n\r\n", 0, _MAX_HEADER_SCAN_BYTES)
    if end < 0:
        end = message.find(b"\n\n", 0, _MAX_HEADER_SCAN_BYTES)
    header = message[: end if end >= 0 else _MAX_HEADER_SCAN_BYTES]
    return len(_RECEIVED.findall(header))
