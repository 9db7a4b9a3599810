"""The one jinja2 environment: templates lay out what Python computed (STYLE.md §1)."""

from __future__ import annotations

from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

_ENV = Environment(
    loader=PackageLoader("mailstack.templates", "."),
    undefined=StrictUndefined,
    autoescape=False,  # noqa: S701 - we render zone files, TOML and unit files, never HTML
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(name: str, **context: Any) -> str:
    return _ENV.get_template(name).render(**context)
