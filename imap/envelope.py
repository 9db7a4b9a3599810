"""ENVELOPE (RFC 3501 §7.4.2, RFC 9051 §7.5.2) and the address parsing behind it. Pure: no I/O;
nothing here raises on any header text.

Addresses are parsed by RFC 5322 §3.4's grammar with the obsolete forms of §4.4 (comments
anywhere, routes, groups), once, so that ENVELOPE and whatever else matches on an address see
the same mailbox.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mailstack.imap.mime import Entity
from mailstack.imap.values import Value, to_wire

# Dovecot's placeholders for an address without a local part or domain: a NIL host would
# read as RFC 3501's group syntax.
MISSING_MAILBOX = "MISSING_MAILBOX"
MISSING_DOMAIN = "MISSING_DOMAIN"

# -- ENVELOPE -------------------------------------------------------------------------------

# RFC 5322 §3.2.3 specials that structure an address list (others are kept as text).
_SPECIALS = frozenset("<>@,;:.")
_WSP_RUN = re.compile(r"[ \t\r\n]+")
_ATOM_STOP = frozenset('<>@,;:."()[] \t\r\n\\')
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\x80-\U0010ffff]+"  # RFC 5322 §3.2.3, RFC 6532 §3.2
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "atom", "quoted", "comment", "literal" ([domain literal]) or "special"
    text: str
    space_before: bool


def _tokenize(text: str) -> list[_Token]:
    """RFC 5322 §3.2 lexical tokens of a structured field body; tolerant of anything."""
    tokens: list[_Token] = []
    i, n, space = 0, len(text), False
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            space, i = True, i + 1
            continue
        if ch == '"':
            out, i = [], i + 1
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                out.append(text[i])
                i += 1
            tokens.append(_Token("quoted", "".join(out), space))
            i += 1
        elif ch == "(":
            depth, out, i = 1, [], i + 1
            while i < n:
                c = text[i]
                if c == "\\" and i + 1 < n:
                    i += 1
                    c = text[i]
                elif c == "(":
                    depth += 1
                elif c == ")":
                    depth -= 1
                    if depth == 0:
                        break
                out.append(c)
                i += 1
            tokens.append(_Token("comment", "".join(out), space))
            i += 1
        elif ch == "[":
            end = text.find("]", i)
            end = n if end < 0 else end + 1
            tokens.append(_Token("literal", text[i:end], space))
            i = end
        elif ch in _SPECIALS:
            tokens.append(_Token("special", ch, space))
            i += 1
        else:
            start = i
            while i < n and text[i] not in _ATOM_STOP:
                i += 1
            if i == start:  # a stray ")", "]" or "\": keep it as text
                i += 1
            tokens.append(_Token("atom", text[start:i], space))
        space = False
    return tokens


def _phrase(tokens: list[_Token]) -> str | None:
    """A display name: words joined as written, quoting removed, comments dropped."""
    out: list[str] = []
    for t in tokens:
        if t.kind == "comment":
            continue
        if out and t.space_before:
            out.append(" ")
        out.append(t.text)
    return _WSP_RUN.sub(" ", "".join(out)).strip() or None


def _local_part(tokens: list[_Token]) -> str:
    text = "".join(t.text for t in tokens if t.kind != "comment")
    if not text:
        return MISSING_MAILBOX
    if _DOT_ATOM.match(text):
        return text
    # Keep the quoting the address needs to stay usable (`"john doe"@example.com`).
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _addr_spec(tokens: list[_Token]) -> tuple[str, str]:
    """(mailbox, host) of `local-part "@" domain`, with Dovecot's placeholders if missing."""
    at = max((i for i, t in enumerate(tokens) if t.kind == "special" and t.text == "@"), default=-1)
    if at < 0:
        return _local_part(tokens), MISSING_DOMAIN
    host = "".join(t.text for t in tokens[at + 1 :] if t.kind != "comment")
    return _local_part(tokens[:at]), host or MISSING_DOMAIN


