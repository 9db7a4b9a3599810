"""FETCH data derived from message bytes: ENVELOPE, BODY/BODYSTRUCTURE, BODY[...], BINARY[...].

RFC 3501 §6.4.5 and §7.4.2, RFC 9051 §6.4.5 and §7.5.2, RFC 3516 (BINARY). `imap/mime.py`
finds the parts; this module turns them into FETCH values. Pure: no I/O; nothing here raises
on any message bytes.

The value tree is `imap/values.py`'s; ENVELOPE and address parsing are `imap/envelope.py`'s.

Example: BODYSTRUCTURE of a two-part message is
`(Bodies((part1, part2)), "mixed", ("boundary", "x"), None, None, None)`, rendered
`((...)(...) "mixed" ("boundary" "x") NIL NIL NIL)`.

INTERNALDATE is `response.date_time(ts)` in the server's zone; search.py's BEFORE/ON/SINCE
use the same zone (RFC 9051 §6.4.4), so ON d finds what INTERNALDATE shows on day d.

Caching: ENVELOPE, BODY and BODYSTRUCTURE depend only on the message bytes, which never change
for a UID. `Structure.of(message)` computes all three and `Structure.to_json()`/`from_json()`
turn them into JSON text and back, so the session or store can cache them after the first
parse and answer those items without reading the message again.

Encoded words (RFC 2047) stay as they are on the wire in ENVELOPE and BODYSTRUCTURE, as
Dovecot does; clients decode them.

Where the RFCs leave room, answers match Dovecot 2.3 (tests/imap/test_fetch.py compares
them item by item): a section that does not exist is the empty string; body-fld-lines
counts line breaks; leaf part N has a part N.1 (itself); RFC 2231 continuations are joined.
Deliberate differences are listed with their reasons in that test (KNOWN_DIFFERENCES) and in
imap/mime.py (malformed MIME).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mailstack.imap.commands import FetchAttr, Section
from mailstack.imap.envelope import envelope, envelope_of
from mailstack.imap.mime import (
    KNOWN_ENCODINGS,
    Entity,
    HeaderField,
    decode_transfer,
    find_part,
    has_global,
    parse_disposition,
    parse_message,
    strip_comments,
    to_crlf,
)
from mailstack.imap.values import Bodies, Value, to_wire


class UnknownCteError(Exception):
    """BINARY of a part whose Content-Transfer-Encoding we cannot undo (RFC 3516 §4.3:
    answer `NO [UNKNOWN-CTE]`)."""

    code = "UNKNOWN-CTE"


# -- BODY / BODYSTRUCTURE -------------------------------------------------------------------


def count_lines(body: bytes) -> int:
    """body-fld-lines: the line breaks in the body, as Dovecot counts them (a part's last
    line has none: the CRLF before the boundary belongs to the boundary, RFC 2046 §5.1.1)."""
    return body.count(b"\n")


def _params(pairs: tuple[tuple[str, str], ...]) -> Value:
    """body-fld-param = "(" string SP string *(SP string SP string) ")" / nil"""
    return tuple(item for pair in pairs for item in pair) or None


def _disposition(part: Entity) -> Value:
    """body-fld-dsp = "(" string SP body-fld-param ")" / nil  (RFC 2183)"""
    dsp = parse_disposition(part.header_text("Content-Disposition"))
    return None if dsp is None else (dsp.maintype, _params(dsp.params))


def _language(part: Entity) -> Value:
    """body-fld-lang = nstring / "(" string *(SP string) ")"  (RFC 3282)"""
    value = part.header_text("Content-Language")
    if value is None:
        return None
    # Always the list form, as Dovecot sends it (the grammar allows a single string too).
    return tuple(t.strip() for t in value.split(",") if t.strip()) or None


def _extension(part: Entity) -> tuple[Value, ...]:
    """body-fld-dsp SP body-fld-lang SP body-fld-loc"""
    return (_disposition(part), _language(part), part.header_text("Content-Location"))


def body_structure(data: bytes, part: Entity, *, extensible: bool = True) -> Value:
    """BODYSTRUCTURE (extensible) or BODY (not) of `part` (RFC 3501 §7.4.2, §9 `body`)."""
    return to_wire(_body(data, part, extensible))


def _body(data: bytes, part: Entity, extensible: bool) -> Value:
    ctype = part.content_type
    if part.children:
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        bodies = Bodies(_body(data, c, extensible) for c in part.children)
        fields: tuple[Value, ...] = (bodies, ctype.subtype)
        if extensible:
            fields += (_params(ctype.params), *_extension(part))
        return fields
    body = data[part.body_start : part.end]
    encoding = part.header_text("Content-Transfer-Encoding")
    # body-fields = body-fld-param SP body-fld-id SP body-fld-desc SP body-fld-enc SP
    #               body-fld-octets
    params = ctype.params
    if ctype.maintype.lower() == "text" and ctype.param("charset") is None:
        params += (("charset", "us-ascii"),)  # RFC 2045 §5.2 default, made explicit as Dovecot does
    fields = (
        ctype.maintype,
        ctype.subtype,
        _params(params),
        part.header_text("Content-ID"),
        part.header_text("Content-Description"),
        (strip_comments(encoding).strip() if encoding else "") or "7bit",
        len(body),
    )
    if part.message is not None:
        # body-type-msg = media-message SP body-fields SP envelope SP body SP body-fld-lines
        fields += (
            envelope_of(part.message),
            _body(data, part.message, extensible),
            count_lines(body),
        )
    elif ctype.maintype.lower() == "text":
        fields += (count_lines(body),)  # body-type-text ... SP body-fld-lines
    if extensible:
        # body-ext-1part = body-fld-md5 [SP body-fld-dsp [SP body-fld-lang [SP body-fld-loc]]]
        fields += (part.header_text("Content-MD5"), *_extension(part))
    return fields


@dataclass(frozen=True, slots=True)
class Structure:
    """The cacheable, bytes-independent FETCH items of one message."""

    envelope: Value
    body: Value
    bodystructure: Value
    size: int

    @classmethod
    def of(cls, message: ParsedMessage) -> Structure:
        return cls(
            envelope=envelope(message.root),
            body=body_structure(message.data, message.root, extensible=False),
            bodystructure=body_structure(message.data, message.root),
            size=len(message.data),
        )

    def to_json(self) -> str:
        return json.dumps(
            [_to_json(self.envelope), _to_json(self.body), _to_json(self.bodystructure), self.size]
        )

    @classmethod
    def from_json(cls, text: str) -> Structure:
        """Inverse of `to_json`. Raises ValueError on text `to_json` did not produce."""
        try:
            env, body, bodystructure, size = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a cached structure: {exc}") from exc
        if not isinstance(size, int):
            raise ValueError("not a cached structure: size")
        return cls(_from_json(env), _from_json(body), _from_json(bodystructure), size)


def _to_json(value: Value) -> object:
    if isinstance(value, Bodies):
        return {"bodies": [_to_json(v) for v in value]}
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, bytes):
        return {"latin1": value.decode("latin-1")}
    return value


def _from_json(value: object) -> Value:
    if isinstance(value, dict) and isinstance(value.get("bodies"), list):
        return Bodies(_from_json(v) for v in value["bodies"])
    if isinstance(value, dict) and isinstance(text := value.get("latin1"), str):
        return text.encode("latin-1")
    if isinstance(value, list):
        return tuple(_from_json(v) for v in value)
    if value is None or isinstance(value, int | str):
        return value
    raise ValueError(f"not a cached structure value: {value!r}")


# -- BODY[section], BINARY[section] ---------------------------------------------------------


def _header_lines(data: bytes, fields: tuple[HeaderField, ...]) -> bytes:
    """Raw fields followed by the blank line (RFC 3501 §6.4.5: the subset of the header,
    which like HEADER ends with the empty line)."""
    out = [
        data[f.start : f.end]
        if data[f.start : f.end].endswith(b"\r\n")
        else data[f.start : f.end] + b"\r\n"
        for f in fields
    ]
    return b"".join(out) + b"\r\n"


def section_bytes(data: bytes, root: Entity, section: Section) -> bytes:
    """The octets BODY[section] names.

    A part that does not exist, and HEADER/TEXT of a part that is not message/rfc822 (RFC
    3501 §6.4.5 allows them only there), give the empty string, as Dovecot answers.
    """
    if section.part:
        part = find_part(root, section.part)
        if part is None:
            return b""
        if section.text is None:
            return data[part.body_start : part.end]
        if section.text == "MIME":
            return data[part.start : part.body_start]
        if part.message is None:
            return b""
        message = part.message
    else:
        message = root
        if section.text is None:
            return data[root.start : root.end]
    match section.text:
        case "HEADER":
            return data[message.start : message.body_start]
        case "TEXT":
            return data[message.body_start : message.end]
        case "HEADER.FIELDS" | "HEADER.FIELDS.NOT":
            names = {n.lower() for n in section.fields}
            keep = section.text == "HEADER.FIELDS"
            return _header_lines(
                data, tuple(f for f in message.fields if (f.name.lower() in names) == keep)
            )
    return b""


def binary_bytes(data: bytes, root: Entity, part_path: tuple[int, ...]) -> bytes:
    """BINARY[part]: the part with its Content-Transfer-Encoding undone (RFC 3516 §4.2).

    BINARY[] is the whole message as is; a part that does not exist is empty. Raises
    UnknownCteError for an encoding other than 7bit/8bit/binary/base64/quoted-printable.
    """
    if not part_path:
        return data
    part = find_part(root, part_path)
    if part is None:
        return b""
    body = data[part.body_start : part.end]
    if part.children or part.message is not None:
        return body  # RFC 2045 §6.4: composite types are never encoded
    encoding = part.transfer_encoding
    if encoding not in KNOWN_ENCODINGS:
        raise UnknownCteError(f"unknown Content-Transfer-Encoding {encoding!r}")
    decoded = decode_transfer(body, encoding)
    return body if decoded is None else decoded


def partial(content: bytes, origin: int, count: int) -> bytes:
    """`<origin.count>` (RFC 9051 §6.4.5): an origin beyond the end gives the empty string."""
    return content[origin : origin + count]


class ParsedMessage:
    """A message in IMAP form (CRLF) and its MIME tree, parsed when first asked for: BODY[]
    and RFC822 of an ASCII message (no downgrade to decide) are the bytes alone, and a
    client syncing bodies fetched them with a full parse each."""

    __slots__ = ("_nest_global", "_root", "data")

    def __init__(self, data: bytes, root: Entity | None = None, *, nest_global: bool = False):
        self.data = data
        self._root = root
        self._nest_global = nest_global

    @property
    def root(self) -> Entity:
        if self._root is None:
            self._root = parse_message(self.data, nest_global=self._nest_global)
        return self._root

    @classmethod
    def parse(cls, raw: bytes, *, utf8: bool = False) -> ParsedMessage:
        """Parse a message as stored (LF or CRLF endings). Never raises. `utf8`: for a client
        that takes UTF-8, whose BODYSTRUCTURE and sections open message/global parts
        (imap/mime.py `parse_message`)."""
        return cls(to_crlf(raw), nest_global=utf8)

    def for_utf8(self) -> ParsedMessage:
        """This message as a UTF-8 client sees it: itself unless it holds message/global."""
        if self._nest_global or not has_global(self.root):
            return self
        return ParsedMessage(self.data, nest_global=True)

    @property
    def size(self) -> int:
        """RFC822.SIZE"""
        return len(self.data)


# Items computed from the message bytes by `fetch_item`; FLAGS, UID and INTERNALDATE come
# from the store's MessageInfo and are the session's.
MESSAGE_ITEMS = frozenset(
    {
        "ENVELOPE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "RFC822.SIZE",
        "BODY",
        "BODYSTRUCTURE",
        "BINARY",
        "BINARY.SIZE",
    }
)
# Items a cached Structure answers without the message bytes.
STRUCTURE_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE"})


def needs_message(attrs: tuple[FetchAttr, ...]) -> bool:
    """Must the message be read (and not just its cached Structure) to answer `attrs`?"""
    return any(
        a.name in MESSAGE_ITEMS
        and not (a.name in STRUCTURE_ITEMS or (a.name == "BODY" and a.section is None))
        for a in attrs
    )


def structure_item(attr: FetchAttr, structure: Structure) -> Value:
    """ENVELOPE, BODY, BODYSTRUCTURE or RFC822.SIZE from a (cached) Structure."""
    match attr.name:
        case "ENVELOPE":
            return structure.envelope
        case "BODYSTRUCTURE":
            return structure.bodystructure
        case "BODY" if attr.section is None:
            return structure.body
        case "RFC822.SIZE":
            return structure.size
    raise ValueError(f"{attr.name} needs the message bytes")


def fetch_item(attr: FetchAttr, message: ParsedMessage) -> Value:
    """The value of one FETCH data item in MESSAGE_ITEMS, partial applied.

    Raises UnknownCteError for BINARY of an undecodable part, ValueError for items that are
    not derived from the message (FLAGS, UID, INTERNALDATE).
    """
    data = message.data
    match attr.name:
        case "ENVELOPE":
            return envelope(message.root)
        case "BODYSTRUCTURE":
            return body_structure(data, message.root)
        case "BODY" if attr.section is None:
            return body_structure(data, message.root, extensible=False)
        case "RFC822.SIZE":
            return message.size
        case "BINARY.SIZE":
            part = attr.section.part if attr.section else ()
            return len(binary_bytes(data, message.root, part))
        case "RFC822":
            content = data
        case "BODY" if attr.section is not None and attr.section == Section():
            content = data  # BODY[]: the whole message, no tree needed
        case "RFC822.HEADER":
            content = data[message.root.start : message.root.body_start]
        case "RFC822.TEXT":
            content = data[message.root.body_start : message.root.end]
        case "BODY":
            content = section_bytes(data, message.root, attr.section or Section())
        case "BINARY":
            part = attr.section.part if attr.section else ()
            content = binary_bytes(data, message.root, part)
        case _:
            raise ValueError(f"{attr.name} is not derived from the message")
    if attr.name != "BINARY":
        # RFC 9051 §4.3: a literal never holds NUL (only BINARY's literal8 may). Dovecot
        # sends 0x80 in its place; the length, and so every offset and size, stays the same.
        content = content.replace(b"\x00", b"\x80")
    if attr.partial is not None:
        content = partial(content, *attr.partial)
    return content
