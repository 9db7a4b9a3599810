"""atheris fuzz target: the MIME parser and the header rows made from it (imap/mime.py,
imap/header_index.py).

Run: `python tests/fuzz/fuzz_mime.py -runs=100000 [corpus_dir]`. Not collected by pytest. For
any bytes:
- `parse_message` never raises and its offsets stay inside the data (mime.py's invariants);
- `parse_header`'s one-match-per-field path answers what the line-by-line rule answers, for
  the whole data and for any window of it;
- a header row's ENVELOPE, rendered from the stored fields, is the bytes the whole message's
  parse renders (what a client fetching ENVELOPE gets either way).
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.imap import fetch, header_index, mime, response
    from mailstack.imap.commands import FetchAttr, Section

ENVELOPE = FetchAttr("ENVELOPE")
BODY = FetchAttr("BODY", Section())
SEEDS = [
    b"From: a@b\r\nTo: c@d, e@f\r\nSubject: hi\r\n there\r\n\r\nbody\r\n",
    b"Subject: x\r\n\tfolded\rbare\r\nFrom: \"Q\" <q@x>\r\nSender:\r\n\r\n",
    b" leading\r\nX: y\r\nnot a field\r\n\r\n",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nA: b\r\n\r\nx\r\n--b--\r\n",
    b"To: g: a@b, c@d;\r\nCc: caf\xc3\xa9 <x@y>\r\nDate: Mon, 1 Jan 2024\r\nFrom: \xff@x\r\n",
    b"A: b\r\n c",
]


def _check_entity(entity: mime.Entity, size: int) -> None:
    assert 0 <= entity.start <= entity.body_start <= entity.end <= size
    for child in entity.children:
        _check_entity(child, size)
    if entity.message is not None:
        _check_entity(entity.message, size)


def test_one_input(data: bytes) -> None:
    wire = mime.to_crlf(data)
    root = mime.parse_message(wire)
    _check_entity(root, len(wire))
    # BODY[] of a message parsed lazily (no tree) is the section the tree gives.
    whole = fetch.fetch_item(BODY, fetch.ParsedMessage.parse(data))
    assert whole == fetch.section_bytes(wire, root, Section()).replace(b"\x00", b"\x80")
    for start, end in ((0, len(data)), (len(data) // 3, len(data) - len(data) // 4)):
        fields, body = mime._parse_lines(data, start, end, [])
        assert mime.parse_header(data, start, end) == (fields, body)
        kept = tuple(f for f in fields if f.name.lower() in header_index.INDEXED)
        assert mime.parse_header(data, start, end, only=header_index.INDEXED) == (kept, body)
    parsed_whole = fetch.ParsedMessage.parse(data)
    assert header_index.message_envelope(wire) == response.value(
        fetch.fetch_item(ENVELOPE, parsed_whole)
    )
    head, _ = mime.parse_header(wire, 0, len(wire))
    block = wire[: head[-1].end] + b"\r\n" if head else b"\r\n"
    row = header_index.make_row(1, "k", block, with_envelope=True)
    parsed = fetch.ParsedMessage.parse(block)
    assert row.envelope == response.value(fetch.fetch_item(ENVELOPE, parsed))
    assert header_index.render_envelope(row.raw) == row.envelope


if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
