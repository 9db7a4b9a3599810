"""Fixtures shared by IMAP test modules (the helpers behind them: tests/imap/servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imap.servers import Endpoint, close_opened, dovecot_and_ours
from tests.support.dovecot import DovecotFactory, dovecot_server  # noqa: F401 - a fixture
from tests.support.imapserver import ImapDeployment, ImapServerThread


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    close_opened()


@pytest.fixture
def server(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    """A server on the module's `dep` that rescans IDLE only every 60 s: what a waiting client
    receives came from the change itself."""
    started = ImapServerThread(dep, rescan_s=60.0).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def endpoints(
    tmp_path: Path,
    dovecot_server: DovecotFactory,  # noqa: F811 - the imported fixture
) -> Iterator[tuple[Endpoint, Endpoint]]:
    with dovecot_and_ours(tmp_path, dovecot_server) as pair:
        yield pair
