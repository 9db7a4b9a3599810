"""FETCH data from message bytes (imap/fetch.py, imap/mime.py).

The reference is Python's `email` package parsing the same bytes (part tree, content types,
decoded payloads, addresses), and imapclient's FETCH response parser reading our values once
rendered with `imap.response` quoting: so structure, sizes and syntax are all checked against
independent implementations. Hypothesis checks totality (any bytes) and partial slicing.
"""

from __future__ import annotations

import contextlib
import email
import email.message
import email.policy
import email.utils
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from imapclient.response_parser import parse_fetch_response
from imapclient.response_types import BodyData
from mailstack.imap import mime, response
from mailstack.imap.commands import Fetch, FetchAttr, Section
from mailstack.imap.downgrade import downgrade
from mailstack.imap.envelope import MISSING_DOMAIN, parse_addresses
from mailstack.imap.fetch import (
    ParsedMessage,
    Structure,
    UnknownCteError,
    binary_bytes,
    fetch_item,
    needs_message,
    partial,
    section_bytes,
    structure_item,
)
from mailstack.imap.mime import MAX_DEPTH, Entity, decode_transfer, find_part, to_crlf
from mailstack.imap.values import Bodies, Value

# -- corpus -----------------------------------------------------------------------------------

SIMPLE = b"""\
Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)
From: Fred Foobar <foobar@Blurdybloop.example>
Subject: afternoon meeting
To: mooch@owatagu.siam.edu.example
Message-Id: <B27397-0100000@Blurdybloop.example>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

Hello Joe, do you think we can meet at 3:30 tomorrow?
"""

MIXED = b"""\
From: "Doe, John" <john@example.com>
To: Mary Smith <mary@x.test>, bob@y.test
Cc: undisclosed-recipients:;
Subject: report
Date: Tue, 1 Oct 2024 10:00:00 +0200
Content-Type: multipart/mixed; boundary="==outer=="

This is the preamble.
--==outer==
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 au lait =
soft break
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: base64

PGI+Y2Fmw6k8L2I+Cg==
--inner--

--==outer==
Content-Type: application/pdf; name="r.pdf"
Content-Disposition: attachment; filename="r.pdf"
Content-Transfer-Encoding: base64
Content-ID: <pdf@x>
Content-Description: the report
Content-Language: en, de
Content-Location: http://x.test/r.pdf

JVBERi0xLjQKJcfs
j6IKMSAwIG9iago=
--==outer==--
epilogue
"""

RFC822 = b"""\
From: a@example.com
To: b@example.com
Subject: Fwd: inner
Content-Type: multipart/mixed; boundary=b1

--b1
Content-Type: text/plain

see attached
--b1
Content-Type: message/rfc822

From: Inner Sender <inner@example.org>
Sender: sec@example.org
Reply-To: replies@example.org
Subject: the inner one
In-Reply-To: <parent@example.org>
Message-ID: <inner@example.org>
Content-Type: multipart/alternative; boundary=b2

--b2
Content-Type: text/plain

inner text
line two
--b2
Content-Type: text/html

<p>inner</p>
--b2--
--b1--
"""

NON_ASCII = (
    "From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>\n"
    'To: "Zoë" <zoe@example.de>\n'
    "Subject: =?iso-8859-1?q?Gr=FC=DFe?= und Küsse\n"
    "Content-Type: text/plain; charset=utf-8\n"
    "Content-Transfer-Encoding: 8bit\n"
    "\n"
    "Grüße aus Köln\n"
).encode() + b"Latin-1 byte: \xe9\n"

DIGEST = b"""\
From: list@example.com
Content-Type: multipart/digest; boundary=d

--d

From: one@example.com
Subject: first

body one
--d

From: two@example.com
Subject: second

body two
--d--
"""

ADDRESSES = (
    b'From: "Last, First" <first.last@example.com>\n'
    b"Sender: =?utf-8?q?S=C3=A9cr=C3=A9taire?= <sec@example.com>\n"
    b'Reply-To: list: one@example.com, "two words"@example.com;, other@example.net\n'
    b"To: a@example.com (Comment Name), B <b@example.com>,\n"
    b"  C <c@example.com>\n"
    b"Cc: <bare@example.com>\n"
    b"Bcc: secret@example.com\n"
    b"Subject: a folded\n"
    b" subject line\n"
    b"In-Reply-To: <x@y>\n"
    b"Message-ID: <z@y>\n"
    b"Date: 1 Jan 2020 00:00:00 -0000\n"
    b"\n"
    b"body\n"
)

PARAMS = b"""\
From: p@example.com
Subject: parameters
MIME-Version: 1.0
Content-Type: multipart/related; boundary="rel"; type="multipart/alternative"

--rel
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset="iso-8859-1"; format=flowed
Content-Transfer-Encoding: quoted-printable
Content-ID: <text@x>
Content-Language: fr
Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==

Voil=E0

--alt
Content-Type: text/html; charset=utf-8
Content-Disposition: inline

<p>Voil\xc3\xa0</p>
--alt--

--rel
Content-Type: image/png; name*=utf-8''%E2%82%AC.png
Content-Disposition: inline; filename*0="long"; filename*1="name.png"
Content-Transfer-Encoding: base64
Content-ID: <img@x>

iVBORw0KGgo=
--rel--
"""

FORWARD_SINGLE = b"""\
From: f@example.com
Subject: forward of a single-part message
Content-Type: multipart/mixed; boundary=m

--m
Content-Type: text/plain

see below
--m
Content-Type: message/rfc822
Content-Disposition: attachment

From: Orig <orig@example.com>
To: list@example.com
Subject: original
Date: Thu, 2 Jan 2020 10:00:00 +0100
Content-Type: text/plain; charset=us-ascii

original text
two lines
--m--
"""

