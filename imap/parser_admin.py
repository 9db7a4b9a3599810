"""Parsers of the account-administration commands: QUOTA (RFC 9208), ACL (RFC 4314) and
METADATA (RFC 5464). Kept apart from `imap.parser` so that module stays about the core grammar;
`ADMIN_COMMANDS` is merged into its dispatch table. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable

from mailstack.imap import commands as c
from mailstack.imap.parser_reader import BadSyntaxError, Reader, one_mailbox


def _getquota(r: Reader, tag: str) -> c.Command:
    r.sp()
    return c.GetQuota(tag, r.astring("a quota root"))


def _getquotaroot(r: Reader, tag: str) -> c.Command:
    r.sp()
    return c.GetQuotaRoot(tag, r.mailbox())


def _setquota(r: Reader, tag: str) -> c.Command:
    # setquota = "SETQUOTA" SP quota-root-name SP setquota-list
    # setquota-list = "(" [setquota-resource *(SP setquota-resource)] ")"
    r.sp()
    root = r.astring("a quota root")
    r.sp()
    r.expect(b"(", "a list of quota limits")
    limits: list[tuple[str, int]] = []
    while not r.accept(b")"):
        if limits:
            r.sp()
        name = r.keyword("a quota resource")
        r.sp()
        limits.append((name, r.number("a quota limit")))
    return c.SetQuota(tag, root, tuple(limits))


def _acl_identifier(r: Reader) -> str:
    # RFC 4314 §4: identifier = astring (an account name, "anyone", "authenticated")
    r.sp()
    return r.astring("an ACL identifier")


def _listrights(r: Reader, tag: str) -> c.Command:
    r.sp()
    mailbox = r.mailbox()
    return c.ListRights(tag, mailbox, _acl_identifier(r))


def _setacl(r: Reader, tag: str) -> c.Command:
    # setacl = "SETACL" SP mailbox SP identifier SP mod-rights; mod-rights = astring
    r.sp()
    mailbox = r.mailbox()
    identifier = _acl_identifier(r)
    r.sp()
    return c.SetAcl(tag, mailbox, identifier, r.astring("rights"))


def _deleteacl(r: Reader, tag: str) -> c.Command:
    r.sp()
    mailbox = r.mailbox()
    return c.DeleteAcl(tag, mailbox, _acl_identifier(r))


def _metadata_entry(r: Reader) -> str:
    # RFC 5464 §3.2: "/private/..." or "/shared/...", slash-separated, case-insensitive; no
    # "*" or "%", no empty component, no trailing "/", printable ASCII only.
    entry = r.astring("a metadata entry").lower()
    top, _, rest = entry[1:].partition("/")
    if (
        not entry.startswith("/")
        or top not in ("private", "shared")
        or not rest
        or "//" in entry
        or entry.endswith("/")
        or any(ch in "*%" or not " " < ch < "\x7f" for ch in entry)
    ):
        raise BadSyntaxError(f"{entry!r} is not a metadata entry (/private/... or /shared/...)")
    return entry


def _metadata_value(r: Reader) -> bytes | None:
    # value = nstring / literal8 (binary allowed in literal8 only)
    if r.peek() == b'"':
        return r.quoted().encode("utf-8", "surrogateescape")
    if r.peek() == b"{" or r.peek(2) == b"~{":
        binary = r.peek() == b"~"
        raw = r.literal_bytes()
        if b"\x00" in raw and not binary:
            raise BadSyntaxError("NUL in a literal (use literal8: ~{n})")
        return raw
    if r.nstring() is None:
        return None
    raise BadSyntaxError("expected a metadata value")  # pragma: no cover - nstring raised


def _getmetadata(r: Reader, tag: str) -> c.Command:
    r.sp()
    maxsize: int | None = None
    depth: int | None = 0
    if r.accept(b"("):
        while True:
            option = r.keyword("a GETMETADATA option")
            r.sp()
            if option == "MAXSIZE":
                maxsize = r.number("a size")
            elif option == "DEPTH":
                value = r.atom("a depth").lower()
                if value not in ("0", "1", "infinity"):
                    raise BadSyntaxError("DEPTH is 0, 1 or infinity")
                depth = None if value == "infinity" else int(value)
            else:
                raise BadSyntaxError(f"unknown GETMETADATA option {option}")
            if r.accept(b")"):
                break
            r.sp()
        r.sp()
    mailbox = r.mailbox()
    r.sp()
    if r.accept(b"("):
        entries = [_metadata_entry(r)]
        while not r.accept(b")"):
            r.sp()
            entries.append(_metadata_entry(r))
    else:
        entries = [_metadata_entry(r)]
    return c.GetMetadata(tag, mailbox, tuple(entries), maxsize, depth)


def _setmetadata(r: Reader, tag: str) -> c.Command:
    r.sp()
    mailbox = r.mailbox()
    r.sp()
    r.expect(b"(", "( and entry-value pairs")
    values: list[tuple[str, bytes | None]] = []
    while True:
        entry = _metadata_entry(r)
        r.sp()
        values.append((entry, _metadata_value(r)))
        if r.accept(b")"):
            break
        r.sp()
    return c.SetMetadata(tag, mailbox, tuple(values))


ADMIN_COMMANDS: dict[str, Callable[[Reader, str], c.Command]] = {
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _getquotaroot,
    "SETQUOTA": _setquota,
    "GETACL": one_mailbox(c.GetAcl),
    "MYRIGHTS": one_mailbox(c.MyRights),
    "LISTRIGHTS": _listrights,
    "SETACL": _setacl,
    "DELETEACL": _deleteacl,
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
}
