"""Client autoconfiguration (filled in by the next step)."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    del app