EIGHT_BIT_HEADERS = (
    'From: Zoë Doe <zoe@example.com>\nSubject: Grüße\nTo: "Jürgen" <j@example.com>\n\ntext\n'
).encode() + b"X-Latin1: caf\xe9\n"

CORPUS = {
    "simple": SIMPLE,
    "mixed": MIXED,
    "rfc822": RFC822,
    "non_ascii": NON_ASCII,
    "digest": DIGEST,
    "addresses": ADDRESSES,
    "params": PARAMS,
    "forward_single": FORWARD_SINGLE,
    "eight_bit_headers": EIGHT_BIT_HEADERS,
    "nul": b"Subject: nul\nContent-Type: text/plain\n\na\x00b\n",
}


# -- helpers ----------------------------------------------------------------------------------


def render(value: Value) -> bytes:
    """The value as it goes on the wire: imap/response.py renders fetch.py's tree."""
    return response.value(value)


def imaplib_shape(line: bytes) -> list[bytes | tuple[bytes, bytes]]:
    """Split a response with literals into imaplib's list shape that imapclient parses
    (a literal8 `~{n}` as a literal: imapclient predates RFC 3516)."""
    line = line.replace(b"~{", b"{")
    out: list[bytes | tuple[bytes, bytes]] = []
    pos = 0
    while (m := re.compile(rb"\{(\d+)\}\r\n").search(line, pos)) is not None:
        size = int(m[1])
        out.append((line[pos : m.start() + len(m[0]) - 2], line[m.end() : m.end() + size]))
        pos = m.end() + size
    out.append(line[pos:])
    return out


def parse_with_imapclient(name: str, value: Value) -> object:
    line = b"1 (" + name.encode() + b" " + render(value) + b")"
    parsed = parse_fetch_response(imaplib_shape(line), uid_is_key=False)
    return parsed[1][name.encode()]


def walk(entity: Entity) -> Iterator[Entity]:
    """Pre-order like email.message.Message.walk (which descends into message/rfc822)."""
    yield entity
    for child in entity.children:
        yield from walk(child)
    if entity.message is not None:
        yield from walk(entity.message)


def reference(data: bytes) -> email.message.Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def type_of(entity: Entity) -> str:
    return f"{entity.content_type.maintype}/{entity.content_type.subtype}".lower()


# -- the MIME tree against the email package --------------------------------------------------


@pytest.mark.parametrize("raw", CORPUS.values(), ids=CORPUS.keys())
def test_part_tree_matches_email_package(raw: bytes) -> None:
    check_part_tree(raw)


