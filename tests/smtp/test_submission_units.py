"""The pure parts of submission: SASL PLAIN/LOGIN (smtp.auth) and the submission policy
functions of smtp.policy, as tables; arbitrary client lines end an exchange with a reply."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.smtp import auth, policy, replies
from mailstack.smtp.auth import Credentials, SaslError, SaslExchange
from mailstack.smtp.policy import RecipientFacts


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    ("initial", "expected"),
    [
        (b64(b"\0alice@example.com\0secret"), Credentials("alice@example.com", "secret")),
        (
            b64(b"ALICE@example.com\0alice@example.com\0p w"),
            Credentials("alice@example.com", "p w"),
        ),
        (b64("\0josé@example.com\0pässword".encode()), Credentials("josé@example.com", "pässword")),
    ],
)
def test_plain_initial_response(initial: str, expected: Credentials) -> None:
    exchange = SaslExchange("plain", initial)
    assert exchange.challenge is None
    assert exchange.credentials == expected


@pytest.mark.parametrize(
    ("initial", "reply"),
    [
        ("*", auth.CANCELLED),
        ("=", auth.MALFORMED),  # empty
        ("@@@@", auth.BAD_BASE64),
        ("YWJ", auth.BAD_BASE64),  # bad padding
        (b64(b"alice\0secret"), auth.MALFORMED),  # one NUL
        (b64(b"\0\0secret"), auth.MALFORMED),  # no user
        (b64(b"\0alice\0"), auth.MALFORMED),  # no password
        (b64(b"\0alice\0a\0b"), auth.MALFORMED),
        (b64(b"\0alice\0\xff"), auth.MALFORMED),  # not UTF-8
        (b64(b"bob\0alice\0secret"), auth.NO_PROXY),
    ],
)
def test_plain_refusals(initial: str, reply: replies.Reply) -> None:
    with pytest.raises(SaslError) as info:
        SaslExchange("PLAIN", initial)
    assert info.value.reply == reply


def test_plain_without_initial_response_and_login_both_ways() -> None:
    plain = SaslExchange("PLAIN", None)
    assert plain.challenge == ""
    plain.feed(b64(b"\0u@x.test\0pw"))
    assert plain.credentials == Credentials("u@x.test", "pw")
    login = SaslExchange("LOGIN", None)
    assert login.challenge == "VXNlcm5hbWU6"  # "Username:"
    login.feed(b64(b"u@x.test"))
    assert login.challenge == "UGFzc3dvcmQ6"  # "Password:"
    login.feed(b64(b"pw"))
    assert login.credentials == Credentials("u@x.test", "pw")
    with pytest.raises(RuntimeError):
        login.feed(b64(b"more"))
    quick = SaslExchange("LOGIN", b64(b"u@x.test"))
    assert quick.challenge == "UGFzc3dvcmQ6"
    with pytest.raises(SaslError) as info:
        quick.feed("=")  # an empty password
    assert info.value.reply == auth.MALFORMED


def test_passwords_stay_out_of_reprs() -> None:
    creds = SaslExchange("PLAIN", b64(b"\0u@x.test\0hunter2")).credentials
    assert "hunter2" not in repr(creds)
    with pytest.raises(SaslError) as info:
        SaslExchange("PLAIN", b64(b"other\0u@x.test\0hunter2"))
    assert "hunter2" not in str(info.value)


def test_unknown_mechanism() -> None:
    for mechanism in ("CRAM-MD5", "XOAUTH2", ""):
        with pytest.raises(SaslError) as info:
            SaslExchange(mechanism, None)
        assert info.value.reply == auth.UNKNOWN_MECHANISM


@given(st.sampled_from(["PLAIN", "LOGIN"]), st.lists(st.text(max_size=40), max_size=4))
def test_any_client_lines_end_in_credentials_or_a_reply(mechanism: str, lines: list[str]) -> None:
    refusal: replies.Reply | None = None
    try:
        exchange = SaslExchange(mechanism, None)
        for line in lines:
            if exchange.credentials is not None:
                break
            exchange.feed(line)
    except SaslError as exc:
        refusal = exc.reply
    assert refusal is None or refusal.code in (501, 535)


def test_sender_and_from_rules() -> None:
    assert policy.check_sender("alice@example.com", owned=True) is None
    assert policy.check_sender("bob@example.com", owned=False) == policy.SENDER_NOT_OWNED
    assert policy.check_sender("", owned=True) == policy.SENDER_NOT_OWNED  # <> is refused
    assert policy.check_from_header([True]) is None
    assert policy.check_from_header([True, True]) is None
    assert policy.check_from_header([True, False]) == policy.FROM_NOT_OWNED
    assert policy.check_from_header([]) == policy.FROM_MISSING
    assert str(policy.SENDER_NOT_OWNED) == "553 5.7.1 Sender address rejected: not owned by user"
    assert str(policy.MUST_STARTTLS) == "530 5.7.0 Must issue a STARTTLS command first"


LOCAL = RecipientFacts(is_hosted_domain=True, mailboxes=("a@example.com",))
FOREIGN = RecipientFacts(is_hosted_domain=False, mailboxes=())
UNKNOWN = RecipientFacts(is_hosted_domain=True, mailboxes=())
FORWARD = RecipientFacts(is_hosted_domain=True, mailboxes=(), forwards=("x@a.test",))
FULL = RecipientFacts(is_hosted_domain=True, mailboxes=("a@example.com",), over_quota=("a@x",))


@pytest.mark.parametrize(
    ("facts", "accepted", "can_queue", "reply"),
    [
        (LOCAL, 0, True, replies.RCPT_OK),
        (LOCAL, 0, False, replies.RCPT_OK),  # local mail needs no queue
        (FOREIGN, 0, True, replies.RCPT_OK),
        (FOREIGN, 0, False, policy.QUEUE_UNAVAILABLE),
        (FORWARD, 0, True, replies.RCPT_OK),
        (FORWARD, 0, False, policy.QUEUE_UNAVAILABLE),
        (UNKNOWN, 0, True, replies.NO_SUCH_USER),
        (FULL, 0, True, replies.OVER_QUOTA),
        (LOCAL, 2, True, replies.TOO_MANY_RECIPIENTS),
        (FOREIGN, 2, True, replies.TOO_MANY_RECIPIENTS),
    ],
)
def test_submission_recipient(
    facts: RecipientFacts, accepted: int, can_queue: bool, reply: replies.Reply
) -> None:
    got = policy.check_submission_recipient(
        facts, accepted_so_far=accepted, max_recipients=2, can_queue=can_queue
    )
    assert got == reply
