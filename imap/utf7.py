"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3). Pure.

Printable US-ASCII (0x20-0x7e) stands for itself, except "&", written "&-". Any other run of
characters is UTF-16BE, base64-encoded with "," instead of "/", no padding, between "&" and
"-". Decoding is strict (RFC 3501: "&" runs must be minimal and not encode printable ASCII)
so that each name has exactly one encoded form and the store's directory names are unique.
Control characters (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) are refused even when
encoded ("&AAA-" is NUL): RFC 9051 §5.1 says names SHOULD NOT hold them, and a NUL in a name
ends it early in every C string (Dovecot's, a file system's) that later holds it.
"""

from __future__ import annotations

import base64
import binascii
import re
import unicodedata

_RUN = re.compile(r"&([^-]*)-")


class Utf7Error(ValueError):
    """The text is not valid modified UTF-7."""


def _encode_run(run: str) -> str:
    raw = run.encode("utf-16-be")
    return "&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-"


def encode(name: str) -> str:
    """'Entwürfe' -> 'Entw&APw-rfe'; '&' -> '&-'."""
    out: list[str] = []
    run: list[str] = []
    for ch in name:
        if "\x20" <= ch <= "\x7e":
            if run:
                out.append(_encode_run("".join(run)))
                run = []
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    if run:
        out.append(_encode_run("".join(run)))
    return "".join(out)


def decode(name: str) -> str:
    """'Entw&APw-rfe' -> 'Entwürfe'. Raises Utf7Error on malformed input."""
    out: list[str] = []
    pos = 0
    run_end = -1
    while pos < len(name):
        ch = name[pos]
        if not "\x20" <= ch <= "\x7e":
            raise Utf7Error(f"character {ch!r} must be encoded")
        if ch != "&":
            out.append(ch)
            pos += 1
            continue
        m = _RUN.match(name, pos)
        if m is None:
            raise Utf7Error("unterminated &...- run")
        pos = m.end()
        if not m[1]:
            out.append("&")
            continue
        b64 = m[1].replace(",", "/")
        if "/" in m[1] or "=" in b64 or len(b64) % 4 == 1:
            raise Utf7Error(f"bad base64 in {m[0]!r}")
        try:
            raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
            text = raw.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            raise Utf7Error(f"bad encoding in {m[0]!r}") from None
        if any("\x20" <= t <= "\x7e" for t in text) or _encode_run(text) != m[0]:
            raise Utf7Error(f"{m[0]!r} is not the canonical encoding")
        if any(unicodedata.category(t) == "Cc" for t in text):
            raise Utf7Error(f"{m[0]!r} encodes a control character")
        if run_end == m.start():  # "&AOQ-&APY-": one run must not be split in two
            raise Utf7Error("adjacent encoded runs")
        run_end = pos
        out.append(text)
    return "".join(out)


def is_valid(name: str) -> bool:
    try:
        decode(name)
    except Utf7Error:
        return False
    return True
