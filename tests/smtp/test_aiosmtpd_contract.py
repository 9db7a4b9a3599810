"""The aiosmtpd private names smtp/aiosmtpd_adapter.py relies on are still there, in the shape we
use them: an aiosmtpd upgrade that renames one fails here, naming it, not in production."""

from __future__ import annotations

import asyncio
from typing import Any

import aiosmtpd
from aiosmtpd.smtp import SMTP
from mailstack.smtp.aiosmtpd_adapter import CONTRACT, SmtpAdapter, contract_problems

VERSION = ".".join(aiosmtpd.__version__.split(".")[:2])


def test_installed_aiosmtpd_keeps_every_private_name_we_use() -> None:
    assert contract_problems(SMTP) == []


def test_a_renamed_method_is_reported_by_name() -> None:
    class Renamed(SMTP):  # what an upgrade that renames _getaddr would look like
        _getaddr = None

    def _reset_timeout(self: Any, seconds: float) -> None: ...  # a renamed parameter

    Renamed._reset_timeout = _reset_timeout  # type: ignore[method-assign]
    problems = contract_problems(Renamed)
    assert f"aiosmtpd {VERSION} renamed _getaddr" in "\n".join(problems)
    assert f"aiosmtpd {VERSION}: _reset_timeout" in "\n".join(problems)


def test_a_sync_handle_client_is_reported() -> None:
    class Changed(SMTP):
        def _handle_client(self) -> None: ...  # type: ignore[override]

    problems = contract_problems(Changed)
    assert any("_handle_client changed between sync and async" in p for p in problems)


async def test_a_connected_session_has_every_attribute_we_read() -> None:
    seen: list[SmtpAdapter] = []

    class Probe(SmtpAdapter):
        async def serve(self) -> None:
            seen.append(self)
            await self.push("220 probe")

    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Probe(object(), loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        assert await reader.readline() == b"220 probe\r\n"
        session = seen[0]
        assert contract_problems(SMTP, session) == []
        # And the check does look at the instance: one attribute gone is reported.
        methods = session._smtp_methods
        del session._smtp_methods
        assert contract_problems(SMTP, session) == [
            f"aiosmtpd {VERSION} renamed _smtp_methods (needed: "
            + next(e.why for e in CONTRACT if e.name == "_smtp_methods")
            + ")"
        ]
        session._smtp_methods = methods
    finally:
        writer.close()
        if seen and seen[0].transport is not None:
            seen[0].transport.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
