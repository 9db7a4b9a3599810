"""Parses SORT and THREAD (RFC 5256 §4, RFC 5957 §3) into `imap.commands` values. Pure: no I/O.

    sort            = ["UID" SP] "SORT" SP sort-criteria SP search-criteria
    sort-criteria   = "(" sort-criterion *(SP sort-criterion) ")"
    sort-criterion  = ["REVERSE" SP] sort-key
    sort-key        = "ARRIVAL" / "CC" / "DATE" / "FROM" / "SIZE" / "SUBJECT" / "TO"
                      / "DISPLAYFROM" / "DISPLAYTO"                    ; RFC 5957
    thread          = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    search-criteria = charset 1*(SP search-key)

The charset is mandatory here (unlike SEARCH); the session refuses ones it does not know
with NO [BADCHARSET] (§3), so it is parsed as any astring. `imap/parser.py` registers these
and passes its search-key parser in, which keeps the import one-way.
"""

from __future__ import annotations

from collections.abc import Callable

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader
from mailstack.imap.sort import SORT_KEYS
from mailstack.imap.thread import ALGORITHMS

SearchKeyParser = Callable[[Reader, int], c.SearchKey]


def _criteria(r: Reader, search_key: SearchKeyParser) -> tuple[str, c.SearchKey]:
    charset = r.astring("a charset").upper()
    keys = []
    while r.accept(b" "):
        keys.append(search_key(r, 0))
    if not keys:
        raise BadSyntaxError("expected search keys after the charset")
    return charset, keys[0] if len(keys) == 1 else c.SearchAnd(tuple(keys))


def parse_sort(r: Reader, tag: str, uid: bool, search_key: SearchKeyParser) -> c.Sort:
    r.sp()
    r.expect(b"(", "a list of sort criteria")
    criteria: list[c.SortCriterion] = []
    while not r.accept(b")"):
        if criteria:
            r.sp()
        name = r.keyword("a sort key")
        reverse = name == "REVERSE"
        if reverse:
            r.sp()
            name = r.keyword("a sort key")
        if name not in SORT_KEYS:
            raise BadSyntaxError(f"unknown sort key {name}")
        criteria.append(c.SortCriterion(name, reverse))
    if not criteria:
        raise BadSyntaxError("expected at least one sort criterion")
    r.sp()
    charset, key = _criteria(r, search_key)
    return c.Sort(tag, tuple(criteria), charset, key, uid)


def parse_thread(r: Reader, tag: str, uid: bool, search_key: SearchKeyParser) -> c.Thread:
    r.sp()
    algorithm = r.keyword("a threading algorithm")
    if algorithm not in ALGORITHMS:
        raise BadSyntaxError(f"unknown threading algorithm {algorithm}")
    r.sp()
    charset, key = _criteria(r, search_key)
    return c.Thread(tag, algorithm, charset, key, uid)
