"""The sans-IO cores import no I/O machinery and open no files (STYLE.md §1).

Checked from source with `ast`, following imports into our own packages, so a pure module
cannot become impure through a helper it imports either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PURE = [
    "imap.framing",
    "imap.parser",
    "imap.parser_reader",
    "imap.commands",
    "imap.response",
    "imap.utf7",
    "imap.sequence",
    "imap.protocol",
    "imap.fetch",
    "imap.search",
    "imap.mime",
    "smtp.auth",
    "smtp.framing",
    "smtp.replies",
    "smtp.dmarc",
    "smtp.authresults",
    "delivery.mx",
    "delivery.dsn",
    "smtp.headers",
    "mailstack.throttle",
    "mailstack.dnsrecords",
]
FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "subprocess",
    "threading",
    "os",
    "pathlib",
    "shutil",
    "io",
    "tempfile",
    "sqlite3",
    "mailbox",
}
OUR_PACKAGES = ("imap", "delivery", "mailstack", "smtp")
FORBIDDEN_CALLS = {"open", "exec", "eval", "__import__"}


def _source(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    if path.exists():
        return path
    init = ROOT.joinpath(*module.split("."), "__init__.py")
    return init if init.exists() else None


def _imports(tree: ast.AST, module: str) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def _violations(module: str, seen: set[str]) -> list[str]:
    if module in seen:
        return []
    seen.add(module)
    path = _source(module)
    if path is None:
        return []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    for name in sorted(_imports(tree, module)):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{module} imports {name}")
        elif top in OUR_PACKAGES and _source(name) is not None:
            problems.extend(_violations(name, seen))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in FORBIDDEN_CALLS
        ):
            problems.append(f"{module} calls {node.func.id}()")
    return problems


@pytest.mark.parametrize("module", PURE)
def test_core_is_pure(module: str) -> None:
    if _source(module) is None:
        pytest.skip(f"{module} does not exist yet")
    assert _violations(module, set()) == []


def test_checker_catches_an_impure_import(tmp_path: Path) -> None:
    tree = ast.parse("import asyncio\nfrom os import path\n")
    assert {"asyncio", "os", "os.path"} <= _imports(tree, "x")
