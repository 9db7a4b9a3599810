"""A real legacy client and an SMTPUTF8 message: fetchmail (which never says ENABLE
UTF8=ACCEPT) retrieves the message downgraded, every header field ASCII (imap/downgrade.py),
its body as delivered."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.delivery.store import INBOX

from tests.imap.servers import fetchmail_keep
from tests.support.imapserver import (
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)

pytestmark = pytest.mark.external  # fetchmail

INTL = (
    "From: Jörg Müller <jörg@bücher.example>\r\n"
    "To: alice@example.com\r\n"
    "Subject: Grüße aus Köln\r\n"
    "Message-ID: <straße@bücher.example>\r\n"
    "\r\n"
    "Hallo, schöne Grüße\r\n"
).encode()


@pytest.fixture
def deployment(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def server(deployment: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(deployment) as srv:
        yield srv


def test_fetchmail_gets_the_downgraded_form(
    tmp_path: Path, deployment: ImapDeployment, server: ImapServerThread
) -> None:
    deployment.store.deliver([(USER, INBOX)], INTL)
    fetched = fetchmail_keep(tmp_path, deployment.paths.ca_cert, server.imaps_port).replace(
        b"\r\n", b"\n"
    )
    header, _, body = fetched.partition(b"\n\n")
    assert header.isascii(), header
    assert b"\nSubject: =?utf-8?b?R3LDvMOfZSBhdXMgS8O2bG4=?=\n" in header
    assert b"\nDowngraded-Message-ID: =?utf-8?" in header
    assert body.startswith("Hallo, schöne Grüße\n".encode())  # 8BITMIME body as delivered
