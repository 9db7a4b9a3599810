"""Fixtures for the Maildir store tests: a fresh deployment directory with one account."""

from __future__ import annotations

from pathlib import Path

import pytest
from mailstack.delivery.maildir import MaildirStore

from mailstack.base.paths import StatePaths
from tests.support.dovecot import dovecot_server  # noqa: F401 - a fixture, used by name

ALICE = "alice@example.com"
BOB = "bob@example.org"


@pytest.fixture
def paths(tmp_path: Path) -> StatePaths:
    return StatePaths(tmp_path)


@pytest.fixture
def store(paths: StatePaths) -> MaildirStore:
    store = MaildirStore(paths, hostname="mx.example.com")
    store.create_account(ALICE)
    return store
