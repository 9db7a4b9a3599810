"""RFC822.SIZE for a client without UTF8=ACCEPT: the size of the message as imap/downgrade.py
hands it to that client (RFC 3501 §2.3.4: RFC822.SIZE is the number of octets BODY[] gives).

Most messages are plain ASCII and keep their stored size; the others may grow when their 8-bit
header fields (of the message or of any MIME part) are downgraded. Which is which cannot be
told without reading the message, so each is read once, its size for such clients found (an
ASCII message: no parse at all) and remembered in the account's structure cache
(imap/cache.py) under `<base name>:size` (a Maildir base name holds no ":", so these keys never
meet a structure row), with the stored size as the row's size like every row there. A client's
later FETCH RFC822.SIZE, SEARCH LARGER/SMALLER, SORT SIZE or STATUS SIZE, of any folder the
message is copied or moved to, reads nothing. Why not the structure cache's `has_8bit`: it
sees only what ENVELOPE and BODYSTRUCTURE show, not an 8-bit `X-Note:` or `Organization:`.
Any FETCH that parses a message for its structure records this row too, the bytes in hand.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Sequence

from mailstack.delivery.store import MailStore, MessageInfo
from mailstack.imap.cache import CacheRow, StructureCache
from mailstack.imap.downgrade import downgrade
from mailstack.imap.fetch import ParsedMessage

SUFFIX = ":size"


def seen_size(raw: bytes) -> int:
    """RFC822.SIZE of the stored message `raw` for a client without UTF8=ACCEPT."""
    if raw.isascii():  # nearly every message: the length to_crlf gives, without copying
        # Stored messages have LF line ends: a search for CR is quicker than counting CRLF.
        crlf = raw.count(b"\r\n") if b"\r" in raw else 0
        return len(raw) + raw.count(b"\n") - crlf
    return downgrade(ParsedMessage.parse(raw)).size


def sizes_seen(
    cache: StructureCache, store: MailStore, user: str, folder: str, infos: Sequence[MessageInfo]
) -> dict[int, int]:
    """{uid: size a client without UTF8=ACCEPT sees} for `infos`; a message expunged
    meanwhile is absent. Runs in a worker thread (it reads files and the cache)."""
    rows = cache.get_many([(m.key + SUFFIX, m.size) for m in infos])
    out: dict[int, int] = {}
    missing: dict[int, MessageInfo] = {}
    for m in infos:
        text = rows.get(m.key + SUFFIX)
        if text is not None and text.isdigit():
            out[m.uid] = int(text)
        else:
            missing[m.uid] = m
    if not missing:
        return out
    new: list[CacheRow] = []

    def read_all() -> Generator[tuple[int, bytes]]:
        yield from store.read_messages(user, folder, list(missing))

    with contextlib.closing(read_all()) as files:
        for uid, raw in files:
            size = seen_size(raw)
            out[uid] = size
            info = missing[uid]
            new.append(size_row(info.key, info.size, size))
    cache.put_many(new)
    return out


def size_row(key: str, size: int, seen: int) -> CacheRow:
    """The cache row that remembers `seen`, the size a client without UTF8=ACCEPT sees of
    the message `key` of RFC822.SIZE `size` (for `put_many`)."""
    return key + SUFFIX, size, str(seen)
