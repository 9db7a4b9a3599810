"""The value tree of FETCH data, rendered by `imap/response.py` (the only place that quotes or
makes literals). Pure: no I/O.

    None          NIL
    int           number
    str           string (quoted or literal: response.string decides)
    bytes         string too: header text that is not valid UTF-8, and the content of
                  BODY[...]/RFC822*/BINARY[...] (a literal; literal8 `~{n}` for BINARY with NUL)
    tuple         parenthesised list, elements separated by SP
    Bodies        body-type-mpart's `1*body`: the child bodies back to back with no SP and no
                  parentheses of its own (RFC 3501 §9); check for it before `tuple`
"""

from __future__ import annotations

from typing import TypeAlias

Value: TypeAlias = "int | str | bytes | tuple[Value, ...] | None"


class Bodies(tuple[Value, ...]):
    """The child bodies of a multipart, rendered back to back without separators."""

    __slots__ = ()


def to_wire(value: Value) -> Value:
    """Header text that was not UTF-8 (surrogate escapes, see Entity.header_text) -> bytes."""
    if isinstance(value, str):
        if value.isascii():  # the common case, and never a surrogate escape
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "surrogateescape")
        return value
    if isinstance(value, Bodies):
        return Bodies([to_wire(v) for v in value])
    if isinstance(value, tuple):
        return tuple([to_wire(v) for v in value])
    return value
