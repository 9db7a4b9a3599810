"""Command rules that depend on what the client ENABLEd: IMAP4rev2 (RFC 9051) and
UTF8=ACCEPT (RFC 6855). Pure: the session asks `bad_reason()` before it runs a command and
answers `BAD reason` when it says something.

- IMAP4rev2 has no \\Recent (RFC 9051 §2.3.2, Appendix E): its grammar (§9) dropped the
  RECENT status item and the RECENT, NEW and OLD search keys, so after ENABLE IMAP4rev2 they
  are syntax errors, as in Dovecot 2.4's IMAP4rev2 search grammar. IMAP4rev1 sessions keep them.
- The UTF8 data item of APPEND (RFC 6855 §4) needs ENABLE UTF8=ACCEPT first.
- After ENABLE UTF8=ACCEPT a SEARCH with CHARSET is refused with BAD (RFC 6855 §3: its
  strings are UTF-8 already, so a charset label can only conflict with that), and SORT or
  THREAD with a charset other than UTF-8 too (verified erratum 4029).
"""

from __future__ import annotations

from mailstack.imap import commands as c

RECENT = "\\Recent"


def has_recent_key(key: c.SearchKey) -> bool:
    """Does the search key use \\Recent (RECENT, NEW, OLD, or KEYWORD \\Recent)?"""
    match key:
        case c.SearchFlag(flag=flag):
            return flag == RECENT
        case c.SearchNot(key=inner):
            return has_recent_key(inner)
        case c.SearchOr(left=left, right=right):
            return has_recent_key(left) or has_recent_key(right)
        case c.SearchAnd(keys=keys):
            return any(has_recent_key(k) for k in keys)
    return False


def bad_reason(command: c.Command, *, rev2: bool, utf8_accept: bool) -> str | None:
    """Why `command` is malformed for this session's enabled extensions, or None."""
    if rev2:
        if isinstance(command, c.Status) and "RECENT" in command.items:
            return "IMAP4rev2 has no RECENT status item (RFC 9051 §6.3.11)"
        if isinstance(command, c.List) and "RECENT" in command.status_items:
            return "IMAP4rev2 has no RECENT status item (RFC 9051 §6.3.11)"
        if isinstance(command, c.Search | c.Sort | c.Thread) and has_recent_key(command.key):
            return "IMAP4rev2 has no RECENT, NEW or OLD search key (RFC 9051 §6.4.4)"
    if not utf8_accept and isinstance(command, c.Append):
        for message in command.all_messages():
            if message.utf8 or any(part.utf8 for part in message.catenate):
                return "ENABLE UTF8=ACCEPT before APPEND with UTF8 (RFC 6855 §4)"
    if utf8_accept and isinstance(command, c.Search) and command.charset is not None:
        return "no CHARSET after ENABLE UTF8=ACCEPT: search strings are UTF-8 (RFC 6855 §3)"
    if utf8_accept and isinstance(command, c.Sort | c.Thread) and command.charset != "UTF-8":
        # RFC 6855 erratum 4029: a mandatory charset other than UTF-8 conflicts the same way.
        return "only CHARSET UTF-8 after ENABLE UTF8=ACCEPT (RFC 6855 §3, erratum 4029)"
    return None
