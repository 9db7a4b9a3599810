"""MAIL FROM and RCPT TO arguments: the path and the ESMTP parameters. Pure: no I/O.

RFC 5321 §4.1.2:

    Reverse-path   = Path / "<>"
    Forward-path   = Path
    Path           = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox        = Local-part "@" ( Domain / address-literal )
    Mail-parameters = esmtp-param *(SP esmtp-param)
    esmtp-param    = esmtp-keyword ["=" esmtp-value]

and RFC 5321 §4.1.1.3: `RCPT TO:<Postmaster>` (no domain) must be accepted. Address literals
(RFC 5321 §4.1.3) must be an IPv4 address or `IPv6:` and an IPv6 address: `[300.1.1.1]` and
`[example.com]` are refused. RFC 6531 §3.3: a non-ASCII address is UTF-8; bytes that are not
(they reach us as surrogate escapes) are refused here, at the door, so nothing further in
(the account lookups) ever sees them.

Deviation from RFC 5321 §4.1.2 (as Postfix's default `strict_rfc821_envelopes = no`): a path
without its angle brackets is taken as the address. A "<" without its ">" is not.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from email._header_value_parser import get_addr_spec, get_angle_addr

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
# Nearly every path is a plain dot-atom <local@domain>: answered without the stdlib tokenizer
# (tests/smtp/test_getaddr.py checks both agree).
PLAIN_PATH = re.compile(
    rf"<({_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    rf"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)>[ \t]*(.*)\Z",
    re.DOTALL,
)
_UNTERMINATED = "missing trailing '>'"
POSTMASTER = "postmaster"


class PathError(ValueError):
    """A path we refuse; `str(exc)` says why (for the reply text)."""


class NullRecipientError(PathError):
    """ "<>" as a recipient: well-formed, but no mailbox (RFC 5321 §4.5.5 is for senders)."""


@dataclass(frozen=True, slots=True)
class Path:
    address: str  # "" for the null reverse-path "<>"; "postmaster" for RCPT TO:<Postmaster>
    rest: str  # what follows the path: the ESMTP parameters


def strip_keyword(keyword: str, arg: str) -> str | None:
    """'FROM:<a@b> X' after 'FROM:' -> '<a@b> X'; None when `arg` does not start with it."""
    if arg[: len(keyword)].upper() == keyword:
        return arg[len(keyword) :].strip()
    return None


def parse_params(words: list[str]) -> dict[str, str | bool] | None:
    """RFC 5321 §4.1.2 esmtp-params -> {KEYWORD: value or True}; None on a malformed one."""
    result: dict[str, str | bool] = {}
    for word in words:
        keyword, eq, value = word.partition("=")
        if not keyword.isalnum() or (eq and not value):
            return None
        result[keyword] = value if eq else True
    return result


def split_path(arg: str, *, local_part_limit: int = 0) -> tuple[str | None, str | None]:
    """The address and the rest, as aiosmtpd's `_getaddr` answers: ("", "") for nothing,
    (None, None) for what does not parse. No other checks (see `parse_path`)."""
    if not arg:
        return "", ""
    if (m := PLAIN_PATH.match(arg)) is not None and not m[2].startswith("("):
        return m[1], m[2]
    parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
    try:
        token, rest = parse(arg)
        addr: str = token.addr_spec
    except Exception:
        # On some garbage ("<", "a@[ ", '"') the stdlib parser fails with IndexError,
        # AttributeError or UnboundLocalError: a syntax error all the same, not a crash.
        return None, None
    if any(_UNTERMINATED in str(d) for d in token.all_defects):
        return None, None
    if local_part_limit and len(addr.rpartition("@")[0]) > local_part_limit:
        return None, None
    return addr, rest


def parse_path(arg: str, *, is_rcpt: bool, local_part_limit: int = 0) -> Path:
    """The path at the start of MAIL's or RCPT's argument (after "FROM:"/"TO:").

    Raises PathError for: nothing there, no closing ">", "<>" as a recipient, no domain
    (except RCPT's Postmaster), invalid UTF-8, a malformed address literal.
    """
    stripped = arg.lstrip()
    if stripped.startswith("<") and ">" not in stripped:
        raise PathError("missing '>' after the address")
    if stripped[:2] == "<>":
        if is_rcpt:
            raise NullRecipientError("a null recipient")
        return Path("", stripped[2:].strip())
    address, rest = split_path(arg, local_part_limit=local_part_limit)
    if not address or address == "<>" or rest is None:
        raise PathError("malformed address")
    if not is_utf8(address):
        raise PathError("address is not valid UTF-8")  # RFC 6531 §3.3
    local, at, domain = address.rpartition("@")
    if not at:
        # RFC 5321 §4.1.1.3: "<Postmaster>" without a domain names our postmaster.
        if is_rcpt and address.lower() == POSTMASTER:
            return Path(POSTMASTER, rest)
        raise PathError("address has no domain")
    if not local or not domain:
        raise PathError("malformed address")
    if domain.startswith("[") and not is_address_literal(domain):
        raise PathError("malformed address literal")
    return Path(address, rest)


def is_utf8(text: str) -> bool:
    """False when `text` holds surrogate escapes: bytes that were not UTF-8 on the wire."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_address_literal(domain: str) -> bool:
    """RFC 5321 §4.1.3: "[" (IPv4-address-literal / "IPv6:" IPv6-addr) "]".

    General-address-literal (a registered tag) is refused: no tag is registered but IPv6.
    """
    if len(domain) < 3 or domain[0] != "[" or domain[-1] != "]":
        return False
    inner = domain[1:-1]
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            # ip_address accepts exactly four decimal octets 0-255 (no leading zeros).
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True
