"""Auto-reply settings and RFC 3834's rules for answering (mailstack/base/vacation.py)."""

from __future__ import annotations

from email.message import Message
from email.parser import BytesHeaderParser
from pathlib import Path

import pytest

from mailstack.base import vacation
from mailstack.base.vacation import Vacation, should_reply

ME = {"alice@example.com"}


def message(**headers: str) -> Message:
    head = {"From": "bob@example.org", "To": "Alice <alice@example.com>", "Subject": "hi"}
    head.update({k.replace("_", "-"): v for k, v in headers.items()})
    raw = "".join(f"{k}: {v}\r\n" for k, v in head.items() if v) + "\r\n"
    return BytesHeaderParser().parsebytes(raw.encode())


def test_a_person_writing_to_me_gets_an_answer() -> None:
    assert should_reply(message(), "bob@example.org", ME)
    assert should_reply(message(Auto_Submitted="no"), "bob@example.org", ME)
    assert should_reply(message(To="x@example.net", Cc="ALICE@example.com"), "bob@example.org", ME)


@pytest.mark.parametrize(
    ("headers", "mail_from"),
    [
        pytest.param({}, "", id="null-sender"),  # RFC 3834 §2: bounces and auto-replies
        pytest.param({"Auto_Submitted": "auto-replied"}, "bob@example.org", id="auto-replied"),
        pytest.param({"Auto_Submitted": "auto-generated"}, "bob@example.org", id="generated"),
        pytest.param({"List_Id": "<l.example.org>"}, "bob@example.org", id="list-id"),
        pytest.param({"List_Unsubscribe": "<mailto:u@x>"}, "bob@example.org", id="list-unsub"),
        pytest.param({"Precedence": "bulk"}, "bob@example.org", id="bulk"),
        pytest.param({"Precedence": "list"}, "bob@example.org", id="precedence-list"),
        pytest.param({"X_Auto_Response_Suppress": "All"}, "bob@example.org", id="suppress"),
        pytest.param({}, "noreply@example.org", id="noreply"),
        pytest.param({}, "no-reply@example.org", id="no-reply"),
        pytest.param({}, "MAILER-DAEMON@example.org", id="mailer-daemon"),
        pytest.param({}, "list-request@example.org", id="request"),
        pytest.param({}, "owner-list@example.org", id="owner"),
        pytest.param({"To": "list@example.org"}, "bob@example.org", id="not-addressed-to-me"),
    ],
)
def test_lists_robots_and_bounces_get_none(headers: dict[str, str], mail_from: str) -> None:
    assert not should_reply(message(**headers), mail_from, ME)


def test_settings_round_trip_and_default_to_off(tmp_path: Path) -> None:
    assert vacation.load(tmp_path) == Vacation()
    assert not Vacation().enabled
    on = Vacation(enabled=True, subject="Away", body="Back Monday.\n", days=3)
    vacation.save(tmp_path, on)
    assert vacation.load(tmp_path) == on
    assert (tmp_path / vacation.FILE_NAME).stat().st_mode & 0o777 == 0o600
    (tmp_path / vacation.FILE_NAME).write_text("{not json")
    assert vacation.load(tmp_path) == Vacation()  # unreadable: off, never an error


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (Vacation(enabled=True, body=""), "needs a message"),
        (Vacation(days=0), "1 to 365 days"),
        (Vacation(days=366), "1 to 365 days"),
        (Vacation(subject="a\r\nBcc: x@example.org"), "one line"),
        (Vacation(body="x" * 10_001), "at most"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, settings: Vacation, problem: str) -> None:
    assert problem in (vacation.validate(settings) or "")
    with pytest.raises(ValueError, match=problem):
        vacation.save(tmp_path, settings)
    assert not (tmp_path / vacation.FILE_NAME).exists()