def check_part_tree(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    ours = list(walk(msg.root))
    theirs = list(reference(msg.data).walk())
    assert [type_of(e) for e in ours] == [p.get_content_type() for p in theirs]
    for entity, part in zip(ours, theirs, strict=True):
        if entity.children or entity.message is not None:
            continue
        body = msg.data[entity.body_start : entity.end]
        payload = part.get_payload(decode=False)
        assert isinstance(payload, str)
        if payload.isascii():  # else compat32 has already decoded the 8-bit charset
            assert body == payload.encode("ascii")
        assert decode_transfer(body, entity.transfer_encoding) == part.get_payload(decode=True)


@pytest.mark.parametrize("raw", CORPUS.values(), ids=CORPUS.keys())
def test_lf_and_crlf_storage_give_the_same_answers(raw: bytes) -> None:
    lf, crlf = ParsedMessage.parse(raw), ParsedMessage.parse(raw.replace(b"\n", b"\r\n"))
    assert lf.data == crlf.data == to_crlf(raw)
    assert Structure.of(lf) == Structure.of(crlf)
    assert lf.size == len(raw) + raw.count(b"\n")  # RFC822.SIZE counts CRLF


@pytest.mark.parametrize("raw", CORPUS.values(), ids=CORPUS.keys())
def test_bodystructure_parses_in_imapclient_and_agrees_with_email(raw: bytes) -> None:
    check_bodystructure(raw)


def check_bodystructure(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)

    def check(body: Any, part: Any, entity: Entity) -> None:
        body = BodyData.create(body)  # imapclient leaves bodies inside message/rfc822 raw
        assert body.is_multipart == (part.get_content_maintype() == "multipart")
        if part.get_content_maintype() == "multipart":
            children, subtype = body[0], body[1]
            assert subtype.decode().lower() == part.get_content_subtype()
            subparts = part.get_payload()
            assert isinstance(subparts, list)
            assert len(children) == len(subparts) == len(entity.children)
            for b, p, e in zip(children, subparts, entity.children, strict=True):
                check(b, p, e)
            return
        assert body[0].decode().lower() == part.get_content_maintype()
        assert body[1].decode().lower() == part.get_content_subtype()
        assert body[6] == entity.end - entity.body_start
        if part.get_content_maintype() == "text":
            text = msg.data[entity.body_start : entity.end]
            assert body[7] == text.count(b"\n")  # line breaks, as Dovecot counts
        if part.get_content_type() == "message/rfc822":
            inner = part.get_payload()
            assert isinstance(inner, list)
            assert entity.message is not None
            check(body[8], inner[0], entity.message)

    for name in ("BODY", "BODYSTRUCTURE"):
        value = fetch_item(FetchAttr(name), msg)
        check(parse_with_imapclient(name, value), reference(msg.data), msg.root)


def addresses(value: Value) -> list[tuple[Any, str]]:
    assert isinstance(value, tuple)
    out: list[tuple[Any, str]] = []
    for addr in value:
        assert isinstance(addr, tuple)
        name, _, mailbox, host = addr
        if host is None:
            continue  # group markers
        out.append((name or "", f"{mailbox!s}@{host!s}"))
    return out


@pytest.mark.parametrize(
    "raw", [SIMPLE, MIXED, RFC822, NON_ASCII], ids=["simple", "mixed", "rfc822", "non_ascii"]
)
def test_envelope_matches_email_package_and_imapclient(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    ref = reference(msg.data)
    env = fetch_item(FetchAttr("ENVELOPE"), msg)
    assert isinstance(env, tuple)
    date, subject, from_, sender, reply_to, to = env[:6]
    assert date == ref.get("Date")
    # compat32 keeps 8-bit header bytes as surrogate escapes; on the wire they are UTF-8.
    raw_subject = next(v for k, v in ref.raw_items() if k.lower() == "subject")
    wire_subject = raw_subject.encode("ascii", "surrogateescape").decode()
    assert subject == wire_subject  # encoded words as on the wire
    for value, field in ((from_, "From"), (to, "To")):
        assert addresses(value) == [
            (n.encode("ascii", "surrogateescape").decode(), a)
            for n, a in email.utils.getaddresses(
                [v for k, v in ref.raw_items() if k.lower() == field.lower()]
            )
        ]
    assert sender == reply_to == from_  # RFC 3501 §7.4.2 defaults
    parsed: Any = parse_with_imapclient("ENVELOPE", env)
    assert parsed.subject == wire_subject.encode()
    assert [(a.mailbox + b"@" + a.host).decode() for a in parsed.from_] == [
        a for _, a in email.utils.getaddresses(ref.get_all("From", []))
    ]


def test_envelope_of_message_rfc822_part_and_groups() -> None:
    msg = ParsedMessage.parse(RFC822)
    part = find_part(msg.root, (2,))
    assert part is not None
    body = fetch_item(FetchAttr("BODYSTRUCTURE"), msg)
    assert isinstance(body, tuple)
    inner: Any = body[0][1]  # type: ignore[index]
    assert inner[:7] == ("message", "rfc822", None, None, None, "7bit", part.end - part.body_start)
    env = inner[7]
    assert env[1] == "the inner one"
    assert env[2] == (("Inner Sender", None, "inner", "example.org"),)
    assert env[3] == ((None, None, "sec", "example.org"),)
    assert env[4] == ((None, None, "replies", "example.org"),)
    assert env[8:] == ("<parent@example.org>", "<inner@example.org>")
    assert inner[9] == (
        RFC822.split(b"Content-Type: message/rfc822\n\n")[1].split(b"\n--b1--")[0].count(b"\n")
    )
    mixed: Any = fetch_item(FetchAttr("ENVELOPE"), ParsedMessage.parse(MIXED))
    assert mixed[6] == ((None, None, "undisclosed-recipients", None), (None, None, None, None))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '"Doe, John" <john@x.test>', (("Doe, John", None, "john", "x.test"),), id="quoted-name"
        ),
        pytest.param("<@r1,@r2:m@x.test>", ((None, "@r1,@r2", "m", "x.test"),), id="route"),
        pytest.param('"a b"@x.test', ((None, None, '"a b"', "x.test"),), id="quoted-local"),
        pytest.param(
            "m@x.test (Real Name)", (("Real Name", None, "m", "x.test"),), id="comment-name"
        ),
        pytest.param(
            "team: a@x.test, b@y.test;",
            (
                (None, None, "team", None),
                (None, None, "a", "x.test"),
                (None, None, "b", "y.test"),
                (None, None, None, None),
            ),
            id="group",
        ),
        pytest.param(
            "John Q. Public <jqp@x.test>",
            (("John Q. Public", None, "jqp", "x.test"),),
            id="obs-phrase",
        ),
        pytest.param(
            "=?utf-8?q?J=C3=B6rg?= <j@x.test>",
            (("=?utf-8?q?J=C3=B6rg?=", None, "j", "x.test"),),
            id="encoded-word-kept",
        ),
        pytest.param("nobody", ((None, None, "nobody", MISSING_DOMAIN),), id="no-domain"),
        pytest.param(
            "multi word name a@b.test",
            (("multi word name", None, "a", "b.test"),),
            id="name-without-brackets",
        ),
        pytest.param(
            "group: ; other@x.test",
            (
                (None, None, "group", None),
                (None, None, None, None),
                (None, None, "other", "x.test"),
            ),
            id="address-after-empty-group",
        ),
        pytest.param(
            "a@b.test, , c@d.test",
            ((None, None, "a", "b.test"), (None, None, "c", "d.test")),
            id="empty-member",
        ),
        pytest.param(
            '"A  \t B" <a@b.test>', (("A B", None, "a", "b.test"),), id="name-white-space"
        ),
        pytest.param("", None, id="empty"),
        pytest.param(" , ,", None, id="only-commas"),
    ],
)
def test_address_lists(text: str, expected: Value) -> None:
    assert parse_addresses(text) == expected


def test_eight_bit_headers_become_bytes_and_survive_the_cache() -> None:
    msg = ParsedMessage.parse(b"Subject: caf\xe9\nFrom: Z\xf6e <z@x.test>\n\nbody\n")
    structure = Structure.of(msg)
    env = structure.envelope
    assert isinstance(env, tuple)
    assert env[1] == b"caf\xe9"
    assert env[2] == ((b"Z\xf6e", None, "z", "x.test"),)
    assert Structure.from_json(structure.to_json()) == structure
    assert b"{4}\r\ncaf\xe9" in render(env)  # 8-bit goes out as a literal


