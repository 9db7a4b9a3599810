"""Differential test against an isolated Dovecot (which implements CATENATE, RFC 4469): the
same APPENDs with TEXT and URL parts on each server must store the same bytes, and the same
bad URLs must be refused with NO [BADURL] by both."""

from __future__ import annotations

import re

from tests.imap.servers import Endpoint  # the `endpoints` fixture: tests/imap/conftest.py

ORIGINAL = (
    b"From: a@example.com\r\nSubject: original\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
    b"\r\naGVsbG8=\r\n--b--\r\n"
)
NEW_HEADER = (
    b"From: b@example.com\r\nSubject: forward\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=n\r\n\r\n--n\r\n"
)


def text(data: bytes) -> bytes:
    return b"TEXT {%d+}\r\n" % len(data) + data


def script(endpoint: Endpoint) -> dict[str, bytes]:
    """Run the script on one server: what each APPEND stored, or its tagged answer."""
    out: dict[str, bytes] = {}
    with endpoint.connect() as client:
        assert b" CATENATE" in client.command("CAPABILITY")[0], endpoint.name
        append = b"APPEND INBOX {%d+}\r\n" % len(ORIGINAL) + ORIGINAL
        assert client.tagged(append).startswith(b"OK"), endpoint.name
        line = client.command("STATUS INBOX (UIDVALIDITY)")[0]
        uv = int(re.search(rb"UIDVALIDITY (\d+)", line)[1])  # type: ignore[index]
        cases = {
            "forward a part": b"CATENATE ("
            + text(NEW_HEADER)
            + b" URL /INBOX/;UID=1/;SECTION=2.MIME URL /INBOX/;UID=1/;SECTION=2 "
            + text(b"\r\n--n--\r\n")
            + b")",
            "header and text": b"CATENATE (URL /INBOX;UIDVALIDITY=%d/;UID=1/;SECTION=HEADER URL "
            b"/INBOX/;UID=1/;SECTION=TEXT)" % uv,
            "whole message": b"CATENATE (URL /INBOX/;UID=1)",
            "stale uidvalidity": b"CATENATE (URL /INBOX;UIDVALIDITY=%d/;UID=1)" % (uv + 1),
            "missing uid": b"CATENATE (URL /INBOX/;UID=9)",
            "missing folder": b"CATENATE (URL /Nowhere/;UID=1)",
        }
        for uid, (name, item) in enumerate(cases.items(), start=2):
            answer = client.tagged(b"APPEND INBOX " + item)
            if not answer.startswith(b"OK"):
                # Only the code is compared (the human-readable text differs), and not the
                # UIDVALIDITY values, which differ between the servers by design.
                code = answer.split(b"]")[0] + b"]"
                out[name] = re.sub(rb"UIDVALIDITY=\d+", b"UIDVALIDITY=v", code)
                continue
            assert client.tagged("EXAMINE INBOX").startswith(b"OK")
            fetched = client.command(f"UID FETCH {uid} BODY.PEEK[]")[0]
            head, _, rest = fetched.partition(b"}\r\n")
            out[name] = rest[: int(head.rsplit(b"{", 1)[1])]
            assert client.tagged("UNSELECT").startswith(b"OK")
        # A relative URL (RFC 5092 §7.1) is relative to the selected mailbox.
        assert client.tagged("SELECT INBOX").startswith(b"OK")
        answer = client.tagged(b'APPEND INBOX CATENATE (URL ";UID=1/;SECTION=1")')
        assert answer.startswith(b"OK"), (endpoint.name, answer)
        fetched = client.command("UID FETCH * BODY.PEEK[]")
        line = next(line for line in fetched if b" FETCH (" in line)
        # Dovecot sends BODY[] as a literal, we send a short one quoted: compare the octets.
        m = re.search(rb'BODY\[\] (?:"(.*)"|\{\d+\}\r\n(.*))\)\r\n$', line, re.DOTALL)
        assert m is not None, (endpoint.name, line)
        out["relative url"] = m[1] if m[1] is not None else m[2]
    return out


def test_catenate_equals_dovecots(endpoints: tuple[Endpoint, Endpoint]) -> None:
    ours, theirs = (script(endpoint) for endpoint in endpoints)
    assert ours == theirs
    assert ours["whole message"] == ORIGINAL
    assert ours["missing uid"] == b"NO [BADURL /INBOX/;UID=9]"
    assert ours["relative url"] == b"part one"
