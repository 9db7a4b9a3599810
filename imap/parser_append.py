"""The APPEND command's grammar: MULTIAPPEND (RFC 3502), CATENATE (RFC 4469) and the UTF8
data item of UTF8=ACCEPT (RFC 6855 §4). imap/parser.py dispatches APPEND here. Pure: no I/O.

    append         = "APPEND" SP mailbox 1*append-message              ; RFC 3502 §6
    append-message = SP [flag-list SP] [date-time SP] append-data
    append-data    = literal / literal8                                 ; RFC 3516 §4.1
    append-data    =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"     ; RFC 4469 §5
    cat-part       = "TEXT" SP literal / "URL" SP astring
    append-data    =/ utf8-literal                                      ; RFC 6855 §4
    cat-part       =/ utf8-literal
    utf8-literal   = "UTF8" SP "(" literal8 ")"

Whether UTF8 is allowed at all (only after ENABLE UTF8=ACCEPT) is the session's rule
(imap/enabled.py); URLs are resolved by the session (imap/catenate.py).
"""

from __future__ import annotations

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader

# RFC 4469 §5 sets no limit; a message joined from more than 1000 pieces is not a real
# client's (Trojita, the one client that uses CATENATE, sends a handful).
MAX_CAT_PARTS = 1000


def parse_append(r: Reader, tag: str) -> c.Command:
    r.sp()
    name = r.mailbox()
    messages = [_append_message(r)]
    while not r.at_end():
        messages.append(_append_message(r))
    first = messages[0]
    # `messages` only when an extension is used: plain APPENDs keep their simple shape.
    extended = tuple(messages) if any(m.utf8 or m.catenate for m in messages) else ()
    return c.Append(
        tag, name, first.message, first.flags, first.internal_date, tuple(messages[1:]), extended
    )


def _append_message(r: Reader) -> c.AppendMessage:
    r.sp()
    flags: tuple[str, ...] = ()
    when = None
    if r.peek() == b"(":
        flags = r.flag_list()
        r.sp()
    if r.peek() == b'"':
        when = r.date_time()
        r.sp()
    if r.accept(b"CATENATE "):
        r.expect(b"(", "( after CATENATE")
        parts = [_cat_part(r)]
        while not r.accept(b")"):
            r.sp()
            parts.append(_cat_part(r))
            if len(parts) > MAX_CAT_PARTS:
                raise BadSyntaxError("too many CATENATE parts")
        return c.AppendMessage(b"", flags, when, catenate=tuple(parts))
    if r.at(b"UTF8 "):
        return c.AppendMessage(_utf8_literal(r), flags, when, utf8=True)
    return c.AppendMessage(r.literal_bytes(), flags, when)


def _cat_part(r: Reader) -> c.CatenatePart:
    if r.accept(b"TEXT "):
        if r.peek() != b"{":  # text-literal is a literal, not a literal8 (RFC 4469 §5)
            raise BadSyntaxError("expected a literal after TEXT")
        return c.CatenatePart(text=r.literal_bytes())
    if r.accept(b"URL "):
        return c.CatenatePart(url=r.astring("an IMAP URL"))
    if r.at(b"UTF8 "):
        return c.CatenatePart(text=_utf8_literal(r), utf8=True)
    raise BadSyntaxError("expected TEXT, URL or UTF8 in CATENATE")


def _utf8_literal(r: Reader) -> bytes:
    r.expect(b"UTF8 (", "UTF8 (")
    if r.peek(2) != b"~{":  # RFC 6855 §4: the data is a literal8
        raise BadSyntaxError("expected a literal8 (~{n}) after UTF8 (")
    data = r.literal_bytes()
    r.expect(b")", ") closing UTF8 (")
    return data