def test_bodystructure_fields_of_an_attachment() -> None:
    body = fetch_item(FetchAttr("BODYSTRUCTURE"), ParsedMessage.parse(MIXED))
    assert isinstance(body, tuple)
    parts, subtype, params = body[0], body[1], body[2]
    assert isinstance(parts, Bodies)
    assert (subtype, params) == ("mixed", ("boundary", "==outer=="))
    pdf = parts[1]
    assert pdf == (
        "application",
        "pdf",
        ("name", "r.pdf"),
        "<pdf@x>",
        "the report",
        "base64",
        len(b"JVBERi0xLjQKJcfs\r\nj6IKMSAwIG9iago="),
        None,
        ("attachment", ("filename", "r.pdf")),
        ("en", "de"),
        "http://x.test/r.pdf",
    )
    alternative = parts[0]
    assert isinstance(alternative, tuple)
    assert alternative[1:3] == ("alternative", ("boundary", "inner"))
    plain = fetch_item(FetchAttr("BODY"), ParsedMessage.parse(SIMPLE))
    assert plain == ("TEXT", "PLAIN", ("CHARSET", "US-ASCII"), None, None, "7bit", 55, 1)


def test_nul_only_in_binary() -> None:
    msg = ParsedMessage.parse(b"Subject: n\n\na\x00b\n")
    assert fetch_item(FetchAttr("BODY", Section(text="TEXT")), msg) == b"a\x80b\r\n"
    assert fetch_item(FetchAttr("RFC822"), msg) == msg.data.replace(b"\x00", b"\x80")
    assert fetch_item(FetchAttr("BINARY", Section((1,))), msg) == b"a\x00b\r\n"
    assert render(fetch_item(FetchAttr("BODY", Section(text="TEXT")), msg)).startswith(b"{5}")
    assert render(fetch_item(FetchAttr("BINARY", Section((1,))), msg)).startswith(b"~{5}")


def test_message_global_is_a_leaf_and_encoding_comments_go() -> None:
    # IMAP4rev1 clients only expect an envelope after MESSAGE/RFC822 (Dovecot 2.3 agrees).
    msg = ParsedMessage.parse(
        b"Content-Type: message/global\n"
        b"Content-Transfer-Encoding: 8bit (utf-8)\n\nSubject: x\n\nb\n"
    )
    assert fetch_item(FetchAttr("BODY"), msg) == (
        "message",
        "global",
        None,
        None,
        None,
        "8bit",
        len(b"Subject: x\r\n\r\nb\r\n"),
    )


def test_structure_cache_round_trip_and_answers_without_bytes() -> None:
    for raw in CORPUS.values():
        msg = ParsedMessage.parse(raw)
        cached = Structure.from_json(Structure.of(msg).to_json())
        for name in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE"):
            assert structure_item(FetchAttr(name), cached) == fetch_item(FetchAttr(name), msg)
    assert not needs_message((FetchAttr("ENVELOPE"), FetchAttr("BODY"), FetchAttr("FLAGS")))
    assert needs_message((FetchAttr("BODY", Section()),))
    with pytest.raises(ValueError, match="not a cached structure"):
        Structure.from_json('[1, 2, 3, {"x": 1}]')


# -- sections ---------------------------------------------------------------------------------


def body(msg: ParsedMessage, spec: str, partial_: tuple[int, int] | None = None) -> Value:
    """BODY[spec] parsed by the real parser, so the section syntax is the client's."""
    from mailstack.imap.parser import parse_command

    command = parse_command(f"a FETCH 1 BODY.PEEK[{spec}]\r\n".encode())
    assert isinstance(command, Fetch)
    attr = command.attrs[0]
    return fetch_item(FetchAttr("BODY", attr.section, partial_, True), msg)


@pytest.mark.parametrize("raw", CORPUS.values(), ids=CORPUS.keys())
def test_sections_tile_the_message(raw: bytes) -> None:
    check_tiling(raw)