def _mailbox(tokens: list[_Token]) -> Value:
    """`name-addr / addr-spec` (RFC 5322 §3.4) -> (name adl mailbox host), or None if empty."""
    if not any(t.kind != "comment" for t in tokens):
        return None
    opening = next((i for i, t in enumerate(tokens) if t.kind == "special" and t.text == "<"), None)
    if opening is None:
        # addr-spec, possibly with the obsolete "(Real Name)" comment as the name.
        name = next((t.text.strip() for t in tokens if t.kind == "comment"), None) or None
        words = [t for t in tokens if t.kind != "comment"]
        at = max(
            (i for i, t in enumerate(words) if t.kind == "special" and t.text == "@"),
            default=len(words),
        )
        start = at - 1
        while start > 0 and not words[start].space_before:
            start -= 1
        if start > 0:
            # "Some Name a@b" without angle brackets: the words before the local part
            # (which holds no white space) are a display name, as clients show it.
            name = name or _phrase(words[:start])
            words = words[start:]
        mailbox, host = _addr_spec(words)
        return (name, None, mailbox, host)
    closing = next(
        (
            i
            for i in range(opening + 1, len(tokens))
            if tokens[i].kind == "special" and tokens[i].text == ">"
        ),
        len(tokens),
    )
    inside = tokens[opening + 1 : closing]
    adl: str | None = None
    colon = next((i for i, t in enumerate(inside) if t.kind == "special" and t.text == ":"), None)
    if colon is not None and inside and inside[0].text == "@":
        # RFC 5322 §4.4 obs-route "@a,@b:" -> RFC 3501 addr-adl "@a,@b"
        adl = "".join(t.text for t in inside[:colon] if t.kind != "comment") or None
        inside = inside[colon + 1 :]
    mailbox, host = _addr_spec(inside)
    return (_phrase(tokens[:opening]), adl, mailbox, host)


def parse_addresses(text: str | None) -> Value:
    """An address-list header value -> RFC 3501 `env-*` list of addresses, None if empty.

    Groups become `(NIL NIL "name" NIL)` ... `(NIL NIL NIL NIL)` (RFC 3501 §7.4.2).
    """
    if text is None:
        return None
    return _parse_addresses(text)


# A folder's messages name the same few addresses again and again (the owner in To, the
# usual senders in From): parsing them took a third of a first header fetch. The result is
# made of tuples and strings only, so one can be shared. About 2 MB when full.
@functools.lru_cache(maxsize=4096)
def _parse_addresses(text: str) -> Value:
    tokens = _tokenize(text)
    out: list[Value] = []
    i, in_group = 0, False
    while i < len(tokens):
        segment: list[_Token] = []
        depth = 0
        while i < len(tokens):
            t = tokens[i]
            if t.kind == "special":
                if t.text == "<":
                    depth += 1
                elif t.text == ">":
                    depth = max(0, depth - 1)
                elif depth == 0 and t.text in ",;:":
                    break
            segment.append(t)
            i += 1
        stop = tokens[i].text if i < len(tokens) else None
        i += 1
        if stop == ":" and not in_group:
            out.append((None, None, _phrase(segment) or "", None))
            in_group = True
            continue
        if (address := _mailbox(segment)) is not None:
            out.append(address)
        if stop == ";" and in_group:
            out.append((None, None, None, None))
            in_group = False
    if in_group:
        out.append((None, None, None, None))
    return tuple(out) or None


def envelope(message: Entity) -> Value:
    """ENVELOPE of a message (RFC 3501 §7.4.2): the first of each field, as on the wire."""
    return to_wire(envelope_of(message))


def _subject(message: Entity) -> str | None:
    subject = message.header_text("Subject")
    # Folding white space collapses to one space, as Dovecot shows subjects (RFC 5322 §3.2.2
    # makes runs of WSP semantically one space).
    return None if subject is None else _WSP_RUN.sub(" ", subject)


def envelope_of(message: Entity) -> Value:
    """ENVELOPE with header text that is not UTF-8 still as str (a message/rfc822 part inside
    BODYSTRUCTURE: the whole tree is converted once)."""
    from_ = parse_addresses(message.header_text("From"))
    # "If the Sender or Reply-To lines are absent in the [RFC-2822] header, or are present
    # but empty, the server sets the corresponding member of the envelope to be the same
    # value as the from member" (RFC 3501 §7.4.2).
    sender = parse_addresses(message.header_text("Sender")) or from_
    reply_to = parse_addresses(message.header_text("Reply-To")) or from_
    return (
        message.header_text("Date"),
        _subject(message),
        from_,
        sender,
        reply_to,
        parse_addresses(message.header_text("To")),
        parse_addresses(message.header_text("Cc")),
        parse_addresses(message.header_text("Bcc")),
        message.header_text("In-Reply-To"),
        message.header_text("Message-ID"),
    )
