"""The Authentication-Results header field (RFC 8601): writing ours, removing forged ones.

Pure: bytes and strings in, bytes and strings out.

RFC 8601 §5: a border MTA MUST remove (or rename) any Authentication-Results field that
claims its own authserv-id before adding its own, or a sender could forge a "pass" that our
users' clients trust. Fields with other authserv-ids are left alone (they are someone else's
claims, which clients ignore unless configured to trust them).

    authres-header-field = "Authentication-Results:" authres-payload
    authres-payload = [CFWS] authserv-id [ CFWS authres-version ]
                      ( no-result / 1*resinfo ) [CFWS] CRLF
    resinfo = [CFWS] ";" methodspec [ CFWS reasonspec ] [ CFWS 1*propspec ]
    methodspec = [CFWS] method [CFWS] "=" [CFWS] result
    propspec = ptype [CFWS] "." [CFWS] property [CFWS] "=" pvalue
    pvalue = [CFWS] ( value / [ [ local-part ] "@" ] domain-name ) [CFWS]
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HEADER_NAME = "Authentication-Results"

# RFC 2045 token: any ASCII printable except SPACE and tspecials; "@" is allowed here because
# pvalue permits `local-part "@" domain-name` unquoted (RFC 8601 §2.2).
_TOKEN_OR_ADDR = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+(?:@[A-Za-z0-9.\-]+)?")
_COMMENT_SAFE = re.compile(r"[^\x20-\x7e]|[()\\]")


@dataclass(frozen=True, slots=True)
class MethodResult:
    """One resinfo: `method=result (comment) ptype.property=value ...`."""

    method: str  # "spf", "dkim", "dmarc"
    result: str  # "pass", "fail", "none", "temperror", ...
    properties: tuple[tuple[str, str], ...] = ()  # (("smtp.mailfrom", "a@example.com"),)
    comment: str = ""


def _pvalue(value: str) -> str:
    if _TOKEN_OR_ADDR.fullmatch(value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    escaped = re.sub(r"[\x00-\x1f\x7f]", "?", escaped)
    return f'"{escaped}"'


def _comment(text: str) -> str:
    return "(" + _COMMENT_SAFE.sub("?", text) + ")"


def format_header(authserv_id: str, results: list[MethodResult]) -> str:
    """The whole field, folded one resinfo a line, without the final CRLF."""
    if not results:
        return f"{HEADER_NAME}: {authserv_id}; none"  # RFC 8601 §2.2 no-result
    lines = [f"{HEADER_NAME}: {authserv_id};"]
    for i, r in enumerate(results):
        parts = [f"{r.method}={r.result}"]
        if r.comment:
            parts.append(_comment(r.comment))
        parts += [f"{name}={_pvalue(value)}" for name, value in r.properties]
        lines.append("\t" + " ".join(parts) + (";" if i < len(results) - 1 else ""))
    return "\r\n".join(lines)


def split_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each with its continuation lines and line ends) and the rest.

    The rest starts with the blank line that ends the header (RFC 5322 §2.1), if any.
    """
    fields: list[bytes] = []
    pos = 0
    n = len(message)
    while pos < n:
        end = message.find(b"\n", pos)
        end = n if end < 0 else end + 1
        line = message[pos:end]
        if line in (b"\r\n", b"\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        else:
            fields.append(line)
        pos = end
    return fields, message[pos:]


def field_name(field: bytes) -> str:
    name, colon, _ = field.partition(b":")
    return name.strip().decode("ascii", "replace").lower() if colon else ""


def field_value(field: bytes) -> str:
    """The unfolded value of a field (RFC 5322 §2.2.3), decoded leniently."""
    _, _, value = field.partition(b":")
    text = value.decode("utf-8", "surrogateescape")
    return re.sub(r"\r?\n(?=[ \t])", "", text).strip()


def _skip_cfws(text: str, i: int) -> int:
    depth = 0
    while i < len(text):
        c = text[i]
        if depth:
            if c == "\\":
                i += 1
            elif c == "(":
                depth += 1
            elif c == ")":
                depth -= 1
        elif c == "(":
            depth = 1
        elif not c.isspace():
            break
        i += 1
    return i


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value, lower-cased ("" if none)."""
    i = _skip_cfws(value, 0)
    if value[i : i + 1] == '"':
        out, i = [], i + 1
        while i < len(value) and value[i] != '"':
            if value[i] == "\\":
                i += 1
            out.append(value[i : i + 1])
            i += 1
        return "".join(out).lower()
    m = re.match(r"[^\s;()]+", value[i:])
    return m[0].lower() if m else ""


def strip_forged(message: bytes, authserv_id: str) -> tuple[bytes, int]:
    """Remove every Authentication-Results field claiming `authserv_id`; return the count."""
    fields, rest = split_fields(message)
    # "mail.example.com." is the same host as "mail.example.com" (RFC 1034 §3.1: the trailing
    # dot only says the name is absolute): a forgery that spells it so is ours to remove too.
    ours = authserv_id.lower().rstrip(".")
    kept = [
        f
        for f in fields
        if not (
            field_name(f) == HEADER_NAME.lower()
            and authserv_id_of(field_value(f)).rstrip(".") == ours
        )
    ]
    removed = len(fields) - len(kept)
    if not removed:
        return message, 0
    return b"".join(kept) + rest, removed


def header_values(fields: list[bytes], name: str) -> list[str]:
    wanted = name.lower()
    return [field_value(f) for f in fields if field_name(f) == wanted]
