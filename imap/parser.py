"""Parses one whole IMAP command (as `imap.framing` cut it) into a `imap.commands` value.

Grammar: RFC 3501 §9, with RFC 9051 §9 where it differs (astring search arguments, UTF-8 in
quoted strings), and the extensions we advertise: RFC 4315 UID EXPUNGE, 6851 MOVE, 2971 ID,
5161 ENABLE, 3691 UNSELECT, 4959 SASL-IR, 5258/5819/6154 LIST options, 4731 ESEARCH,
5182 SEARCHRES, 3516 literal8 in APPEND, 7888 LITERAL+, 9208 QUOTA, 5267 RETURN (PARTIAL,
UPDATE, CONTEXT) and CANCELUPDATE (imap/parser_sort.py), 5465 NOTIFY (imap/parser_notify.py);
APPEND with 3502 MULTIAPPEND, 4469 CATENATE and 6855 UTF8 is imap/parser_append.py's; SEARCH and
its keys (4731 ESEARCH, 7162 MODSEQ) are imap/parser_search.py's.

Any input yields a `Command` or raises `ParseError` carrying the tag ("*" when even the tag
is unreadable) so the session answers `tag BAD reason` and the connection stays usable.
Nothing else escapes (tests/imap/test_parser.py checks this with hypothesis). Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from mailstack.imap import commands as c
from mailstack.imap.parser_admin import ADMIN_COMMANDS
from mailstack.imap.parser_append import parse_append
from mailstack.imap.parser_condstore import modseq as _modseq
from mailstack.imap.parser_condstore import qresync as _qresync
from mailstack.imap.parser_notify import parse_notify
from mailstack.imap.parser_reader import (
    BadSyntaxError,
    ParseError,
    Reader,
    canonical_flag,
    normalize_mailbox,
    one_mailbox,
)
from mailstack.imap.parser_search import MAX_DEPTH, parse_search, search_key
from mailstack.imap.parser_sort import (
    parse_cancel_update,
    parse_sort,
    parse_thread,
)

from mailstack.base.flags import FlagMode

__all__ = ["MAX_DEPTH", "ParseError", "canonical_flag", "normalize_mailbox", "parse_command"]

_TAG = re.compile(rb'[^(){ \x00-\x1f\x7f%*"\\+\x80-\xff]+')  # tag = 1*<any ASTRING-CHAR except "+">
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_BASE64 = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",
        "SIZE",
        "APPENDLIMIT",
        "HIGHESTMODSEQ",
    }
)
_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE"})
# -- commands --------------------------------------------------------------------------------


def parse_command(data: bytes) -> c.Command:
    """One whole command (final CRLF included) -> Command. Raises ParseError."""
    r = Reader(data)
    tag = "*"
    try:
        tag = r.match(_TAG, "a tag").decode("ascii")
        r.sp()
        name = r.keyword("a command name")
        if name == "UID":
            r.sp()
            name = r.keyword("a command after UID")
            parse = _UID_COMMANDS.get(name)
            if parse is None:
                raise BadSyntaxError(f"UID {name} is not a command")
            command = parse(r, tag, True)
        else:
            simple = _SIMPLE.get(name)
            if simple is not None:
                command = simple(tag)
            elif (parse_one := _COMMANDS.get(name)) is not None:
                command = parse_one(r, tag)
            elif (parse_uid := _UID_COMMANDS.get(name)) is not None:
                command = parse_uid(r, tag, False)
            else:
                raise BadSyntaxError(f"unknown command {name}")
        r.end()
        return command
    except BadSyntaxError as exc:
        raise ParseError(tag, str(exc)) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps us far from the limit
        raise ParseError(tag, "command nested too deeply") from None


_SIMPLE: dict[str, Callable[[str], c.Command]] = {
    "CAPABILITY": c.Capability,
    "NOOP": c.Noop,
    "LOGOUT": c.Logout,
    "STARTTLS": c.StartTls,
    "NAMESPACE": c.Namespace,
    "IDLE": c.Idle,
    "CHECK": c.Check,
    "CLOSE": c.Close,
    "UNSELECT": c.Unselect,
}


def _id(r: Reader, tag: str) -> c.Command:
    # id = "ID" SP id-params-list; id-params-list = "(" *(string SP nstring) ")" / nil
    r.sp()
    if r.accept(b"NIL"):
        return c.Id(tag, None)
    r.expect(b"(", "( or NIL")
    params: list[tuple[str, str | None]] = []
    while not r.accept(b")"):
        if params:
            r.sp()
        key = r.string()
        r.sp()
        params.append((key, r.nstring()))
        if len(params) > 30:  # RFC 2971 §3.3: at most 30 field-value pairs
            raise BadSyntaxError("too many ID fields")
    return c.Id(tag, tuple(params))


def _compress(r: Reader, tag: str) -> c.Command:
    # RFC 4978 §5: command-auth =/ compress; compress = "COMPRESS" SP algorithm
    r.sp()
    return c.Compress(tag, r.keyword("a compression algorithm"))


def _login(r: Reader, tag: str) -> c.Command:
    r.sp()
    user = r.astring("a user name")
    r.sp()
    return c.Login(tag, user, r.astring("a password"))


def _authenticate(r: Reader, tag: str) -> c.Command:
    r.sp()
    mech = r.keyword("a SASL mechanism")
    initial: str | None = None
    if r.accept(b" "):  # RFC 4959: initial-response = base64 / "="
        initial = r.match(_BASE64, "a base64 initial response").decode("ascii") or None
        if initial is None:
            raise BadSyntaxError("expected a base64 initial response")
    return c.Authenticate(tag, mech, initial)


def _enable(r: Reader, tag: str) -> c.Command:
    caps = []
    r.sp()
    caps.append(r.keyword("a capability"))
    while r.accept(b" "):
        caps.append(r.keyword("a capability"))
    return c.Enable(tag, tuple(caps))


def _select(readonly: bool) -> Callable[[Reader, str], c.Command]:
    def parse(r: Reader, tag: str) -> c.Command:
        r.sp()
        name = r.mailbox()
        condstore, qresync = False, None
        if r.accept(b" ("):
            # RFC 4466 §2.1 select-params = SP "(" select-param *(SP select-param) ")"
            # RFC 7162 §7: select-param =/ "CONDSTORE" / "QRESYNC" SP "(" uidvalidity SP
            #   mod-sequence-value [SP known-uids] [SP seq-match-data] ")"
            while True:
                param = r.keyword("a select parameter")
                if param == "CONDSTORE":
                    condstore = True
                elif param == "QRESYNC" and qresync is None:
                    r.sp()
                    qresync = _qresync(r)
                else:
                    raise BadSyntaxError(f"unknown select parameter {param}")
                if r.accept(b")"):
                    break
                r.sp()
        return c.Select(tag, name, readonly, condstore, qresync)

    return parse


def _create(r: Reader, tag: str) -> c.Command:
    r.sp()
    name = r.mailbox()
    uses: tuple[str, ...] = ()
    if r.accept(b" "):
        # RFC 6154 §3: create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"
        r.expect(b"(", "(USE (...))")
        r.expect(b"USE", "USE")
        r.sp()
        uses = r.flag_list()
        r.expect(b")")
    return c.Create(tag, name, uses)


def _rename(r: Reader, tag: str) -> c.Command:
    r.sp()
    old = r.mailbox()
    r.sp()
    return c.Rename(tag, old, r.mailbox())


def _options(r: Reader, allowed: frozenset[str], what: str) -> list[str]:
    r.expect(b"(", f"a list of {what}")
    out: list[str] = []
    while not r.accept(b")"):
        if out:
            r.sp()
        opt = r.keyword(what)
        if opt not in allowed:
            raise BadSyntaxError(f"unsupported {what} {opt}")
        out.append(opt)
    return out


def _list(r: Reader, tag: str) -> c.Command:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    r.sp()
    selection: list[str] = []
    if r.peek() == b"(":
        selection = _options(r, _LIST_SELECT, "LIST selection option")
        r.sp()
    reference = r.astring("a reference name")
    r.sp()
    if r.peek() == b"(":
        patterns = r.paren_list(r.list_mailbox, "mailbox patterns")
    else:
        patterns = (r.list_mailbox(),)
    returns: list[str] = []
    status_items: tuple[str, ...] = ()
    if r.accept(b" "):
        r.expect(b"RETURN", "RETURN")
        r.sp()
        r.expect(b"(", "( after RETURN")
        while not r.accept(b")"):
            if returns:
                r.sp()
            opt = r.keyword("a LIST return option")
            if opt == "STATUS":  # RFC 5819 LIST-STATUS
                r.sp()
                status_items = _status_items(r)
            elif opt not in _LIST_RETURN:
                raise BadSyntaxError(f"unsupported LIST return option {opt}")
            returns.append(opt)
    if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
        # RFC 5258 §3.1: RECURSIVEMATCH alone (or with only REMOTE) is an error.
        raise BadSyntaxError("RECURSIVEMATCH needs another selection option")
    return c.List(tag, reference, patterns, tuple(selection), tuple(returns), status_items)


def _lsub(r: Reader, tag: str) -> c.Command:
    r.sp()
    reference = r.astring("a reference name")
    r.sp()
    return c.Lsub(tag, reference, r.list_mailbox())


def _status_items(r: Reader) -> tuple[str, ...]:
    items = r.paren_list(lambda: r.keyword("a status item"), "status items")
    for item in items:
        if item not in _STATUS_ITEMS:
            raise BadSyntaxError(f"unknown status item {item}")
    return items


def _status(r: Reader, tag: str) -> c.Command:
    r.sp()
    name = r.mailbox()
    r.sp()
    return c.Status(tag, name, _status_items(r))


def _expunge(r: Reader, tag: str, uid: bool) -> c.Command:
    if not uid:
        return c.Expunge(tag)
    r.sp()
    return c.Expunge(tag, r.seqset())


def _copy_move(cls: type[c.Copy] | type[c.Move]) -> Callable[[Reader, str, bool], c.Command]:
    def parse(r: Reader, tag: str, uid: bool) -> c.Command:
        r.sp()
        seqset = r.seqset()
        r.sp()
        return cls(tag, seqset, r.mailbox(), uid)

    return parse


def _store(r: Reader, tag: str, uid: bool) -> c.Command:
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    r.sp()
    seqset = r.seqset()
    r.sp()
    unchanged_since = None
    if r.accept(b"("):
        # RFC 7162 §7: store-modifier =/ "UNCHANGEDSINCE" SP mod-sequence-valzer
        r.expect(b"UNCHANGEDSINCE", "UNCHANGEDSINCE")
        r.sp()
        unchanged_since = _modseq(r, zero=True)
        r.expect(b")", ") closing the STORE modifiers")
        r.sp()
    mode = (
        FlagMode.ADD if r.accept(b"+") else FlagMode.REMOVE if r.accept(b"-") else FlagMode.REPLACE
    )
    r.expect(b"FLAGS", "FLAGS, +FLAGS or -FLAGS")
    silent = r.accept(b".SILENT")
    r.sp()
    if r.peek() == b"(":
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.accept(b" "):
            items.append(r.flag())
        flags = tuple(items)
    return c.Store(tag, seqset, mode, flags, silent, uid, unchanged_since)


# -- FETCH -----------------------------------------------------------------------------------


def _fetch(r: Reader, tag: str, uid: bool) -> c.Command:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    #         "(" fetch-att *(SP fetch-att) ")")
    r.sp()
    seqset = r.seqset()
    r.sp()
    attrs: list[c.FetchAttr] = []
    if r.accept(b"("):
        attrs.append(_fetch_att(r))
        while not r.accept(b")"):
            r.sp()
            attrs.append(_fetch_att(r))
    else:
        for macro, expanded in c.FETCH_MACROS.items():
            if r.at(macro.encode()) and not _FETCH_NAME.match(r.data, r.pos + len(macro)):
                r.pos += len(macro)
                attrs.extend(expanded)
                break
        else:
            attrs.append(_fetch_att(r))
    changed_since, vanished = None, False
    if r.accept(b" ("):
        # RFC 7162 §7: fetch-modifier =/ "CHANGEDSINCE" SP mod-sequence-valzer / "VANISHED"
        while True:
            modifier = r.keyword("a FETCH modifier")
            if modifier == "CHANGEDSINCE" and changed_since is None:
                r.sp()
                changed_since = _modseq(r, zero=True)
            elif modifier == "VANISHED" and not vanished:
                vanished = True
            else:
                raise BadSyntaxError(f"unknown FETCH modifier {modifier}")
            if r.accept(b")"):
                break
            r.sp()
        if vanished and (not uid or changed_since is None):
            # RFC 7162 §3.2.6: only UID FETCH, and only together with CHANGEDSINCE.
            raise BadSyntaxError("VANISHED needs UID FETCH and CHANGEDSINCE")
    return c.Fetch(tag, seqset, tuple(attrs), uid, changed_since, vanished)


def _fetch_att(r: Reader) -> c.FetchAttr:
    name = r.match(_FETCH_NAME, "a FETCH item").decode("ascii").upper()
    peek = False
    if name in ("BODY.PEEK", "BINARY.PEEK"):
        name, peek = name.removesuffix(".PEEK"), True
    if name not in c.FETCH_NAMES:
        raise BadSyntaxError(f"unknown FETCH item {name}")
    if name in ("BODY", "BINARY", "BINARY.SIZE") and r.accept(b"["):
        section = _section(r, binary=name != "BODY")
        partial = None
        if name != "BINARY.SIZE" and r.accept(b"<"):
            # partial = "<" number64 "." nz-number64 ">"
            offset = r.number("a partial offset")
            r.expect(b".", "<offset.count>")
            count = r.nz_number("a partial length")
            r.expect(b">")
            partial = (offset, count)
        return c.FetchAttr(name, section, partial, peek)
    if peek or name in ("BINARY", "BINARY.SIZE"):
        raise BadSyntaxError(f"{name} needs a section")
    return c.FetchAttr(name)


def _section(r: Reader, *, binary: bool) -> c.Section:
    # section-spec = section-msgtext / (section-part ["." section-text])
    part: list[int] = []
    text: str | None = None
    fields: tuple[str, ...] = ()
    if r.accept(b"]"):
        return c.Section()
    while r.peek().isdigit():
        part.append(r.nz_number("a part number"))
        if not r.accept(b"."):
            break
    if not binary and (r.peek().isalpha()):
        word = r.match(_FETCH_NAME, "a section text").decode("ascii").upper()
        if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            r.sp()
            fields = tuple(
                f.upper()
                for f in r.paren_list(
                    lambda: r.astring("a header field name"), "header field names"
                )
            )
        elif word not in ("HEADER", "TEXT", "MIME") or (word == "MIME" and not part):
            raise BadSyntaxError(f"bad section {word}")
        text = word
    elif r.data[r.pos - 1 : r.pos] == b".":
        raise BadSyntaxError("expected a section text after the part number")
    r.expect(b"]", "] closing the section")
    return c.Section(tuple(part), text, fields)


def _sort(r: Reader, tag: str, uid: bool) -> c.Command:
    return parse_sort(r, tag, uid, search_key)  # RFC 5256 (imap/parser_sort.py)


def _thread(r: Reader, tag: str, uid: bool) -> c.Command:
    return parse_thread(r, tag, uid, search_key)


def _notify(r: Reader, tag: str) -> c.Command:
    return parse_notify(r, tag, _fetch_att)  # RFC 5465 (imap/parser_notify.py)


_COMMANDS: dict[str, Callable[[Reader, str], c.Command]] = {
    "ID": _id,
    "LOGIN": _login,
    "AUTHENTICATE": _authenticate,
    "ENABLE": _enable,
    "SELECT": _select(False),
    "EXAMINE": _select(True),
    "CREATE": _create,
    "DELETE": one_mailbox(c.Delete),
    "SUBSCRIBE": one_mailbox(c.Subscribe),
    "UNSUBSCRIBE": one_mailbox(c.Unsubscribe),
    "RENAME": _rename,
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": parse_append,  # imap/parser_append.py: MULTIAPPEND, CATENATE, UTF8
    "COMPRESS": _compress,
    "NOTIFY": _notify,
    "CANCELUPDATE": parse_cancel_update,
    **ADMIN_COMMANDS,
}
_UID_COMMANDS: dict[str, Callable[[Reader, str, bool], c.Command]] = {
    "FETCH": _fetch,
    "SEARCH": parse_search,
    "STORE": _store,
    "COPY": _copy_move(c.Copy),
    "MOVE": _copy_move(c.Move),
    "EXPUNGE": _expunge,
    "SORT": _sort,
    "THREAD": _thread,
}
