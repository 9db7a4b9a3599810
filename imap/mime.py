"""MIME structure of a message: a tree of entities with byte offsets (RFC 5322, RFC 2045-2046).

`parse_message(data)` takes a message in IMAP form (CRLF line endings; `to_crlf` converts what
Maildir stores with LF) and returns the root `Entity`. Every entity records where its header
starts, where its body starts and where it ends, so FETCH can slice BODY[1.2.MIME] out of the
original bytes without re-serialising anything, and so part bytes are exactly what is on disk.

Invariants:
- Never raises on any input: malformed MIME (no boundary parameter, boundary never found, no
  close delimiter, header lines without a colon, 8-bit bytes, junk) still yields a tree whose
  offsets satisfy `start <= body_start <= end <= len(data)`. Parsers downstream rely on this.
- A multipart entity always has at least one child (IMAP's `body-type-mpart = 1*body ...`
  cannot express zero): a multipart whose boundary never occurs gets one empty-header text
  child covering its whole body. Dovecot gives it an empty child instead; we keep the text
  readable. Likewise a multipart without a boundary parameter, or an invalid Content-Type,
  is text/plain (RFC 2045 §5.2), and a header line without a colon starts the body (as
  Python's email package reads it; Dovecot keeps it in the header).
- Nesting is cut at MAX_DEPTH and the part count at MAX_PARTS (Dovecot's
  `mail_max_nested_mime_parts`/`max_total_mime_parts` defaults): deeper or later multiparts
  are treated as single text parts, so hostile input cannot exhaust the stack.
- Pure: no I/O.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass
from typing import NamedTuple

# Dovecot's defaults for message_parser limits (lib-mail/message-parser.h).
MAX_DEPTH = 100
MAX_PARTS = 10_000

_FOLD = re.compile(rb"\r\n(?=[ \t])")
# RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126; RFC 5322 §4.5.3 (obs)
# allows white space before the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:")
# One whole field whose lines all end in CRLF: the name, then its value (the rest of its line
# and every continuation line, CRLFs included). A bare CR is text, as in the line rule.
_LINE = rb"[^\r]*(?:\r(?!\n)[^\r]*)*\r\n"
_FIELD_LINES = re.compile(rb"([!-9;-~]+)[ \t]*:(" + _LINE + rb"(?:[ \t]" + _LINE + rb")*)")


def to_crlf(data: bytes) -> bytes:
    """LF or CRLF line endings -> CRLF (RFC 9051 §2.3.4: IMAP sees messages with CRLF).

    RFC822.SIZE is the length of the result, as `MessageInfo.size` promises.
    """
    # The same as re.sub(rb"\r?\n", b"\r\n", data), at memchr speed.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class HeaderField(NamedTuple):
    """One header field: `name` as written, `value` unfolded (RFC 5322 §2.2.3) and stripped;
    `start`/`end` delimit the raw field including continuation lines and its final CRLF.
    A NamedTuple: a header block makes one per field, and a frozen dataclass cost three times
    as much to create."""

    name: str
    value: bytes
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class ContentType:
    """A parsed Content-Type (RFC 2045 §5.1) or Content-Disposition (RFC 2183) value.

    `maintype`/`subtype` keep the sender's spelling (compare with `.lower()`); `params` are
    (attribute, value) pairs in order with quoting removed. RFC 2231 parameters (`name*=`,
    `name*0*=`) are kept as written, as RFC 2047 words are.
    """

    maintype: str
    subtype: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.params if k.lower() == wanted), None)


# RFC 2045 §5.2: no (or an unparsable) Content-Type means text/plain; charset=us-ascii.
DEFAULT_TYPE = ContentType("text", "plain", (("charset", "us-ascii"),))
# RFC 2046 §5.1.5: the default inside multipart/digest.
DIGEST_DEFAULT_TYPE = ContentType("message", "rfc822")


@dataclass(frozen=True, slots=True)
class Entity:
    """A MIME entity (a message or a body part) located in the message bytes.

    `data[start:body_start]` is its header including the blank line (the MIME header for a
    body part), `data[body_start:end]` its body. `children` are the parts of a multipart;
    `message` is the encapsulated message of a message/rfc822 part. At most one of the two
    is non-empty.
    """

    start: int
    body_start: int
    end: int
    fields: tuple[HeaderField, ...]
    content_type: ContentType
    children: tuple[Entity, ...] = ()
    message: Entity | None = None

    @property
    def is_multipart(self) -> bool:
        return bool(self.children)

    def header(self, name: str) -> bytes | None:
        """The first field called `name` (case-insensitive), unfolded; None if absent."""
        wanted = name.lower()
        return next((f.value for f in self.fields if f.name.lower() == wanted), None)

    def header_text(self, name: str) -> str | None:
        """`header(name)` as text: UTF-8, other 8-bit bytes kept as surrogate escapes."""
        value = self.header(name)
        return None if value is None else value.decode("utf-8", "surrogateescape")

    @property
    def transfer_encoding(self) -> str:
        """Content-Transfer-Encoding, lower-case, "7bit" when absent (RFC 2045 §6.1)."""
        value = self.header_text("Content-Transfer-Encoding")
        return (strip_comments(value).strip().lower() if value else "") or "7bit"


@dataclass
class _Budget:
    """Parts left to create (MAX_PARTS), shared across the recursion of one parse, and how
    that parse reads message/global."""

    parts_left: int = MAX_PARTS
    nest_global: bool = False  # see parse_message


def parse_header(
    data: bytes, start: int, end: int, *, only: frozenset[str] | None = None
) -> tuple[tuple[HeaderField, ...], int]:
    """Parse the header block at data[start:end]; return the fields and where the body starts.
    With `only` (lower-case names), just the fields so named: a caller that keeps a few
    fields of a header with dozens (Received, DKIM-Signature, ...) builds no others.

    The header ends at the first empty line (RFC 5322 §2.1), which belongs to the header. A
    line that is neither a field nor a continuation also ends it and starts the body (no blank
    line consumed), as Python's email package does; without either the body is empty.

    Each well-formed field (its lines all end in CRLF) is taken by one regex match; anything
    else (a leading continuation, a line without a colon, a last line without CRLF) goes to
    `_parse_lines`, the line-by-line rule. A first header fetch of a new folder parses every
    header block, and a Python step per line was most of its cost.
    """
    fields: list[HeaderField] = []
    pos = start
    match = _FIELD_LINES.match
    while pos < end:
        m = match(data, pos, end)
        if m is None:
            if data.startswith(b"\r\n", pos) and pos + 2 <= end:  # the empty line
                return tuple(fields), pos + 2
            break
        after = m.end()
        if after < end and data[after] in b" \t":  # a continuation without CRLF follows
            break
        name = m[1].decode("ascii")
        if only is not None and name.lower() not in only:
            pos = after
            continue
        raw = m[2]
        if raw.find(b"\r\n") == len(raw) - 2:  # one line: nothing to unfold
            value = raw.strip(b" \t\r\n")
        else:
            value = _FOLD.sub(b"", raw).strip(b" \t\r\n")
        fields.append(HeaderField(name, value, pos, after))
        pos = after
    if pos >= end:
        return tuple(fields), end
    found, body = _parse_lines(data, pos, end, fields)
    if only is not None:
        found = tuple(f for f in found if f.name.lower() in only)
    return found, body


def _parse_lines(
    data: bytes, start: int, end: int, fields: list[HeaderField]
) -> tuple[tuple[HeaderField, ...], int]:
    """`parse_header` from `start` (a line's start, no field open) one line at a time."""
    name: str | None = None
    field_start = pos = start
    value_start = start

    def close(at: int) -> None:
        if name is not None:
            raw = data[value_start:at]
            value = _FOLD.sub(b"", raw).strip(b" \t\r\n")
            fields.append(HeaderField(name, value, field_start, at))

    while pos < end:
        nl = data.find(b"\r\n", pos, end)
        line_end = end if nl < 0 else nl + 2
        line_stop = end if nl < 0 else nl
        if line_stop == pos:  # the empty line
            close(pos)
            return tuple(fields), line_end
        first = data[pos]
        if first in b" \t":
            # Continuation. A leading one with no field before it is a defect (Python's
            # FirstHeaderLineIsContinuationDefect) and is skipped.
            pos = line_end
            continue
        m = _FIELD.match(data, pos, line_stop)
        if m is None:
            close(pos)
            return tuple(fields), pos
        close(pos)
        name = m[1].decode("ascii")
        field_start, value_start = pos, m.end()
        pos = line_end
    close(end)
    return tuple(fields), end


def strip_comments(text: str) -> str:
    """Remove RFC 5322 §3.2.2 comments (nested parentheses), leaving quoted strings alone."""
    out: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
            if depth == 0:
                out.append(ch)
            continue
        if ch == "\\" and (quoted or depth):
            escaped = True
            if depth == 0:
                out.append(ch)
            continue
        if quoted:
            out.append(ch)
            if ch == '"':
                quoted = False
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            if ch == '"':
                quoted = True
            out.append(ch)
    return "".join(out)


def _split_unquoted(text: str, sep: str) -> list[str]:
    """Split on `sep` outside quoted strings."""
    pieces: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\" and quoted:
            current.append(ch)
            escaped = True
        elif ch == '"':
            current.append(ch)
            quoted = not quoted
        elif ch == sep and not quoted:
            pieces.append("".join(current))
            current = []
        else:
            current.append(ch)
    pieces.append("".join(current))
    return pieces


def unquote(text: str) -> str:
    """Remove one level of RFC 5322 quoted-string quoting, if present."""
    text = text.strip()
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1], flags=re.DOTALL)
    return text


