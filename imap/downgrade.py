"""Downgrades a message with UTF-8 header fields (an SMTPUTF8 message, RFC 6532) for an IMAP
client that did not ENABLE UTF8=ACCEPT (or IMAP4rev2). Pure: bytes in, bytes out.

RFC 6855 §5 leaves the choice to the server: refuse such messages, hide them, or show a
downgraded form. We downgrade, as RFC 6857 describes, so such a client still sees every
message (with readable, RFC 2047-encoded text) and never a raw 8-bit header byte in ENVELOPE,
BODYSTRUCTURE, BODY[HEADER] or BODY[]. The stored message is never changed; a UTF8=ACCEPT
session gets it as delivered. What we do per header field (of the message and of each MIME
part), only for fields that hold 8-bit bytes, following RFC 6857 §3:

- address fields: a non-ASCII display name becomes encoded words; a
  non-ASCII domain its IDNA A-label; an address whose local part is non-ASCII cannot be
  written in ASCII, so it becomes an empty group whose name is the encoded original
  (`=?UTF-8?B?...?= :;`), which a client shows but cannot reply to;
- Message-ID, In-Reply-To, References and their Resent- form: the
  field is renamed `Downgraded-<name>` and its value encoded, so no client threads on a
  mangled identifier;
- Content-Type and Content-Disposition: each 8-bit parameter value in
  RFC 2231 form (`name*=utf-8''...`), so the MIME structure still parses;
- every other field: its value as encoded words (RFC 2047 §5, as unstructured text).
A field that is not UTF-8 (a legacy 8-bit header from before RFC 6532) is read as
Windows-1252 first, so its letters survive the trip.

RFC822.SIZE (RFC 3501 §2.3.4) is the size of what this client gets (imap/downgrade_size.py:
each message read once, then remembered), and so is the size SEARCH LARGER/SMALLER, SORT SIZE
and STATUS SIZE use for it (`SessionCore._seen_sizes`). APPENDLIMIT is about what is stored.
"""

from __future__ import annotations

import contextlib
import email.header
import email.utils
import re
import urllib.parse

from mailstack.imap.fetch import ParsedMessage
from mailstack.imap.mime import Entity, HeaderField

_EIGHT_BIT = re.compile(rb"[\x80-\xff]")
_ADDRESS_FIELDS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "resent-")
    for name in ("from", "sender", "reply-to", "to", "cc", "bcc")
)
_ID_FIELDS = frozenset({"message-id", "in-reply-to", "references", "resent-message-id"})
_PARAM_FIELDS = frozenset({"content-type", "content-disposition"})
# ; name="value" or ; name=token (RFC 2045 §5.1)
_PARAM = re.compile(r';(\s*)([!#$%&\'*+.0-9A-Z^_`a-z{|}~-]+)=("(?:[^"\\]|\\.)*"|[^;\s]*)')


def has_8bit(data: bytes) -> bool:
    return _EIGHT_BIT.search(data) is not None


def _entities(root: Entity) -> list[Entity]:
    out, todo = [], [root]
    while todo:
        entity = todo.pop()
        out.append(entity)
        todo.extend(entity.children)
        if entity.message is not None:
            todo.append(entity.message)
    return out


def downgrade(message: ParsedMessage) -> ParsedMessage:
    """`message` with every 8-bit header field downgraded; `message` itself if none is."""
    data = message.data
    if data.isascii():  # nearly every message: one pass in C, nothing to walk
        return message
    edits: list[tuple[int, int, bytes]] = []
    for entity in _entities(message.root):
        for field in entity.fields:
            if has_8bit(data[field.start : field.end]):
                edits.append((field.start, field.end, _field(field)))
    if not edits:
        return message
    out, pos = [], 0
    for start, end, new in sorted(edits):
        out += [data[pos:start], new]
        pos = end
    out.append(data[pos:])
    return ParsedMessage.parse(b"".join(out))


def downgrade_fields(lines: bytes) -> bytes:
    """Header field lines (CRLF-terminated, no blank line after them, as the header index
    stores them) with every 8-bit field downgraded."""
    message = ParsedMessage.parse(lines + b"\r\n")
    lowered = downgrade(message)
    return lines if lowered is message else lowered.data[:-2]


def encode_words(text: str, name: str = "") -> str:
    """`text` as RFC 2047 encoded words (UTF-8), folded for a field called `name`."""
    folded = email.header.Header(text, "utf-8", header_name=name).encode(linesep="\r\n")
    return folded


def _field(field: HeaderField) -> bytes:
    value = _text(field.value)
    name = field.name
    lower = name.lower()
    if lower in _ADDRESS_FIELDS:
        text = _addresses(value)
    elif lower in _ID_FIELDS:
        name = "Downgraded-" + name
        text = encode_words(value, name)
    elif lower in _PARAM_FIELDS:
        text = _PARAM.sub(_param, value)
    else:
        text = encode_words(value, name)
    return f"{name}: {text}\r\n".encode("ascii", "replace")


def _text(raw: bytes) -> str:
    """A field value as text: UTF-8 (RFC 6532), else a legacy 8-bit header from before it
    read as Windows-1252, the usual charset of those (a superset of Latin-1's printable
    characters), so "caf\\xe9" still reads "café" rather than losing the letter."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


def _param(m: re.Match[str]) -> str:
    raw = m[3]
    if raw.isascii():
        return m[0]
    if raw.startswith('"'):
        raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
    return f";{m[1]}{m[2]}*=utf-8''{urllib.parse.quote(raw, safe='')}"  # RFC 2231 §4


def _addresses(value: str) -> str:
    out = []
    for name, addr in email.utils.getaddresses([value]):
        local, _, domain = addr.rpartition("@")
        if not domain.isascii():
            # Not a valid IDN: the rule below then writes the whole address as a group name.
            with contextlib.suppress(UnicodeError):
                domain = domain.encode("idna").decode("ascii")
        if not local.isascii() or not domain.isascii():
            original = f"{name} <{addr}>" if name else addr
            out.append(f"{encode_words(original)} :;")  # RFC 6857 §3: an empty group
            continue
        addr = f"{local}@{domain}" if local else domain
        if name and not name.isascii():
            out.append(f"{encode_words(name)} <{addr}>")
        else:
            out.append(email.utils.formataddr((name, addr)))
    joined = ", ".join(out)
    # RFC 5322 §2.1.1: lines of at most 78 characters where possible; fold between addresses.
    return joined if len(joined) <= 70 else ",\r\n ".join(out)
