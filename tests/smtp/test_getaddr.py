"""The fast path for plain <local@domain> paths (smtp.arguments.split_path) answers exactly as
the full parser does."""

from __future__ import annotations

import asyncio
from email._header_value_parser import get_addr_spec, get_angle_addr

from hypothesis import given
from hypothesis import strategies as st
from mailstack.smtp.arguments import PLAIN_PATH, split_path

from tests.support.smtpserver import SmtpHarness

ATOM = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
PIECES = [
    *ATOM,
    ".",
    "@",
    "<",
    ">",
    " ",
    "\t",
    "(",
    ")",
    '"',
    "[",
    "]",
    ":",
    ",",
    "\\",
    "é",
    "SIZE=1",
]


def _reference(arg: str) -> tuple[str | None, str | None]:
    """aiosmtpd's _getaddr without a local-part limit; where the stdlib parser crashes (an
    IndexError on "<", ...) the path counts as unparsable, as in ours (aiosmtpd's would be an
    internal error)."""
    if not arg:
        return "", ""
    parse = get_angle_addr if arg.lstrip().startswith("<") else get_addr_spec
    try:
        address, rest = parse(arg)
        addr = address.addr_spec
    except Exception:
        return None, None
    if any("missing trailing '>'" in str(d) for d in address.all_defects):
        return None, None  # "<a@b" without its ">": refused (issue: it got 250)
    return addr, rest


def _ours(arg: str) -> tuple[str | None, str | None]:
    return split_path(arg)


@given(st.lists(st.sampled_from(PIECES), max_size=30).map("".join))
def test_every_input_parses_as_the_reference_does(arg: str) -> None:
    assert _ours(arg) == _reference(arg)


@given(
    st.from_regex(r"\A[a-z0-9+.-]{1,20}@[a-z0-9-]{1,10}(\.[a-z0-9-]{1,10}){0,3}\Z"),
    st.sampled_from(["", " SIZE=100", "  BODY=8BITMIME SIZE=5", "\tSMTPUTF8", " (c) X=1"]),
)
def test_plain_paths_agree_with_the_reference(addr: str, params: str) -> None:
    arg = f"<{addr}>{params}"
    assert _ours(arg) == _reference(arg)


def test_paths_that_crash_the_stdlib_parser_are_syntax_errors() -> None:
    for arg in ("<", "a@[ ", "a@[", '"'):
        assert _ours(arg) == (None, None)


def test_the_fast_path_takes_plain_paths() -> None:
    m = PLAIN_PATH.match("<bench@sender.example> SIZE=10240")
    assert m is not None and (m[1], m[2]) == ("bench@sender.example", "SIZE=10240")
    assert PLAIN_PATH.match('<"quoted local"@example.com>') is None
    assert PLAIN_PATH.match("<@relay:a@example.com>") is None


async def test_over_the_wire_a_crashing_path_gets_501_and_the_session_goes_on(
    mx: SmtpHarness,
) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(b'MAIL FROM:<\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:"\r\nRCPT TO:a@[ \r\n')
        return c.replies(4)

    got = await asyncio.to_thread(run)
    assert [r[:9] for r in got] == ["501 5.1.7", "250 2.1.0", "501 5.1.3", "501 5.1.3"], got