def check_tiling(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    wire = msg.data.replace(b"\x00", b"\x80")  # what BODY[...] shows of it
    assert body(msg, "") == wire == fetch_item(FetchAttr("RFC822"), msg)
    header, text = body(msg, "HEADER"), body(msg, "TEXT")
    assert isinstance(header, bytes)
    assert isinstance(text, bytes)
    assert header + text == wire
    assert header == fetch_item(FetchAttr("RFC822.HEADER"), msg)
    assert text == fetch_item(FetchAttr("RFC822.TEXT"), msg)
    assert header.endswith(b"\r\n\r\n")

    def paths(entity: Entity, prefix: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        kids = entity.children or (
            (entity.message.children or (entity.message,)) if entity.message is not None else ()
        )
        for n, kid in enumerate(kids, start=1):
            yield (*prefix, n)
            yield from paths(kid, (*prefix, n))

    top = msg.root.children or (msg.root,)
    for path in [p for n, kid in enumerate(top, 1) for p in [(n,), *paths(kid, (n,))]]:
        spec = ".".join(map(str, path))
        mime, content = body(msg, f"{spec}.MIME"), body(msg, spec)
        part = find_part(msg.root, path)
        assert part is not None
        assert isinstance(mime, bytes)
        assert isinstance(content, bytes)
        assert mime + content == wire[part.start : part.end]


def test_part_numbers_and_message_rfc822_sections() -> None:
    msg = ParsedMessage.parse(RFC822)
    assert body(msg, "1") == b"see attached"
    inner_header = body(msg, "2.HEADER")
    assert isinstance(inner_header, bytes)
    assert inner_header.startswith(b"From: Inner Sender")
    assert inner_header.endswith(b"\r\n\r\n")
    inner_text = body(msg, "2.TEXT")
    assert isinstance(inner_text, bytes)
    assert body(msg, "2") == inner_header + inner_text
    assert body(msg, "2.1") == b"inner text\r\nline two"
    assert body(msg, "2.2") == b"<p>inner</p>"
    assert body(msg, "2.2.MIME") == b"Content-Type: text/html\r\n\r\n"
    assert body(msg, "2.HEADER.FIELDS (subject MESSAGE-id)") == (
        b"Subject: the inner one\r\nMessage-ID: <inner@example.org>\r\n\r\n"
    )
    assert body(msg, "HEADER.FIELDS (X-NOPE)") == b"\r\n"
    not_fields = body(msg, "HEADER.FIELDS.NOT (From To Content-Type)")
    assert not_fields == b"Subject: Fwd: inner\r\n\r\n"
    # Sections that do not exist are empty, as Dovecot answers (the RFCs say nothing).
    for missing in ("3", "2.3", "1.HEADER", "2.1.TEXT", "2.1.2", "1.2"):
        assert body(msg, missing) == b"", missing
    assert body(msg, "1.1") == body(msg, "1.1.1") == b"see attached"  # a leaf's part 1: itself
    single = ParsedMessage.parse(SIMPLE)
    assert body(single, "1") == body(single, "TEXT")
    assert body(single, "1.1") == b""  # but a single-part message has only part 1
    digest = ParsedMessage.parse(DIGEST)
    assert body(digest, "2.HEADER.FIELDS (SUBJECT)") == b"Subject: second\r\n\r\n"
    assert body(digest, "2.1") == b"body two"


def test_header_fields_keep_folded_lines() -> None:
    msg = ParsedMessage.parse(b"Subject: a\r\n long\r\n\tsubject\r\nX: y\r\n\r\nb")
    assert body(msg, "HEADER.FIELDS (SUBJECT)") == b"Subject: a\r\n long\r\n\tsubject\r\n\r\n"


def test_partial_fetch() -> None:
    msg = ParsedMessage.parse(SIMPLE)
    assert body(msg, "TEXT", (0, 5)) == b"Hello"
    assert body(msg, "TEXT", (6, 3)) == b"Joe"
    assert body(msg, "TEXT", (10_000, 10)) == b""
    assert body(msg, "5", (0, 10)) == b""


@given(st.binary(max_size=300), st.integers(0, 400), st.integers(0, 400))
def test_partial_is_a_slice(content: bytes, origin: int, count: int) -> None:
    got = partial(content, origin, count)
    assert got == content[origin : origin + count]
    assert len(got) == max(0, min(count, len(content) - origin))
    # Clients that page through a section with <n.k> reassemble exactly the section.
    assert (
        b"".join(partial(content, o, max(count, 1)) for o in range(0, len(content), max(count, 1)))
        == content
    )


def test_binary_decodes_like_email_package() -> None:
    msg = ParsedMessage.parse(MIXED)
    ref = [p for p in reference(msg.data).walk() if not p.is_multipart()]
    for path, part in zip([(1, 1), (1, 2), (2,)], ref, strict=True):
        decoded = fetch_item(FetchAttr("BINARY", Section(path)), msg)
        assert isinstance(decoded, bytes)
        assert decoded == part.get_payload(decode=True)
        assert fetch_item(FetchAttr("BINARY.SIZE", Section(path)), msg) == len(decoded)
    assert fetch_item(FetchAttr("BINARY", Section((9,))), msg) == b""
    assert binary_bytes(msg.data, msg.root, ()) == msg.data
    odd = ParsedMessage.parse(b"Content-Transfer-Encoding: x-uuencode\n\nbegin 644 f\n")
    with pytest.raises(UnknownCteError):
        fetch_item(FetchAttr("BINARY", Section((1,))), odd)


# -- robustness -------------------------------------------------------------------------------

MALFORMED = {
    "no-boundary-param": b"Content-Type: multipart/mixed\n\nhello\n",
    "boundary-never-found": b"Content-Type: multipart/mixed; boundary=zz\n\nhello\n",
    "no-close-delimiter": b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\n\nA\n--zz\n\nB",
    "no-blank-line": b"Subject: x\nthis is not a header\nmore",
    "only-header": b"Subject: x",
    "empty": b"",
    "bad-content-type": b"Content-Type: garbage\n\nx",
    "unterminated-quote": b'Content-Type: text/plain; charset="utf-8\n\nx',
    "nested-missing-close": (
        b"Content-Type: multipart/mixed; boundary=o\n\n--o\n"
        b"Content-Type: multipart/mixed; boundary=i\n\n--i\n\nx\n"
        b"--o\n\ny\n--o--\n"
    ),
    "8bit-boundary": b"Content-Type: multipart/mixed; boundary=\xff\n\n--\xff\n\nx\n--\xff--\n",
    "rfc822-empty": b"Content-Type: message/rfc822\n\n",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_messages_still_answer(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    everything(msg)
    bs = fetch_item(FetchAttr("BODYSTRUCTURE"), msg)
    parse_with_imapclient("BODYSTRUCTURE", bs)  # still valid IMAP syntax


def test_missing_close_delimiter_ends_inner_part_at_outer_boundary() -> None:
    msg = ParsedMessage.parse(MALFORMED["nested-missing-close"])
    assert body(msg, "1.1") == b"x"
    assert body(msg, "2") == b"y"


def test_deep_nesting_is_cut_not_crashed() -> None:
    depth = MAX_DEPTH * 3
    raw = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth)
        )
        + b"\nleaf\n"
    )
    msg = ParsedMessage.parse(raw)
    everything(msg)
    d, entity = 0, msg.root
    while entity.children:
        d, entity = d + 1, entity.children[0]
    assert d == MAX_DEPTH


def everything(msg: ParsedMessage) -> None:
    """Every FETCH item on every part; the invariants of the tree."""
    n = len(msg.data)
    for entity in walk(msg.root):
        assert 0 <= entity.start <= entity.body_start <= entity.end <= n
    structure = Structure.of(msg)
    assert Structure.from_json(structure.to_json()) == structure
    for spec in (
        Section(),
        Section(text="HEADER"),
        Section(text="TEXT"),
        Section(text="HEADER.FIELDS", fields=("FROM", "SUBJECT")),
        Section(text="HEADER.FIELDS.NOT", fields=("FROM",)),
        Section((1,)),
        Section((1,), "MIME"),
        Section((1,), "HEADER"),
        Section((1, 1)),
        Section((2,), "TEXT"),
        Section((1, 2, 1)),
    ):
        fetch_item(FetchAttr("BODY", spec, (1, 50)), msg)
        section_bytes(msg.data, msg.root, spec)
    for path in ((), (1,), (1, 1), (2,)):
        with contextlib.suppress(UnknownCteError):
            fetch_item(FetchAttr("BINARY.SIZE", Section(path)), msg)
    for name in (
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
        "RFC822.SIZE",
    ):
        fetch_item(FetchAttr(name), msg)


FRAGMENTS = [
    b"Content-Type: multipart/mixed; boundary=b\n",
    b"Content-Type: message/rfc822\n",
    b"Content-Type: multipart/digest; boundary=c\n",
    b"--b\n",
    b"--b--\n",
    b"--c\n",
    b"Content-Transfer-Encoding: base64\n",
    b"Content-Transfer-Encoding: quoted-printable\n",
    b"From: a <b@c>, (x) d:;\n",
    b"Content-Disposition: attachment; filename*=utf-8''%e2\n",
    b"\n",
    b"\r\n",
    b" folded\n",
    b"x=\n",
    b"\xff\xfe\x00",
    b"=?utf-8?b?w6k=?=",
    b'To: "\\',
    b"Subject:\n",
    b"(((",
    b"<@",
    b"Content-Type: text/plain; charset=bogus\n",
    b"Date: 31 Feb 99999999999 25:61:61 +9999\n",
    b"Date: Mon, 7 Feb 1994 21:52:25 -0800\n",
]


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(max_size=2000), st.lists(st.sampled_from(FRAGMENTS), max_size=40).map(b"".join)
    )
)
@example(b"Content-Type: multipart/mixed; boundary=b\n\n--b\n--b\n--b--")
@example(b"\n")
def test_any_bytes_never_raise(raw: bytes) -> None:
    msg = ParsedMessage.parse(raw)
    everything(msg)
    assert msg.size == len(to_crlf(raw))


