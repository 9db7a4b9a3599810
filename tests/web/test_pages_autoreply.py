"""The auto-reply set on the account page, answered by the real serve (delivery/autoreply.py):
once per sender, from <>, marked Auto-Submitted, never to lists; replies to our own users are
delivered by the queue, so we read them back from the Maildir."""

from __future__ import annotations

import mailbox
import smtplib
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.web.stack import ADMIN, USER, USER_PASSWORD, WebStack, make_deployment
from tests.web.test_pages_http import Browser

BOB = "bob@example.com"


@pytest.fixture
def stack(web_dir: Path) -> Iterator[WebStack]:
    make_deployment(web_dir)
    done = run_cli(web_dir, "user", "add", BOB, "--password-stdin", input="bob password 1\n")
    assert done.returncode == 0, done.stderr
    with WebStack(web_dir) as running:
        yield running


def send(stack: WebStack, sender: str, msgid: str, *extra: str) -> None:
    head = [f"From: {sender}", f"To: Alice <{USER}>", "Subject: lunch?", f"Message-ID: {msgid}"]
    body = "\r\n".join([*head, *extra, "", "Are you free?", ""]).encode()
    with smtplib.SMTP("127.0.0.1", stack.port("smtp"), timeout=30) as smtp:
        smtp.sendmail(sender, [USER], body)


def inbox_of(stack: WebStack, address: str) -> list[Message]:
    local, _, domain = address.partition("@")
    return list(mailbox.Maildir(stack.root / "mail" / domain / local, create=False).values())


def wait_for_mail(stack: WebStack, address: str, timeout_s: float = 30) -> Message:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:  # the queue delivers it: no event to wait on from here
        if messages := inbox_of(stack, address):
            return messages[0]
        time.sleep(0.2)
    raise AssertionError(f"no mail for {address}:\n" + "".join(stack.serve.log))


async def test_an_auto_reply_answers_each_sender_once_and_no_list(stack: WebStack) -> None:
    import asyncio

    async with Browser(stack) as b:
        await b.log_in(USER, USER_PASSWORD)
        token = await b.csrf("/account")
        await b.post(
            "/account/vacation",
            csrf=token,
            enabled="on",
            subject="Away this week",
            body="I am back on Monday.",
            days="7",
        )
    await asyncio.to_thread(send, stack, ADMIN, "<first@example.com>")
    reply = await asyncio.to_thread(wait_for_mail, stack, ADMIN)
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Return-Path"] == "<>"
    assert reply["From"] == USER
    assert reply["Subject"] == "Away this week"
    assert reply["In-Reply-To"] == "<first@example.com>"
    assert reply.get_payload(decode=True).decode().strip() == "I am back on Monday."
    assert "DKIM-Signature" in reply  # sent through the queue like any mail of ours

    # Again from the same sender, and a list message from another: neither is answered.
    await asyncio.to_thread(send, stack, ADMIN, "<second@example.com>")
    await asyncio.to_thread(send, stack, BOB, "<list@example.com>", "List-Id: <team.example.com>")
    # Then one that is answered: by the time its answer is queued, the others were decided.
    await asyncio.to_thread(send, stack, BOB, "<third@example.com>")
    await asyncio.to_thread(wait_for_mail, stack, BOB)
    assert [m["In-Reply-To"] for m in inbox_of(stack, BOB)] == ["<third@example.com>"]
    assert len(inbox_of(stack, ADMIN)) == 1
    assert len(inbox_of(stack, USER)) == 4  # every message itself was delivered


async def test_mail_submitted_by_our_own_user_is_answered_too(stack: WebStack) -> None:
    import asyncio

    from tests.web.stack import ADMIN_PASSWORD

    async with Browser(stack) as b:
        await b.log_in(USER, USER_PASSWORD)
        token = await b.csrf("/account")
        await b.post(
            "/account/vacation",
            csrf=token,
            enabled="on",
            subject="Away",
            body="Back soon.",
            days="1",
        )

    def submit() -> None:
        port = stack.port("submissions")
        with smtplib.SMTP_SSL("127.0.0.1", port, context=stack.client_tls(), timeout=30) as smtp:
            smtp.login(ADMIN, ADMIN_PASSWORD)
            smtp.sendmail(
                ADMIN,
                [USER],
                f"From: {ADMIN}\r\nTo: {USER}\r\nSubject: hello\r\n"
                "Message-ID: <sub@example.com>\r\n\r\nhi\r\n".encode(),
            )

    await asyncio.to_thread(submit)
    reply = await asyncio.to_thread(wait_for_mail, stack, ADMIN)
    assert reply["In-Reply-To"] == "<sub@example.com>"
    assert reply["Subject"] == "Away"
