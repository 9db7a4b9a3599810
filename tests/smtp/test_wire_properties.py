"""Property tests for the SMTP side's hand-written parsers: any bytes give a result, a Reply or a
PathError/AddressError, never another exception (tests/fuzz/fuzz_smtp_*.py run the same with
atheris for longer); plus table tests of the pure pieces."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.smtp.address import Address, AddressError
from mailstack.smtp.arguments import (
    PathError,
    is_address_literal,
    parse_params,
    parse_path,
    strip_keyword,
)
from mailstack.smtp.framing import (
    Command,
    LineEndings,
    check_command_line,
    parse_bdat,
    parse_command,
)
from mailstack.smtp.replies import Reply

PIECES = [
    *(b"MAIL FROM:", b"RCPT TO:", b"<", b">", b"@", b"[", b"]", b"IPv6:", b":", b"\r", b"\n"),
    *(b"\0", b"\xff", b" ", b'"', b"\\", b"a", b"example.com", b"SIZE=1", b"1.2.3.4", b"."),
]
SMTP_BYTES = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)


@given(st.one_of(st.binary(max_size=700), SMTP_BYTES))
@example(b"RCPT TO:<\xff@example.test>\r\n")
@example(b"MAIL FROM:<unterminated@remote.test\r\n")
@example(b'MAIL FROM:<"\r\n')
def test_any_bytes_give_a_command_a_reply_or_a_path_error(data: bytes) -> None:
    for raw in data.split(b"\n"):
        line = check_command_line(raw + b"\n")
        if isinstance(line, Reply):
            assert line.code == 500
            continue
        command = parse_command(line)
        if isinstance(command, Reply):
            continue
        assert isinstance(command, Command) and command.verb.isupper()
        rest = strip_keyword("FROM:", command.arg or "") or strip_keyword("TO:", command.arg or "")
        if not rest:
            continue
        for is_rcpt in (False, True):
            with contextlib.suppress(PathError):
                path = parse_path(rest, is_rcpt=is_rcpt)
                parse_params(path.rest.split())
                if "@" in path.address:
                    with contextlib.suppress(AddressError):
                        Address.parse(path.address)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<a@example.com> SIZE=5", ("a@example.com", "SIZE=5")),
        ("<>", ("", "")),
        ("<Postmaster>", ("postmaster", "")),
        ("a@example.com", ("a@example.com", "")),  # no brackets: taken (Postfix's default)
        ("<a@[192.0.2.1]>", ("a@[192.0.2.1]", "")),
        ("<a@[IPv6:2001:db8::1]>", ("a@[IPv6:2001:db8::1]", "")),
    ],
)
def test_paths_taken(arg: str, expected: tuple[str, str]) -> None:
    path = parse_path(arg, is_rcpt="Postmaster" in arg)
    assert (path.address, path.rest) == expected


@pytest.mark.parametrize(
    "arg",
    [
        "<unterminated@remote.test",
        "<a@example.com",
        "<postmaster>",  # only RCPT may name the postmaster without a domain
        "<nobody>",
        "<a@[300.1.1.1]>",
        "<a@[example.com]>",
        "<a@[1.2.3]>",
        "<a@[IPv6:zz::1]>",
        "<a@[tag:general]>",
        "<\udcff@example.test>",
        "<<>>",
    ],
)
def test_paths_refused(arg: str) -> None:
    with pytest.raises(PathError):
        parse_path(arg, is_rcpt=False)


def test_address_literals() -> None:
    assert is_address_literal("[192.0.2.1]") and is_address_literal("[IPv6:::1]")
    assert not is_address_literal("[300.1.1.1]") and not is_address_literal("[01.2.3.4]")
    assert not is_address_literal("[]") and not is_address_literal("192.0.2.1")


@given(st.text(max_size=30))
@example("10 LAST")
@example("99999999999999999999")
def test_bdat_argument_parses_or_is_none(arg: str) -> None:
    parsed = parse_bdat(arg)
    assert parsed is None or (parsed[0] >= 0 and isinstance(parsed[1], bool))


@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200)))
@example(b"hello\r.\rMAIL FROM:<x@y>\r\n", [3])
@example(b"ab\r\ncd", [3])
def test_line_endings_verdict_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    expected = data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n")
    endings, clean = LineEndings(), True
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for a, b in itertools.pairwise(bounds):
        clean = clean and endings.feed(data[a:b])
    assert (clean and endings.finish()) == expected
