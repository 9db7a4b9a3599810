"""atheris fuzz target for the IMAP core: framing, parsing and state checks on any bytes.

Run: `python tests/fuzz/fuzz_imap.py -runs=100000 tests/fuzz/corpus/fuzz_imap` (or all targets:
`scripts/fuzz`). Not collected by pytest (no test_ prefix).
One seed per command is written to the corpus directory on first run; the first input byte
picks the connection state, so every command is tried in every state (as mox's fuzzer does).
The second byte cuts the input in two pieces, fed one after the other with and without the
transport's early continuation (`continuation_now`): both must give the same events. Only
`RemoteProtocolError` may escape; any other exception is a crash to turn into an
`@example(...)` in tests/imap/test_imap_protocol.py.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.imap.framing import RemoteProtocolError
    from mailstack.imap.protocol import ImapProtocol, SendContinuation, State

STATES = list(State)
SEEDS = [
    b"a CAPABILITY",
    b"a NOOP",
    b"a LOGOUT",
    b'a ID ("name" "x")',
    b"a STARTTLS",
    b"a LOGIN alice {2+}\r\npw",
    b"a AUTHENTICATE PLAIN AGEAYg==",
    b"a ENABLE UTF8=ACCEPT",
    b"a AUTHENTICATE SCRAM-SHA-256 biwsbj1hbGljZUBleGFtcGxlLmNvbSxyPWFiYw==",
    b"a SELECT INBOX",
    b"a EXAMINE Sent",
    b"a CREATE X (USE (\\Sent))",
    b"a DELETE X",
    b"a RENAME X Y",
    b"a SUBSCRIBE X",
    b"a UNSUBSCRIBE X",
    b'a LIST (SUBSCRIBED) "" ("*" %) RETURN (CHILDREN STATUS (MESSAGES))',
    b'a LSUB "" *',
    b"a NAMESPACE",
    b"a STATUS INBOX (MESSAGES UIDNEXT)",
    b'a APPEND INBOX (\\Seen) " 1-Feb-2024 10:00:00 +0000" {3}\r\nhi!',
    b"a IDLE\r\nDONE",
    b"a CHECK",
    b"a CLOSE",
    b"a UNSELECT",
    b"a EXPUNGE",
    b"a UID EXPUNGE 1:*",
    b"a SEARCH RETURN (MIN COUNT) OR FROM x (NOT SEEN SINCE 1-Feb-2024) UID 1:5",
    b"a FETCH 1:* (FLAGS BODY.PEEK[1.HEADER.FIELDS (From)]<0.10> BINARY[1])",
    b"a UID STORE 1 +FLAGS.SILENT (\\Deleted)",
    b"a COPY 1 X",
    b"a UID MOVE $ Y",
    b"a GETQUOTAROOT INBOX",
    b'a GETQUOTA ""',
    b'a SETQUOTA "" (STORAGE 1)',
    b"a COMPRESS DEFLATE",
    b'a APPEND INBOX {1+}\r\nx (\\Seen) " 1-Feb-2024 10:00:00 +0000" {1+}\r\ny',
    b"a STATUS INBOX (SIZE APPENDLIMIT DELETED)",
    # RFC 5267 ESORT and PARTIAL
    b"a UID SORT RETURN (MIN MAX COUNT ALL PARTIAL 1:10) (REVERSE DATE) UTF-8 ALL",
    b"a SEARCH RETURN (COUNT PARTIAL 5:1) UNSEEN",
    b"a SORT RETURN () (SIZE) UTF-8 ALL",
    b"a UID SEARCH RETURN (UPDATE CONTEXT COUNT) UNSEEN",
    b'a CANCELUPDATE "a1" "a2"',
    # RFC 5465 NOTIFY
    b"a NOTIFY SET STATUS (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (From)]) "
    b'MessageExpunge FlagChange)) (subtree (Lists "a b") (MessageNew MessageExpunge)) '
    b"(mailboxes INBOX (MailboxName SubscriptionChange)) (personal NONE)",
    b"a NOTIFY NONE",
    b"a NOTIFY SET (inboxes (MessageNew MessageExpunge AnnotationChange))",
    # RFC 7162 CONDSTORE/QRESYNC syntax
    b"a ENABLE QRESYNC CONDSTORE",
    b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541 (1:10 41:50)))",
    b"a EXAMINE INBOX (CONDSTORE)",
    b"a UID FETCH 300:500 (FLAGS MODSEQ) (CHANGEDSINCE 12345 VANISHED)",
    b"a STORE 1:3 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen)",
    b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338',
    b"a STATUS INBOX (HIGHESTMODSEQ)",
    # RFC 4469 CATENATE and RFC 6855 UTF8 in APPEND (imap/parser_append.py)
    b'a APPEND Drafts (\\Seen) CATENATE (URL "/INBOX;UIDVALIDITY=3/;UID=5/;SECTION=1" '
    b"TEXT {3+}\r\nabc UTF8 (~{2+}\r\n\xc3\xa9)) CATENATE (URL ;UID=1/;PARTIAL=0.9)",
    b"a APPEND INBOX UTF8 (~{4+}\r\nab\xc3\xa9)",
    b"a SORT (DATE) UTF-8 NEW",
]


def transcript(data: bytes, state: State, cut: int, *, early: bool) -> list[object]:
    """Events of `data` fed in two pieces; with `early`, asking `continuation_now` after
    each piece as the transport does (imap/server.py `_early`)."""
    proto = ImapProtocol(max_literal_bytes=4096, max_line_bytes=1024)
    proto.state = state
    out: list[object] = []
    try:
        for piece in (data[:cut], data[cut:]):
            proto.receive_data(piece)
            if early and (plus := proto.continuation_now()) is not None:
                out.append(plus)
            while (event := proto.next_event()) is not None:
                out.append(event.data if isinstance(event, SendContinuation) else event)
    except RemoteProtocolError as exc:
        out.append(exc.reason)
    return out


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    state, cut, body = STATES[data[0] % len(STATES)], data[1] % max(1, len(data) - 1), data[2:]
    early = transcript(body, state, cut, early=True)
    assert early == transcript(body, state, cut, early=False), early


if __name__ == "__main__":
    # The first byte picks the connection state: every seed in every state.
    seeds = [bytes([s, 7]) + seed + b"\r\n" for seed in SEEDS for s in range(len(STATES))]
    harness.run(test_one_input, seeds)
