"""Pure MX decisions: recipient policy, HELO names, loop count, replies, trace headers."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from mailstack.delivery.trace import TraceInfo, count_received, protocol_name, received_field
from mailstack.smtp import replies
from mailstack.smtp.address import Address, AddressError
from mailstack.smtp.limits import ConnectionLimiter
from mailstack.smtp.policy import (
    RecipientFacts,
    check_declared_size,
    check_helo,
    check_received_count,
    check_recipient,
    is_valid_helo,
)

KNOWN = RecipientFacts(is_hosted_domain=True, mailboxes=("alice@example.com",))
UNKNOWN = RecipientFacts(is_hosted_domain=True, mailboxes=())
FOREIGN = RecipientFacts(is_hosted_domain=False, mailboxes=())
FULL = RecipientFacts(
    is_hosted_domain=True, mailboxes=("alice@example.com",), over_quota=("alice@example.com",)
)
FORWARD_ONLY = RecipientFacts(is_hosted_domain=True, mailboxes=(), forwards=("x@gmail.com",))


@pytest.mark.parametrize(
    ("facts", "kwargs", "expected"),
    [
        pytest.param(KNOWN, {}, "250 2.1.5", id="known"),
        pytest.param(UNKNOWN, {}, "550 5.1.1", id="unknown-user"),
        pytest.param(FOREIGN, {}, "554 5.7.1", id="relay-denied"),
        pytest.param(FOREIGN, {"authenticated": True}, "250 2.1.5", id="relay-authenticated"),
        pytest.param(FULL, {}, "452 4.2.2", id="over-quota"),
        pytest.param(KNOWN, {"accepted_so_far": 3}, "452 4.5.3", id="too-many-recipients"),
        pytest.param(
            KNOWN,
            {"blocklisted_by": "bl.test", "peer_ip": "192.0.2.1"},
            "554 5.7.1 Service unavailable; client [192.0.2.1] blocked using bl.test",
            id="blocklisted",
        ),
        pytest.param(FORWARD_ONLY, {}, "451 4.3.0", id="forward-only-deferred"),
        pytest.param(FORWARD_ONLY, {"can_forward": True}, "250", id="forward-only-queued"),
        pytest.param(
            RecipientFacts(is_hosted_domain=True, mailboxes=("a@x.test",), forwards=("b@y.test",)),
            {},
            "451 4.3.0",
            id="mixed-alias-without-queue-deferred",
        ),
    ],
)
def test_check_recipient(facts: RecipientFacts, kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {"authenticated": False, "accepted_so_far": 0, "max_recipients": 3}
    args.update(kwargs)
    assert str(check_recipient(facts, **args)).startswith(expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("mail.example.net", True),
        ("[192.0.2.1]", True),
        ("[IPv6:2001:db8::1]", True),
        ("localhost", False),
        ("[300.1.1.1]", False),
        ("[IPv6:192.0.2.1]", False),
        ("foo_bar", False),
        ("", False),
    ],
)
def test_helo_names(name: str, valid: bool) -> None:
    assert is_valid_helo(name) is valid
    assert (check_helo(name, reject_invalid=True) is None) is valid
    assert (check_helo(name, reject_invalid=False) is None) is bool(name)


def test_size_and_loop_checks() -> None:
    assert check_declared_size(None, 100) is None
    assert check_declared_size(100, 100) is None
    assert str(check_declared_size(101, 100)).startswith("552 5.3.4")
    assert check_received_count(30, 30) is None
    assert str(check_received_count(31, 30)).startswith("554 5.4.6")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("250-first", "250-2.0.0 first"),
        ("550 5.1.1 No such user", "550 5.1.1 No such user"),
        ("503 Error: send HELO first", "503 5.5.1 Error: send HELO first"),
        ("354 End data", "354 End data"),
        ("221 Bye", "221 2.0.0 Bye"),
    ],
)
def test_enhance_adds_codes_only_where_missing(line: str, expected: str) -> None:
    assert replies.enhance(line) == expected


def test_multiline_reply() -> None:
    assert str(replies.Reply(250, "2.0.0", "a\nb")) == "250-2.0.0 a\r\n250 2.0.0 b"


def test_address_parse() -> None:
    assert Address.parse("Alice@Bücher.DE") == Address("Alice", "xn--bcher-kva.de")
    assert Address.parse("jörg@example.com").is_ascii is False
    for bad in ("nodomain", "@example.com", "a@", "a@exa..mple.com", "x" * 65 + "@a.com"):
        with pytest.raises(AddressError):
            Address.parse(bad)


def test_received_field_single_and_multiple_recipients() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    info = TraceInfo(
        helo="client.example.net",
        peer_ip="192.0.2.7",
        by_host="mx.example.com",
        protocol=protocol_name(esmtp=True, tls=True, authenticated=False),
        queue_id="s1.1",
        tls_version="TLSv1.3",
        tls_cipher="TLS_AES_128_GCM_SHA256",
        tls_bits=128,
        single_recipient="alice@example.com",
    )
    assert received_field(info, when=when) == (
        "Received: from client.example.net ([192.0.2.7])\r\n"
        "\tby mx.example.com (mailstack) with ESMTPS id s1.1\r\n"
        "\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits))\r\n"
        "\tfor <alice@example.com>; Fri, 02 Jan 2026 03:04:05 +0000"
    )
    plain = TraceInfo(
        helo="evil)\r\nX-Injected: 1",
        peer_ip="2001:db8::1",
        by_host="mx",
        protocol="SMTP",
        queue_id="s2.1",
    )
    text = received_field(plain, when=when)
    assert "for <" not in text
    assert "[IPv6:2001:db8::1]" in text
    assert "\r\nX-Injected" not in text


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"esmtp": False, "tls": False, "authenticated": False}, "SMTP"),
        ({"esmtp": True, "tls": False, "authenticated": False}, "ESMTP"),
        ({"esmtp": True, "tls": True, "authenticated": False}, "ESMTPS"),
        ({"esmtp": True, "tls": True, "authenticated": True}, "ESMTPSA"),
        ({"esmtp": True, "tls": False, "authenticated": True}, "ESMTPA"),
        ({"esmtp": True, "tls": True, "authenticated": False, "smtputf8": True}, "UTF8SMTPS"),
    ],
)
def test_protocol_names_rfc3848(kwargs: dict[str, bool], name: str) -> None:
    assert protocol_name(**kwargs) == name


def test_count_received_only_in_header() -> None:
    msg = b"Received: a\r\nreceived: b\r\nSubject: x\r\n\r\nReceived: not a header\r\n"
    assert count_received(msg) == 2


def test_connection_limiter() -> None:
    limiter = ConnectionLimiter(max_total=3, max_per_ip=2)
    assert limiter.admit("a") is None
    assert limiter.admit("a") is None
    assert str(limiter.admit("a")).startswith("421 4.7.0")
    assert limiter.admit("b") is None
    assert str(limiter.admit("c")).startswith("421 4.7.0")
    limiter.release("a")
    assert limiter.admit("c") is None
    assert limiter.total == 3
