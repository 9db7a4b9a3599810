from __future__ import annotations

import json
import logging

import pytest

from mailstack.base.logs import JsonFormatter, TextFormatter, connection_logger, redact


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("a1 LOGIN alice secret", "a1 LOGIN ***"),
        ("a2 AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==", "a2 AUTHENTICATE ***"),
        ("AUTH PLAIN AGFsaWNlAHNlY3JldA==", "AUTH ***"),
        ("a3 SELECT INBOX", "a3 SELECT INBOX"),
    ],
)
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


def test_connection_lines_carry_id_and_peer(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    connection_logger("mailstack.smtp.server", "s42", "192.0.2.1").info("accepted %d bytes", 10)
    (record,) = caplog.records
    text = TextFormatter().format(record)
    assert text.endswith("INFO smtp [s42 192.0.2.1] accepted 10 bytes")
    data = json.loads(JsonFormatter().format(record))
    assert data["conn"] == "s42" and data["peer"] == "192.0.2.1"
    assert data["component"] == "smtp" and data["message"] == "accepted 10 bytes"