# RFC 2231 §3: a continuation segment `name*<n>` or `name*<n>*` (the latter charset-encoded).
_SEGMENT = re.compile(r"(.+?)\*(0|[1-9][0-9]{0,2})(\*?)\Z")


def parse_params(pieces: list[str]) -> tuple[tuple[str, str], ...]:
    """`attribute=value` pieces (RFC 2045 §5.1) -> pairs; pieces without "=" are dropped.

    RFC 2231 continuations are joined as Dovecot joins them: `name*0="a"; name*1="b"` becomes
    `name` "ab", and encoded segments (`name*0*=utf-8''%E2; name*1*=%82`) become one `name*`
    value still in RFC 2231 encoding, which clients decode (as they decode `name*=`).
    """
    params: list[tuple[str, str]] = []
    segments: dict[str, list[tuple[int, bool, str]]] = {}
    for piece in pieces:
        attribute, eq, value = piece.partition("=")
        attribute, value = attribute.strip(), value.strip()
        if value.startswith('"') and (len(value) < 2 or not value.endswith('"')):
            continue  # an unterminated quoted-string: dropped, as Dovecot does
        if not eq or not attribute or " " in attribute:
            continue
        if (m := _SEGMENT.match(attribute)) is not None:
            base = m[1].lower()
            if base not in segments:
                segments[base] = []
                params.append((m[1], ""))  # placeholder keeps the parameter's position
            segments[base].append((int(m[2]), bool(m[3]), unquote(value)))
        else:
            params.append((attribute, unquote(value)))
    if not segments:
        return tuple(params)
    joined: list[tuple[str, str]] = []
    for attribute, value in params:
        parts = segments.pop(attribute.lower(), None) if not value else None
        if parts is None:
            joined.append((attribute, value))
            continue
        parts.sort()
        encoded = any(is_encoded for _, is_encoded, _ in parts)
        joined.append((attribute + "*" if encoded else attribute, "".join(v for *_, v in parts)))
    return tuple(joined)


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`{|}~0-9A-Za-z]+\Z")


def parse_content_type(value: str | None, default: ContentType = DEFAULT_TYPE) -> ContentType:
    """Content-Type value -> ContentType; `default` when absent or not `type/subtype`."""
    if value is None:
        return default
    pieces = _split_unquoted(strip_comments(value), ";")
    maintype, slash, subtype = pieces[0].strip().partition("/")
    maintype, subtype = maintype.strip(), subtype.strip()
    if not slash or not _TOKEN.match(maintype) or not _TOKEN.match(subtype):
        # RFC 2045 §5.2: an invalid Content-Type is treated as text/plain; charset=us-ascii.
        return DEFAULT_TYPE
    return ContentType(maintype, subtype, parse_params(pieces[1:]))


def parse_disposition(value: str | None) -> ContentType | None:
    """Content-Disposition (RFC 2183) -> ContentType(disposition, "", params), or None."""
    if value is None:
        return None
    pieces = _split_unquoted(strip_comments(value), ";")
    kind = pieces[0].strip()
    if not kind:
        return None
    return ContentType(kind, "", parse_params(pieces[1:]))


def _delimiters(data: bytes, start: int, end: int, boundary: bytes) -> list[tuple[int, int, bool]]:
    """Boundary lines in data[start:end] as (line start, after its CRLF, is close delimiter).

    dash-boundary = "--" boundary                       ; RFC 2046 §5.1.1
    delimiter     = CRLF dash-boundary
    close-delimiter = delimiter "--"
    transport-padding = *LWSP-char                      ; after either, before CRLF
    """
    marker = b"--" + boundary
    line_marker = b"\r\n" + marker
    found: list[tuple[int, int, bool]] = []
    # Only a line start can hold a delimiter, so search for CRLF "--" boundary (plus the very
    # start): text full of "--boundary" mid-line costs no Python-level iterations.

    def next_candidate(pos: int) -> int:
        k = data.find(line_marker, pos, end)
        return -1 if k < 0 else k + 2  # always > pos: the loop advances

    i = start if data.startswith(marker, start, end) else next_candidate(start)
    while i >= 0:
        j = i + len(marker)
        is_close = data.startswith(b"--", j, end)
        if is_close:
            j += 2
        while j < end and data[j] in b" \t":
            j += 1
        if j == end or data.startswith(b"\r\n", j, end):
            found.append((i, min(j + 2, end), is_close))
            if is_close:
                break
        i = next_candidate(i)
    return found


def _entity(
    data: bytes, start: int, end: int, default: ContentType, depth: int, budget: _Budget
) -> Entity:
    fields, body_start = parse_header(data, start, end)
    entity = Entity(start, body_start, end, fields, DEFAULT_TYPE)
    ctype = parse_content_type(entity.header_text("Content-Type"), default)
    main = ctype.maintype.lower()
    budget.parts_left -= 1
    may_nest = depth < MAX_DEPTH and budget.parts_left > 0
    if main == "multipart":
        boundary = ctype.param("boundary")
        if not boundary or not may_nest:
            # No way to find the parts: treat as text (RFC 2046 §5.1.1 requires boundary).
            return Entity(start, body_start, end, fields, DEFAULT_TYPE)
        inner = DIGEST_DEFAULT_TYPE if ctype.subtype.lower() == "digest" else DEFAULT_TYPE
        children: list[Entity] = []
        lines = _delimiters(data, body_start, end, boundary.encode("utf-8", "surrogateescape"))
        for n, (_, part_start, is_close) in enumerate(lines):
            if is_close or budget.parts_left <= 0:
                break
            # The CRLF before the next delimiter belongs to it (RFC 2046 §5.1.1).
            part_end = end if n + 1 == len(lines) else max(part_start, lines[n + 1][0] - 2)
            children.append(_entity(data, part_start, part_end, inner, depth + 1, budget))
        if not children:
            children.append(Entity(body_start, body_start, end, (), DEFAULT_TYPE))
        return Entity(start, body_start, end, fields, ctype, tuple(children))
    # RFC 9051 §7.5.2 encapsulates message/global as message/rfc822 (RFC 6532 §3.7), but
    # IMAP4rev1's grammar only knows MESSAGE/RFC822 and a rev1 client would misread an envelope
    # after "message" "global" (Dovecot 2.3 keeps it a leaf): so only when asked
    # (`nest_global`), and only unencoded (§3.7 allows base64/quoted-printable for it, and an
    # encoded message has no header to show).
    subtype = ctype.subtype.lower()
    if (
        main == "message"
        and (
            subtype == "rfc822"
            or (
                subtype == "global"
                and budget.nest_global
                and entity.transfer_encoding in IDENTITY_ENCODINGS
            )
        )
        and may_nest
    ):
        message = _entity(data, body_start, end, DEFAULT_TYPE, depth + 1, budget)
        return Entity(start, body_start, end, fields, ctype, message=message)
    return Entity(start, body_start, end, fields, ctype)


def parse_message(data: bytes, *, nest_global: bool = False) -> Entity:
    """The MIME tree of `data` (CRLF line endings). Never raises.

    `nest_global`: a message/global part (RFC 6532 §3.7) holds an encapsulated message, as a
    message/rfc822 part does (RFC 9051 §7.5.2), for a client that takes UTF-8 (IMAP4rev2 or
    UTF8=ACCEPT); otherwise it is a leaf, the form IMAP4rev1's grammar can express."""
    return _entity(data, 0, len(data), DEFAULT_TYPE, 0, _Budget(nest_global=nest_global))


def has_global(root: Entity) -> bool:
    """Does the tree hold a message/global leaf (which `nest_global` would open)?"""
    todo = [root]
    while todo:
        entity = todo.pop()
        ctype = entity.content_type
        if ctype.maintype.lower() == "message" and ctype.subtype.lower() == "global":
            return True
        todo.extend(entity.children)
        if entity.message is not None:
            todo.append(entity.message)
    return False


def message_parts(message: Entity) -> tuple[Entity, ...]:
    """The numbered parts of a message (RFC 9051 §6.4.5): its children if it is multipart,
    else the message itself (part 1 of a single-part message is its body)."""
    return message.children or (message,)


def find_part(root: Entity, path: tuple[int, ...]) -> Entity | None:
    """The entity that part number `path` (e.g. (2, 1) for "2.1") names, or None if none.

    Inside a message/rfc822 part, numbering continues with the encapsulated message's parts
    (RFC 9051 §6.4.5: "4.2.2.1" is part 1 of the message in part 4.2.2).
    """
    parts = message_parts(root)
    found: Entity | None = None
    for n in path:
        if not 1 <= n <= len(parts):
            return None
        # Is `parts` the lone body of a single-part message rather than a multipart's list?
        is_message_body = (
            not parts[0].children
            and parts[0].message is None
            and (parts[0] is root or (found is not None and found.message is parts[0]))
        )
        found = parts[n - 1]
        if found.children:
            parts = found.children
        elif found.message is not None:
            parts = message_parts(found.message)
        elif is_message_body:
            parts = ()  # the body of a single-part message has no parts of its own
        else:
            # "non-multipart [MIME-IMB] messages with no encapsulated message, only have a
            # part 1" (RFC 3501 §6.4.5): Dovecot applies it to a multipart's leaf parts too,
            # so 2.1 of a leaf part 2 is part 2 itself.
            parts = (found,)
    return found


# -- decoding (BINARY, SEARCH) ----------------------------------------------------------------

_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
KNOWN_ENCODINGS = IDENTITY_ENCODINGS | {"base64", "quoted-printable"}


def decode_transfer(body: bytes, encoding: str) -> bytes | None:
    """Undo a Content-Transfer-Encoding (RFC 2045 §6); None if `encoding` is unknown.

    Lenient like Python's email package: base64 ignores characters outside the alphabet and
    missing padding; quoted-printable keeps malformed "=" sequences as they are.
    """
    encoding = encoding.lower()
    if encoding in IDENTITY_ENCODINGS:
        return body
    if encoding == "base64":
        alphabet = _NOT_BASE64.sub(b"", body)
        if len(alphabet) % 4 == 1:  # a lone trailing sextet carries no whole byte
            alphabet = alphabet[:-1]
        alphabet += b"=" * (-len(alphabet) % 4)
        try:
            return binascii.a2b_base64(alphabet)
        except binascii.Error:  # cannot happen after the clean-up above; stay total anyway
            return b""
    if encoding == "quoted-printable":
        return decode_quoted_printable(body)
    return None


_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_QP_LINE_END = re.compile(rb"[ \t]*\r?\n")


def decode_quoted_printable(body: bytes) -> bytes:
    """Quoted-printable by RFC 2045 §6.7: white space at the end of a line is transport
    padding and goes (rule 3); "=" at the end of a line, padding after it or not, is a soft
    line break (rule 5); "=XX" is an octet, lower-case hex accepted (note 1); any other "="
    stays as written (note 2's "reasonable approach"). Python's binascii.a2b_qp keeps the
    padding and misses "=  " soft breaks. Line breaks come out as CRLF."""
    out = []
    lines = _QP_LINE_END.split(body)
    for n, line in enumerate(lines):
        is_last = n == len(lines) - 1
        if is_last:
            line = line.rstrip(b" \t")  # a last line without its line break
        soft = line.endswith(b"=")
        if soft:
            line = line[:-1]
        out.append(_QP_ESCAPE.sub(lambda m: bytes([int(m[1], 16)]), line) if b"=" in line else line)
        if not soft and not is_last:
            out.append(b"\r\n")
    return b"".join(out)


def decode_charset(data: bytes, charset: str | None) -> str:
    """Bytes in `charset` -> text; unknown or non-text charsets fall back to UTF-8, and
    undecodable bytes become U+FFFD. Never raises."""
    for name in (charset or "us-ascii", "utf-8"):
        try:
            if name.lower() in ("us-ascii", "ascii"):
                # Mislabelled 8-bit mail is common; UTF-8 decodes ASCII identically.
                name = "utf-8"
            return data.decode(name, "replace")
        except (LookupError, ValueError, TypeError):
            continue
    return data.decode("utf-8", "replace")  # pragma: no cover - utf-8 always exists


# RFC 2047 §2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?="
# (RFC 2231 §5 allows "charset*language").
_ENCODED_WORD = re.compile(r"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"(?<=\?=)[ \t\r\n]+(?==\?)")


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words in a header value (for SEARCH, never for ENVELOPE).

    White space between two adjacent encoded words is dropped (RFC 2047 §6.2). 8-bit bytes
    carried as surrogate escapes are decoded as UTF-8 (RFC 6532).
    """

    def one(m: re.Match[str]) -> str:
        charset, kind, encoded = m[1], m[2].upper(), m[3]
        raw = encoded.encode("ascii", "replace")
        if kind == "Q":
            data = binascii.a2b_qp(raw.replace(b"_", b" "), header=False)
        else:
            data = decode_transfer(raw, "base64") or b""
        return decode_charset(data, charset)

    text = _ENCODED_WORD.sub(one, _BETWEEN_WORDS.sub("", text))
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
