"""imap/response.py: quoting and literals survive the parser; response lines are well formed."""

from __future__ import annotations

import datetime
import os
import re
import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.imap import commands as c
from mailstack.imap import response
from mailstack.imap.fetch import ParsedMessage, Structure
from mailstack.imap.parser import parse_command
from mailstack.imap.response import RenderedStructure

TEXT = st.text(st.characters(codec="utf-8"), max_size=200)


@given(TEXT, TEXT)
@example("", "~")  # an atom starting with "~" was taken for a literal8
def test_astring_round_trips_through_the_parser(user: str, password: str) -> None:
    # Strings carrying NUL cannot be astrings at all; every other value must survive.
    if "\x00" in user + password:
        return
    data = b"t LOGIN " + response.astring(user) + b" " + response.astring(password) + b"\r\n"
    assert parse_command(data) == c.Login("t", user, password)


@given(TEXT)
def test_string_round_trips_as_search_argument(value: str) -> None:
    if "\x00" in value:
        return
    data = b"t SEARCH BODY " + response.string(value) + b"\r\n"
    assert parse_command(data) == c.Search("t", c.SearchText("BODY", value))


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        pytest.param("INBOX", b"INBOX", id="atom"),
        pytest.param("", b'""', id="empty"),
        pytest.param("NIL", b'"NIL"', id="nil-is-quoted"),
        pytest.param("a b", b'"a b"', id="space"),
        pytest.param('a"b\\', b'"a\\"b\\\\"', id="escapes"),
        pytest.param("Entwürfe", b"{9}\r\nEntw\xc3\xbcrfe", id="8bit-literal"),
        pytest.param("a\r\nb", b"{4}\r\na\r\nb", id="crlf-literal"),
    ],
)
def test_astring_forms(value: str, wire: bytes) -> None:
    assert response.astring(value) == wire


def test_nstring_nil() -> None:
    assert response.nstring(None) == b"NIL"
    assert response.nstring(b"\xff") == b"{1}\r\n\xff"


def test_tagged_text_cannot_break_framing() -> None:
    line = response.no("a1", "bad\r\n* 1 EXISTS", code="CANNOT")
    assert line == b"a1 NO [CANNOT] bad  * 1 EXISTS\r\n"
    assert line.count(b"\r\n") == 1


def test_untagged_forms() -> None:
    assert response.exists(3) == b"* 3 EXISTS\r\n"
    assert response.expunge(2) == b"* 2 EXPUNGE\r\n"
    assert response.fetch(1, [b"UID 5", b"FLAGS (\\Seen)"]) == (
        b"* 1 FETCH (UID 5 FLAGS (\\Seen))\r\n"
    )
    assert response.bye("Autologout") == b"* BYE Autologout\r\n"
    assert response.continuation() == b"+ \r\n"
    assert response.continuation("idling") == b"+ idling\r\n"


def test_date_time_is_internaldate_syntax() -> None:
    tz = datetime.timezone(datetime.timedelta(hours=-5, minutes=-30))
    ts = datetime.datetime(2024, 2, 5, 13, 5, 9, tzinfo=datetime.UTC).timestamp()
    assert response.date_time(ts, tz) == b'" 5-Feb-2024 07:35:09 -0530"'
    assert re.fullmatch(
        rb'"[ \d]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', response.date_time(ts)
    )
    # and the parser reads it back (APPEND uses the same syntax)
    cmd = parse_command(b"t APPEND INBOX " + response.date_time(ts, tz) + b" {1+}\r\nx\r\n")
    assert isinstance(cmd, c.Append)
    assert cmd.internal_date is not None
    assert cmd.internal_date.timestamp() == ts


@pytest.mark.parametrize("zone", ["UTC", "America/St_Johns", "Asia/Kathmandu", "Europe/Berlin"])
@given(ts=st.integers(min_value=0, max_value=4_102_444_800))
def test_internaldate_in_the_server_zone_is_the_zone_s_local_time(zone: str, ts: int) -> None:
    # date_time() without a zone formats through the C library (time.localtime); it must say
    # what datetime's own conversion says, DST switches and half-hour zones included.
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        when = datetime.datetime.fromtimestamp(ts, datetime.UTC).astimezone()
        offset = when.utcoffset()
        assert offset is not None
        minutes = int(offset.total_seconds()) // 60
        sign, minutes = ("+" if minutes >= 0 else "-"), abs(minutes)
        expected = (
            f'"{when.day:2d}-{when.strftime("%b")}-{when.year:04d} {when:%H:%M:%S} '
            f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
        ).encode()
        assert response.date_time(ts) == expected
    finally:
        if saved is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = saved
        time.tzset()


def test_rendered_structure_round_trips_and_rejects_other_text() -> None:
    message = (
        b"From: =?utf-8?q?J=C3=B6rg?= <j@example.org>\r\nSubject: caf\xc3\xa9\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello\r\n"
    )
    rendered = RenderedStructure.of(Structure.of(ParsedMessage.parse(message)))
    assert rendered.item("ENVELOPE").startswith(b"(NIL ")
    assert rendered.item("BODYSTRUCTURE").startswith(b'("text" "plain"')
    assert RenderedStructure.from_json(rendered.to_json()) == rendered
    for text in (
        "",
        "5",
        "[]",
        '["r0", "a", "b", "c"]',
        '["r1", "a", "b"]',
        '["r1", "\\u20ac", "b", "c"]',
        Structure.of(ParsedMessage.parse(message)).to_json(),
    ):
        with pytest.raises(ValueError, match="cached structure"):
            RenderedStructure.from_json(text)
