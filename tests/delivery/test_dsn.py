"""delivery.dsn: RFC 3464 fields, parsed back with the email package."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.delivery.dsn import DsnRecipient, build_dsn, needs_dsn

ORIGINAL = (
    b"From: alice@example.com\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
    b"Message-ID: <m1@example.com>\r\n\r\nsecret body\r\n"
)
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def parse(raw: bytes) -> Any:  # email's Message typing does not follow get_payload()
    return email.message_from_bytes(raw, policy=email.policy.compat32)


def build(recipients: list[DsnRecipient]) -> bytes:
    return build_dsn(
        reporting_mta="mail.example.com",
        from_address="MAILER-DAEMON@example.com",
        to="alice@example.com",
        original=ORIGINAL,
        recipients=recipients,
        arrival=T0,
        now=T0,
    )


def test_failed_dsn_fields() -> None:
    msg = parse(
        build(
            [
                DsnRecipient(
                    "bob@remote.test", "failed", "550 5.1.1 no such user", "mx.remote.test"
                ),
                DsnRecipient("carol@remote.test", "failed", "554 transaction failed"),
            ]
        )
    )
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert msg["To"] == "<alice@example.com>"
    human, status, headers = msg.get_payload()
    assert human.get_content_type() == "text/plain"
    assert "bob@remote.test" in human.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    per_message, bob, carol = status.get_payload()
    assert per_message["Reporting-MTA"] == "dns; mail.example.com"
    assert bob["Final-Recipient"] == "rfc822; bob@remote.test"
    assert bob["Action"] == "failed"
    assert bob["Status"] == "5.1.1"
    assert bob["Remote-MTA"] == "dns; mx.remote.test"
    assert bob["Diagnostic-Code"] == "smtp; 550 5.1.1 no such user"
    assert carol["Status"] == "5.0.0"
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: hello" in headers.get_payload()
    assert b"secret body" not in build([DsnRecipient("b@r.test", "failed", "550 x")])


def test_delayed_dsn() -> None:
    msg = parse(build([DsnRecipient("bob@remote.test", "delayed", "451 4.7.1 greylisted")]))
    block = msg.get_payload()[1].get_payload()[1]
    assert (block["Action"], block["Status"]) == ("delayed", "4.7.1")
    assert msg["Subject"].startswith("Delayed")


@pytest.mark.parametrize(("sender", "expected"), [("", False), ("<>", False), ("a@b.test", True)])
def test_never_a_dsn_for_the_null_sender(sender: str, expected: bool) -> None:
    assert needs_dsn(sender) is expected


def test_needs_a_recipient() -> None:
    with pytest.raises(ValueError, match="at least one"):
        build([])


@given(st.text(max_size=200))
def test_reply_text_cannot_inject_fields(reply: str) -> None:
    msg = parse(build([DsnRecipient("bob@remote.test", "failed", "550 " + reply)]))
    blocks = msg.get_payload()[1].get_payload()
    assert len(blocks) == 2
    assert blocks[1]["Final-Recipient"] == "rfc822; bob@remote.test"
