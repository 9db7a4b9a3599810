"""MxSMTP's fast path for plain <local@domain> paths answers exactly as the full parser does."""

from __future__ import annotations

import asyncio
from email._header_value_parser import get_addr_spec, get_angle_addr

from hypothesis import given
from hypothesis import strategies as st
from mailstack.smtp.server import _PLAIN_PATH, MxSMTP

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
        return address.addr_spec, rest
    except Exception:
        return None, None


def _ours(arg: str) -> tuple[str | None, str | None]:
    return MxSMTP._getaddr(_Stub(), arg)  # type: ignore[arg-type]


class _Stub:
    local_part_limit = 0


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
    m = _PLAIN_PATH.match("<bench@sender.example> SIZE=10240")
    assert m is not None and (m[1], m[2]) == ("bench@sender.example", "SIZE=10240")
    assert _PLAIN_PATH.match('<"quoted local"@example.com>') is None
    assert _PLAIN_PATH.match("<@relay:a@example.com>") is None


async def test_over_the_wire_a_crashing_path_gets_553_and_the_session_goes_on(
    mx: SmtpHarness,
) -> None:
    def run() -> list[str]:
        c = mx.raw()
        c.send(b'MAIL FROM:<\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:"\r\nRCPT TO:a@[ \r\n')
        return c.replies(4)

    got = await asyncio.to_thread(run)
    assert [r[:9] for r in got] == ["553 5.1.3", "250 2.1.0", "553 5.1.3", "553 5.1.3"], got