# -- against Dovecot --------------------------------------------------------------------------
# Dovecot's imap binary runs pre-authenticated over stdin/stdout on a Maildir in a tmp dir
# (no listener, no system config), and answers the same FETCH items for the same corpus.

DOVECOT_IMAP = Path("/usr/lib/dovecot/imap")

DOVECOT_ITEMS = [
    "BODYSTRUCTURE",
    "BODY",
    "ENVELOPE",
    "RFC822.SIZE",
    "BODY.PEEK[]",
    "BODY.PEEK[HEADER]",
    "BODY.PEEK[TEXT]",
    "BODY.PEEK[HEADER.FIELDS (FROM subject)]",
    "BODY.PEEK[HEADER.FIELDS.NOT (FROM)]",
    "BODY.PEEK[1]",
    "BODY.PEEK[1.MIME]",
    "BODY.PEEK[2]",
    "BODY.PEEK[2.MIME]",
    "BODY.PEEK[2.1]",
    "BODY.PEEK[2.HEADER]",
    "BODY.PEEK[2.TEXT]",
    "BODY.PEEK[1.1]",
    "BODY.PEEK[1.2]",
    "BODY.PEEK[1.2.MIME]",
    "BODY.PEEK[3]",
    "BINARY.PEEK[1]",
    "BINARY.PEEK[1.1]",
    "BINARY.PEEK[1.2]",
    "BINARY.PEEK[2]",
    "BINARY.SIZE[1]",
    "BINARY.SIZE[2]",
    "BODY.PEEK[]<5.10>",
    "BODY.PEEK[TEXT]<500.10>",
]

# Where we answer differently on purpose:
# - "rfc822": after an encapsulated multipart's close delimiter, Dovecot counts the CRLF
#   that precedes the outer delimiter into the message/rfc822 part (size 351, 18 lines);
#   RFC 2046 §5.1.1 gives that CRLF to the outer delimiter, as we and Python's email do.
# - "addresses" ENVELOPE: Dovecot sends the local part "two words" unquoted, which makes
#   `mailbox@host` an invalid address; we keep the quotes the address needs.
KNOWN_DIFFERENCES = {
    ("rfc822", "BODYSTRUCTURE"),
    ("rfc822", "BODY"),
    ("rfc822", "BODY[2]"),
    ("rfc822", "BODY[2.TEXT]"),
    ("rfc822", "BINARY[2]"),
    ("rfc822", "BINARY.SIZE[2]"),
    ("addresses", "ENVELOPE"),
}


