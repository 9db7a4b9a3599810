"""Parses SEARCH (RFC 3501 §6.4.4, RFC 9051 §6.4.4) and its search keys into `imap.commands`
values. Pure: no I/O.

    search          = "SEARCH" [search-return-opts] [SP "CHARSET" SP charset] 1*(SP search-key)
    search-key      = "ALL" / "ANSWERED" / ... / "(" search-key *(SP search-key) ")"
                      / "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer   ; RFC 7162 §7

`search_key` is also what SORT and THREAD (imap/parser_sort.py) parse their criteria with;
imap/parser.py hands it to them, which keeps the imports one-way. RETURN options: RFC 4731 §3,
PARTIAL/UPDATE/CONTEXT RFC 5267 (parsed in imap/parser_sort.py).
"""

from __future__ import annotations

from mailstack.imap import commands as c
from mailstack.imap.parser_condstore import modseq as _modseq
from mailstack.imap.parser_reader import BadSyntaxError, Reader
from mailstack.imap.parser_sort import parse_returns

# Nesting of parenthesised search keys / NOT / OR. RFC 9051 sets no limit; 32 levels is far
# beyond any real client (Thunderbird's deepest is ~4) and keeps recursion bounded.
MAX_DEPTH = 32

_ESEARCH_RETURN = frozenset(
    {"MIN", "MAX", "ALL", "COUNT", "SAVE", "PARTIAL", "UPDATE", "CONTEXT"}  # RFC 5267 the last 3
)
_HEADER_KEYS = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True),
}
_KEYS_WITH_ARGUMENTS = frozenset(
    {
        "BCC",
        "CC",
        "FROM",
        "SUBJECT",
        "TO",
        "BODY",
        "TEXT",
        "KEYWORD",
        "UNKEYWORD",
        "BEFORE",
        "ON",
        "SINCE",
        "SENTBEFORE",
        "SENTON",
        "SENTSINCE",
        "LARGER",
        "SMALLER",
        "HEADER",
        "UID",
        "NOT",
        "OR",
        "MODSEQ",
    }
)
_DATE_KEYS = {
    "BEFORE": ("BEFORE", False),
    "ON": ("ON", False),
    "SINCE": ("SINCE", False),
    "SENTBEFORE": ("BEFORE", True),
    "SENTON": ("ON", True),
    "SENTSINCE": ("SINCE", True),
}


def parse_search(r: Reader, tag: str, uid: bool) -> c.Command:
    # search = "SEARCH" [search-return-opts] [SP "CHARSET" SP charset] 1*(SP search-key)
    r.sp()
    returns: tuple[str, ...] = ()
    is_esearch = False
    partial = None
    if r.accept(b"RETURN "):  # RFC 4731 §3; PARTIAL: RFC 5267 §4.4 (imap/parser_sort.py)
        is_esearch = True
        returns, partial = parse_returns(r, _ESEARCH_RETURN)
        r.sp()
    charset = None
    if r.accept(b"CHARSET "):
        charset = r.astring("a charset").upper()
        r.sp()
    keys = [search_key(r, 0)]
    while r.accept(b" "):
        keys.append(search_key(r, 0))
    key = keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))
    return c.Search(tag, key, uid, charset, returns, is_esearch, partial)


def search_key(r: Reader, depth: int) -> c.SearchKey:
    if depth > MAX_DEPTH:
        raise BadSyntaxError("search keys nested too deeply")
    if r.accept(b"("):
        keys = [search_key(r, depth + 1)]
        while not r.accept(b")"):
            r.sp()
            keys.append(search_key(r, depth + 1))
        return keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))
    if r.peek() and r.peek() in b"0123456789*$":
        return c.SearchSeq(r.seqset())
    name = r.keyword("a search key")
    if name == "ALL":
        return c.SearchAll()
    if name in _FLAG_KEYS:
        flag, is_set = _FLAG_KEYS[name]
        return c.SearchFlag(flag, is_set)
    if name == "NEW":
        return c.SearchAnd((c.SearchFlag("\\Recent"), c.SearchFlag("\\Seen", False)))
    if name == "OLD":
        return c.SearchFlag("\\Recent", False)
    if name not in _KEYS_WITH_ARGUMENTS:
        raise BadSyntaxError(f"unknown search key {name}")
    r.sp()
    if name in _HEADER_KEYS:
        field = _HEADER_KEYS[name]
        return c.SearchHeader(field, r.astring("a search string"), field != "Subject")
    if name in ("BODY", "TEXT"):
        return c.SearchText(name, r.astring("a search string"))
    if name in ("KEYWORD", "UNKEYWORD"):
        return c.SearchFlag(r.flag(), name == "KEYWORD")
    if name in _DATE_KEYS:
        op, sent = _DATE_KEYS[name]
        return c.SearchDate(op, r.date(), sent)
    if name in ("LARGER", "SMALLER"):
        return c.SearchSize(name, r.number("a size"))
    if name == "HEADER":
        field = r.astring("a header field name")
        r.sp()
        return c.SearchHeader(field, r.astring("a search string"))
    if name == "UID":
        return c.SearchSeq(r.seqset(), uid=True)
    if name == "MODSEQ":
        # RFC 7162 §7: "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer, where
        # search-modseq-ext = SP entry-name SP entry-type-req
        if r.peek() == b'"':
            entry = r.quoted()
            if not entry.lower().startswith("/flags/"):
                raise BadSyntaxError('a MODSEQ entry name is "/flags/<flag>"')
            r.sp()
            if r.keyword("an entry type") not in ("PRIV", "SHARED", "ALL"):
                raise BadSyntaxError("a MODSEQ entry type is priv, shared or all")
            r.sp()
        return c.SearchModseq(_modseq(r, zero=True))
    if name == "NOT":
        return c.SearchNot(search_key(r, depth + 1))
    if name == "OR":
        left = search_key(r, depth + 1)
        r.sp()
        return c.SearchOr(left, search_key(r, depth + 1))
    raise BadSyntaxError(f"unknown search key {name}")
