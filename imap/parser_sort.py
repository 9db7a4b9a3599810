"""Parses SORT and THREAD (RFC 5256 §4, RFC 5957 §3) into `imap.commands` values. Pure: no I/O.

    sort            = ["UID" SP] "SORT" [search-return-opts] SP sort-criteria
                      SP search-criteria                              ; RFC 5267 §5
    search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    search-return-opt  = "MIN" / "MAX" / "ALL" / "COUNT" / "SAVE"      ; RFC 4731, 5182
                         / "PARTIAL" SP partial-range                 ; RFC 5267 §4.4
                         / "UPDATE" / "CONTEXT"                       ; RFC 5267 §4.2, §4.3
    partial-range   = nz-number ":" nz-number
    sort-criteria   = "(" sort-criterion *(SP sort-criterion) ")"
    sort-criterion  = ["REVERSE" SP] sort-key
    sort-key        = "ARRIVAL" / "CC" / "DATE" / "FROM" / "SIZE" / "SUBJECT" / "TO"
                      / "DISPLAYFROM" / "DISPLAYTO"                    ; RFC 5957
    thread          = ["UID" SP] "THREAD" SP thread-alg SP search-criteria
    search-criteria = charset 1*(SP search-key)

The charset is mandatory here (unlike SEARCH); the session refuses ones it does not know
with NO [BADCHARSET] (§3), so it is parsed as any astring. `imap/parser.py` registers these
and passes its search-key parser in, which keeps the import one-way; SEARCH's RETURN options
are parsed here too (`parse_returns`), as SORT's are the same ones (SAVE aside).
"""

from __future__ import annotations

from collections.abc import Callable

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader
from mailstack.imap.sort import SORT_KEYS
from mailstack.imap.thread import ALGORITHMS

SearchKeyParser = Callable[[Reader, int], c.SearchKey]
# RFC 5267 §3: ESORT takes SEARCH's return options but SAVE (the saved set has no order), and
# UPDATE/CONTEXT with CONTEXT=SORT (§4, imap/session_context.py).
SORT_RETURNS = frozenset({"MIN", "MAX", "ALL", "COUNT", "PARTIAL", "UPDATE", "CONTEXT"})


def parse_cancel_update(r: Reader, tag: str) -> c.CancelUpdate:
    # RFC 5267 §5: command-select =/ "CANCELUPDATE" 1*(SP quoted)
    tags = []
    while r.accept(b" "):
        if r.peek() != b'"':
            raise BadSyntaxError("expected a quoted tag")
        tags.append(r.quoted())
    if not tags:
        raise BadSyntaxError("expected the tag of a search")
    return c.CancelUpdate(tag, tuple(tags))


def parse_returns(
    r: Reader, allowed: frozenset[str]
) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """The options after "RETURN " (upper-cased, in order) and PARTIAL's range (low, high)."""
    r.expect(b"(", "a list of return options")
    out: list[str] = []
    partial = None
    while not r.accept(b")"):
        if out:
            r.sp()
        opt = r.keyword("a return option")
        if opt not in allowed or opt in out:
            raise BadSyntaxError(f"unsupported or repeated return option {opt}")
        if {opt, *out} >= {"ALL", "PARTIAL"}:  # RFC 5267 §4.4: one of them at most
            raise BadSyntaxError("ALL and PARTIAL exclude each other")
        out.append(opt)
        if opt == "PARTIAL":
            r.sp()
            first = r.nz_number("a partial range")
            r.expect(b":", "low:high")
            last = r.nz_number("a partial range")
            partial = (min(first, last), max(first, last))
    return tuple(out), partial


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
    returns: tuple[str, ...] = ()
    partial = None
    is_esort = r.accept(b"RETURN ")
    if is_esort:
        returns, partial = parse_returns(r, SORT_RETURNS)
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
    return c.Sort(tag, tuple(criteria), charset, key, uid, returns, is_esort, partial)


def parse_thread(r: Reader, tag: str, uid: bool, search_key: SearchKeyParser) -> c.Thread:
    r.sp()
    algorithm = r.keyword("a threading algorithm")
    if algorithm not in ALGORITHMS:
        raise BadSyntaxError(f"unknown threading algorithm {algorithm}")
    r.sp()
    charset, key = _criteria(r, search_key)
    return c.Thread(tag, algorithm, charset, key, uid)
