"""Messages with tricky subjects, dates, addresses and reference chains, shared by the SORT
and THREAD tests (tests/imap/test_sort.py, test_thread.py) and their Dovecot comparisons."""

from __future__ import annotations

import datetime


def _ts(day: int, hour: int = 12) -> float:
    return datetime.datetime(2024, 3, day, hour, tzinfo=datetime.UTC).timestamp()


def _message(
    subject: str | None,
    date: str | None,
    sender: str | None = "a@example.com",
    to: str | None = "x@example.com",
    cc: str | None = None,
    message_id: str | None = None,
    references: str | None = None,
    in_reply_to: str | None = None,
    body: str = "text",
) -> bytes:
    lines = []
    for name, value in (
        ("From", sender),
        ("To", to),
        ("Cc", cc),
        ("Subject", subject),
        ("Date", date),
        ("Message-ID", message_id),
        ("References", references),
        ("In-Reply-To", in_reply_to),
    ):
        if value is not None:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode()


# (raw message, INTERNALDATE). Sequence numbers are positions + 1.
MESSAGES: list[tuple[bytes, float]] = [
    # 1-6: one conversation, References complete, subjects with every kind of marker
    (
        _message(
            "hello", "Fri, 1 Mar 2024 10:00:00 +0000", "Bob <bob@b.example>", message_id="<m1@x>"
        ),
        _ts(1),
    ),
    (
        _message(
            "Re: hello",
            "Fri, 1 Mar 2024 11:00:00 +0000",
            "carol@c.example",
            message_id="<m2@x>",
            references="<m1@x>",
        ),
        _ts(2),
    ),
    (
        _message(
            "RE: [list] hello",
            "Fri, 1 Mar 2024 12:00:00 +0100",
            '"Dave D" <dave@d.example>',
            message_id="<m3@x>",
            references="<m1@x> <m2@x>",
        ),
        _ts(3),
    ),
    (
        _message(
            "[list] Re: hello",
            "Fri, 1 Mar 2024 13:00:00 -0500",
            "alice@a.example",
            message_id="<m4@x>",
            references="<m1@x>\r\n <m2@x>",
        ),
        _ts(4),
    ),
    (
        _message(
            "Fwd: hello", "Sat, 2 Mar 2024 09:00:00 +0000", "BOB@b.example", message_id="<m5@x>"
        ),
        _ts(5),
    ),
    (
        _message(
            "[fwd: hello]", "Sat, 2 Mar 2024 09:00:00 +0000", "erin@e.example", message_id="<m6@x>"
        ),
        _ts(5),
    ),
    # 7-10: a gap (the parent <gone@x> was never here) and a reply by In-Reply-To only
    (
        _message(
            "hello (fwd)",
            "Sun, 3 Mar 2024 08:00:00 +0000",
            message_id="<m7@x>",
            references="<gone@x>",
        ),
        _ts(6),
    ),
    (
        _message(
            "Re: Re: re: other",
            "Sun, 3 Mar 2024 07:00:00 +0000",
            message_id="<m8@x>",
            references="<gone@x>",
        ),
        _ts(7),
    ),
    (
        _message(
            "Re[2]: other",
            "Sun, 3 Mar 2024 07:30:00 +0000",
            message_id="<m9@x>",
            in_reply_to="<m8@x>",
        ),
        _ts(8),
    ),
    (_message("other", "garbage date", message_id="<m10@x>"), _ts(9)),
    # 11-13: a References loop and a duplicate Message-ID
    (
        _message(
            "loop a", "Mon, 4 Mar 2024 10:00:00 +0000", message_id="<la@x>", references="<lb@x>"
        ),
        _ts(10),
    ),
    (
        _message(
            "loop b", "Mon, 4 Mar 2024 10:00:00 +0000", message_id="<lb@x>", references="<la@x>"
        ),
        _ts(10),
    ),
    (_message("dup", "Mon, 4 Mar 2024 11:00:00 +0000", message_id="<m1@x>"), _ts(11)),
    # 14-20: odd subjects and dates, missing headers
    (_message(None, None, None, None), _ts(12)),
    (_message("", "Tue, 5 Mar 2024 10:00:00", "", "undisclosed-recipients:;"), _ts(13)),
    (
        _message(
            "  spaced \t  out   ",
            "5 Mar 24 10:00 GMT",
            "zed@z.example",
            cc="Carl <carl@c.example>, dan@d.example",
        ),
        _ts(14),
    ),
    (
        _message(
            "=?utf-8?q?Re=3A_caf=C3=A9?=",
            "Wed, 6 Mar 2024 10:00:00 +0000",
            "=?utf-8?q?Andr=C3=A9?= <andre@a.example>",
            "Zoe <zoe@z.example>",
        ),
        _ts(15),
    ),
    (
        _message(
            "café",
            "Wed, 6 Mar 2024 09:00:00 +0000",
            "(comment) mallory@m.example",
            "yves@y.example",
            cc="alice@a.example",
        ),
        _ts(15),
    ),
    (
        _message(
            "[PATCH] [v2] thing",
            "Thu, 7 Mar 2024 10:00:00 +0000",
            "Bob <bob@b.example>",
            to='"" <amy@a.example>',
        ),
        _ts(16),
    ),
    (_message("[PATCH]", "Thu, 31 Feb 2024 10:00:00 +0000", "bob@b.example", to=None), _ts(17)),
    # 21-26: more markers, a self-reference, a thread whose root is missing with two replies
    (
        _message(
            "Fw: Fwd: thing",
            "Fri, 8 Mar 2024 10:00:00 +0000",
            message_id="<s1@x>",
            references="<s1@x>",
        ),
        _ts(18),
    ),
    (
        _message(
            "Re: [fwd: Re: thing] (fwd)",
            "Fri, 8 Mar 2024 11:00:00 +0000",
            message_id="<t1@x>",
            references="<root@x> <mid@x>",
        ),
        _ts(19),
    ),
    (
        _message(
            "thing",
            "Fri, 8 Mar 2024 12:00:00 +0000",
            message_id="<t2@x>",
            references="<root@x> <other-mid@x>",
        ),
        _ts(20),
    ),
    (
        _message(
            "[a] [b]",
            "Sat, 9 Mar 2024 10:00:00 +0000",
            message_id="<u1@x>",
            references="no-at-sign <bad> <root@x>",
        ),
        _ts(21),
    ),
    (_message("re:", "Sat, 9 Mar 2024 10:00:00 +0000", message_id="<u2@x>"), _ts(21)),
    (
        _message(
            "(fwd)",
            "Sat, 9 Mar 2024 11:00:00 +0000",
            message_id="<u3@x>",
            references="<u2@x>",
            in_reply_to="<m1@x>",
        ),
        _ts(22),
    ),
]

# Sort programs sent to both servers.
SORTS = [
    "(ARRIVAL)",
    "(REVERSE ARRIVAL)",
    "(DATE)",
    "(REVERSE DATE)",
    "(SUBJECT)",
    "(SUBJECT DATE)",
    "(REVERSE SUBJECT REVERSE DATE)",
    "(FROM)",
    "(REVERSE FROM)",
    "(TO)",
    "(CC)",
    "(SIZE)",
    "(REVERSE SIZE)",
    "(DISPLAYFROM)",
    "(DISPLAYTO)",
    "(FROM SUBJECT)",
]