def run_dovecot(
    messages: list[bytes], commands: bytes, internal_dates: list[float] | None = None
) -> bytes:
    """SELECT INBOX holding `messages` (internal dates: the files' mtimes), send `commands`,
    LOGOUT; the whole transcript. Also used by test_search.py."""
    if not DOVECOT_IMAP.exists():
        pytest.fail(f"{DOVECOT_IMAP} is missing (Debian: dovecot-imapd); scripts/test installs it")
    base = Path(tempfile.mkdtemp(prefix="mailstack-dovecot-"))
    try:
        base.chmod(0o711)
        maildir = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        for i, raw in enumerate(messages, 1):
            path = maildir / "new" / f"{1_700_000_000 + i}.M{i}P1.test"
            path.write_bytes(raw)
            if internal_dates is not None:
                os.utime(path, (internal_dates[i - 1], internal_dates[i - 1]))
        if os.geteuid() == 0:  # Dovecot refuses mail access as root: serve it as nobody
            user = pwd.getpwnam("nobody")
            uid, gid, name = user.pw_uid, user.pw_gid, user.pw_name
            for path in [maildir, *maildir.rglob("*")]:
                os.chown(path, uid, gid)
        else:
            uid, gid, name = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
        conf = base / "dovecot.conf"
        conf.write_text(
            f"log_path = /dev/stderr\nssl = no\nmail_location = maildir:{maildir}\n"
            f"mail_uid = {uid}\nmail_gid = {gid}\nfirst_valid_uid = 0\nfirst_valid_gid = 0\n"
            f"base_dir = {base}/run\n"
        )
        proc = subprocess.run(
            [str(DOVECOT_IMAP), "-c", str(conf)],
            input=b"a SELECT INBOX\r\n" + commands + b"z LOGOUT\r\n",
            capture_output=True,
            timeout=60,
            check=True,
            env={"HOME": str(base), "USER": name, "TZ": "UTC", "PATH": "/usr/bin:/bin"},
        )
        assert b"z OK" in proc.stdout, proc.stderr.decode(errors="replace")
        return proc.stdout
    finally:
        shutil.rmtree(base, ignore_errors=True)


def responses(transcript: bytes) -> Iterator[bytes]:
    """Whole response lines, literals included."""
    pos = start = 0
    while (nl := transcript.find(b"\r\n", pos)) >= 0:
        if (m := re.search(rb"~?\{(\d+)\}\Z", transcript[pos:nl])) is not None:
            pos = nl + 2 + int(m[1])
            continue
        yield transcript[start:nl]
        pos = start = nl + 2


def fetch_values(line: bytes) -> dict[bytes, Any]:
    """One `N (item value ...)` FETCH payload parsed by imapclient (literal8 as a literal)."""
    parsed = parse_fetch_response(imaplib_shape(line), uid_is_key=False)
    [(_, values)] = parsed.items()
    return {k: v for k, v in values.items() if k not in (b"SEQ", b"FLAGS")}


@pytest.mark.external
def test_fetch_answers_match_dovecot() -> None:
    from mailstack.imap.parser import parse_command

    names = list(CORPUS)
    commands = b"".join(b"f FETCH 1:* (%s)\r\n" % item.encode() for item in DOVECOT_ITEMS)
    theirs: dict[int, dict[bytes, Any]] = {}
    for line in responses(run_dovecot([CORPUS[n] for n in names], commands)):
        if (m := re.match(rb"\* (\d+) FETCH ", line)) is not None:
            theirs.setdefault(int(m[1]), {}).update(fetch_values(m[1] + b" " + line[m.end() :]))
    compared = 0
    for seq, name in enumerate(names, start=1):
        msg = ParsedMessage.parse(CORPUS[name])
        for item in DOVECOT_ITEMS:
            command = parse_command(f"a FETCH 1 ({item})\r\n".encode())
            assert isinstance(command, Fetch)
            attr = command.attrs[0]
            label = attr.response_name()
            if (name, label) in KNOWN_DIFFERENCES:
                continue
            if attr.name.startswith("BINARY") and attr.section is not None:
                part = find_part(msg.root, attr.section.part)
                if part is not None and (part.children or part.message is not None):
                    continue  # BINARY of a composite part: RFC 3516 leaves it open
            ours = fetch_values(
                b"1 (" + label.encode() + b" " + render(fetch_item(attr, msg)) + b")"
            )[label.encode()]
            expected = theirs[seq][label.encode()]
            if attr.name == "BODY" and attr.section is None:
                # Dovecot lower-cases BODY (not BODYSTRUCTURE) values; compare without case.
                ours, expected = repr(ours).lower(), repr(expected).lower()
            assert ours == expected, (name, label)
            compared += 1
    assert compared > len(names) * len(DOVECOT_ITEMS) * 0.8


# -- generated MIME trees ---------------------------------------------------------------------


def _text_part(text: str, subtype: str, charset: str) -> email.message.Message:
    return MIMEText(text, subtype, charset)


def _message_part(inner: email.message.Message, subject: str) -> email.message.Message:
    inner["Subject"] = subject
    inner["From"] = "gen@example.com"
    return MIMEMessage(inner)


def _multipart(parts: list[email.message.Message], subtype: str) -> email.message.Message:
    return MIMEMultipart(subtype, _subparts=parts)


leaves = st.one_of(
    st.builds(
        _text_part, st.text(max_size=120), st.sampled_from(["plain", "html"]), st.just("utf-8")
    ),
    st.builds(
        _text_part,
        st.text(st.characters(max_codepoint=255), max_size=120),
        st.just("plain"),
        st.just("iso-8859-1"),
    ),
    st.builds(MIMEApplication, st.binary(max_size=200)),
)
trees = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.builds(
            _multipart,
            st.lists(kids, min_size=1, max_size=3),
            st.sampled_from(["mixed", "alternative", "related"]),
        ),
        st.builds(_message_part, kids, st.text(alphabet="abc xyz", max_size=20)),
    ),
    max_leaves=6,
)


@settings(max_examples=150)
@given(trees)
def test_generated_mime_trees_match_email_package(tree: email.message.Message) -> None:
    tree["Subject"] = "generated"
    raw = tree.as_bytes()
    check_part_tree(raw)
    check_bodystructure(raw)
    check_tiling(raw)
    # Attachments come back byte for byte through BINARY[part].
    msg = ParsedMessage.parse(raw)
    built = [
        p.get_payload(decode=True) for p in tree.walk() if p.get_content_maintype() == "application"
    ]
    ours = [
        decode_transfer(msg.data[e.body_start : e.end], e.transfer_encoding)
        for e in walk(msg.root)
        if e.content_type.maintype == "application"
    ]
    assert ours == built


