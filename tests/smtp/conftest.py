"""Fixtures for the MX tests: a running receiver over a fresh deployment (tests/support)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.smtpserver import SmtpHarness, running_smtp


@pytest.fixture
async def mx(tmp_path: Path) -> AsyncIterator[SmtpHarness]:
    async with running_smtp(tmp_path / "state") as harness:
        yield harness