def random_tree(rng: random.Random, depth: int = 0) -> email.message.Message:
    """A random MIME tree as email.mime builds them (seeded: the same list every run)."""

    def text() -> str:
        return "".join(rng.choice("abc é\nxyz\t") for _ in range(rng.randint(0, 80)))

    roll = rng.random()
    if depth > 2 or roll < 0.4:
        kind = rng.random()
        if kind < 0.4:
            return MIMEText(text(), rng.choice(["plain", "html"]), "utf-8")
        if kind < 0.7:
            return MIMEText(text().replace("é", "e"), "plain", "us-ascii")
        return MIMEApplication(rng.randbytes(rng.randint(0, 100)))
    if roll < 0.8:
        return MIMEMultipart(
            rng.choice(["mixed", "alternative"]),
            _subparts=[random_tree(rng, depth + 1) for _ in range(rng.randint(1, 3))],
        )
    inner = random_tree(rng, depth + 1)
    inner["Subject"] = "inner " + text()[:12].replace("\n", " ")
    inner["From"] = "Inner \t Name <x@y.example>"
    return MIMEMessage(inner)


@pytest.mark.external
def test_generated_messages_match_dovecot() -> None:
    from mailstack.imap.parser import parse_command

    rng = random.Random(20241001)
    messages = []
    for n in range(60):
        tree = random_tree(rng)
        tree["Subject"] = f"generated {n}"
        tree["To"] = "A <a@b.example>, d@e.example"
        messages.append(tree.as_bytes())
    items = [
        "BODYSTRUCTURE",
        "ENVELOPE",
        "BODY.PEEK[1]",
        "BODY.PEEK[1.MIME]",
        "BODY.PEEK[2]",
        "BODY.PEEK[1.1]",
        "BODY.PEEK[1.2]",
        "BODY.PEEK[2.1]",
        "BODY.PEEK[2.2.1]",
        "BODY.PEEK[1.HEADER]",
        "BODY.PEEK[2.TEXT]",
        "BINARY.SIZE[1.1]",
    ]
    commands = b"".join(b"f FETCH 1:* (%s)\r\n" % item.encode() for item in items)
    theirs: dict[int, dict[bytes, Any]] = {}
    for line in responses(run_dovecot(messages, commands)):
        if (m := re.match(rb"\* (\d+) FETCH ", line)) is not None:
            theirs.setdefault(int(m[1]), {}).update(fetch_values(m[1] + b" " + line[m.end() :]))
    assert sorted(theirs) == list(range(1, len(messages) + 1))  # Dovecot answered for each
    for seq, raw in enumerate(messages, start=1):
        msg = ParsedMessage.parse(raw)
        for item in items:
            command = parse_command(f"a FETCH 1 ({item})\r\n".encode())
            assert isinstance(command, Fetch)
            attr = command.attrs[0]
            label = attr.response_name().encode()
            if attr.name == "BINARY.SIZE" and attr.section is not None:
                part = find_part(msg.root, attr.section.part)
                if part is not None and (part.children or part.message is not None):
                    continue  # BINARY of a composite part: RFC 3516 leaves it open
            ours = fetch_values(b"1 (" + label + b" " + render(fetch_item(attr, msg)) + b")")
            assert ours[label] == theirs[seq][label], (seq, item)


@given(st.binary(max_size=200).map(lambda b: b.replace(b"a", b"\r").replace(b"b", b"\n")))
def test_to_crlf_turns_every_line_end_into_crlf(raw: bytes) -> None:
    assert to_crlf(raw) == re.sub(rb"\r?\n", b"\r\n", raw)


HEADER_PIECES = [
    b"A: b",
    b"From :x",
    b"\r\n",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"cont",
    b":",
    b"X-Y: z\r\n",
]


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.sampled_from(HEADER_PIECES), max_size=20).map(b"".join),
    st.integers(0, 40),
    st.integers(0, 40),
)
@example(b"A: b\r\n c", 0, 0)  # a last continuation without CRLF belongs to its field
@example(b" cont\r\nA: b\r\n\r\n", 0, 0)  # a leading continuation is skipped
def test_parse_header_takes_whole_fields_as_the_line_rule_does(
    data: bytes, cut_start: int, cut_end: int
) -> None:
    # parse_header matches each well-formed field at once and hands anything else to the
    # line-by-line rule (mime._parse_lines); any header block and window give one answer.
    start, end = min(cut_start, len(data)), max(min(cut_start, len(data)), len(data) - cut_end)
    expected = mime._parse_lines(data, start, end, [])
    assert mime.parse_header(data, start, end) == expected
    # ... and with `only`, the same fields filtered by name, the same body start.
    only = frozenset({"a", "from"})
    kept = tuple(f for f in expected[0] if f.name.lower() in only)
    assert mime.parse_header(data, start, end, only=only) == (kept, expected[1])


def test_whole_message_items_of_an_ascii_message_parse_no_tree() -> None:
    # A client syncing bodies asks BODY[] of every message: the bytes are the answer, and
    # the MIME tree is parsed only for an item that reads it (a part, a structure).
    raw = (
        b"From: a@b\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\nhi\r\n--x--\r\n"
    )
    parsed = ParsedMessage.parse(raw)
    assert downgrade(parsed) is parsed
    for name, section in (("BODY", Section()), ("RFC822", None), ("RFC822.SIZE", None)):
        fetch_item(FetchAttr(name, section), parsed)
    assert parsed._root is None
    assert fetch_item(FetchAttr("BODY", Section((1,))), parsed) == b"hi"
    assert parsed._root is not None
