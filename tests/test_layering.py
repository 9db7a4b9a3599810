"""Imports flow one way, and the sans-IO cores import no I/O machinery (STYLE.md §1).

Floors, top to bottom (the folders show them):
  4  mailstack.*  (cli, app, checks, workers, init, ...: everything not below)
  3  mailstack.smtp, mailstack.imap   protocols; neither imports the other
  2  mailstack.delivery                the store, local delivery, the queue
  1  mailstack.base                    config, paths, errors, accounts, throttle, fsutil, logs
A module may import its own package and any floor below its own, never one above, never a
sideways protocol. Checked from source with `ast` (function-local imports included), over every
module of the four source folders; the folder -> package mapping is setup.py's.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Package name -> folder in the checkout (as setup.py maps them into the wheel).
FOLDERS = {
    "mailstack.smtp": ROOT / "smtp",
    "mailstack.delivery": ROOT / "delivery",
    "mailstack.imap": ROOT / "imap",
    "mailstack": ROOT / "mailstack",
}
FLOORS = {
    "mailstack.base": 1,
    "mailstack.delivery": 2,
    "mailstack.smtp": 3,
    "mailstack.imap": 3,
}
TOP_FLOOR = 4

PURE = [
    "mailstack.imap.framing",
    "mailstack.imap.parser",
    "mailstack.imap.parser_reader",
    "mailstack.imap.parser_condstore",
    "mailstack.imap.condstore",
    "mailstack.imap.commands",
    "mailstack.imap.response",
    "mailstack.imap.utf7",
    "mailstack.imap.sequence",
    "mailstack.imap.protocol",
    "mailstack.imap.fetch",
    "mailstack.imap.envelope",
    "mailstack.imap.values",
    "mailstack.imap.search",
    "mailstack.imap.sort",
    "mailstack.imap.thread",
    "mailstack.imap.parser_sort",
    "mailstack.imap.parser_append",
    "mailstack.imap.parser_search",
    "mailstack.imap.enabled",
    "mailstack.imap.downgrade",
    "mailstack.imap.mime",
    "mailstack.imap.compress",
    "mailstack.imap.binary",
    "mailstack.smtp.auth",
    "mailstack.smtp.framing",
    "mailstack.smtp.arguments",
    "mailstack.smtp.replies",
    "mailstack.smtp.dmarc",
    "mailstack.smtp.authresults",
    "mailstack.delivery.mx",
    "mailstack.delivery.dsn",
    "mailstack.delivery.queue_state",
    "mailstack.delivery.srs",
    "mailstack.delivery.trace",
    "mailstack.delivery.mtasts",
    "mailstack.base.throttle",
    "mailstack.base.flags",
    "mailstack.base.connections",
    "mailstack.base.sasl",
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
FORBIDDEN_CALLS = {"open", "exec", "eval", "__import__"}


def all_modules() -> dict[str, Path]:
    """Every module of the package, by its installed name."""
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            found.setdefault(name, path)  # mailstack/ holds no smtp/ etc.: no clash
    return found


MODULES = all_modules()


def package_of(module: str) -> str:
    for package in sorted(FLOORS, key=len, reverse=True):
        if module == package or module.startswith(package + "."):
            return package
    return "mailstack"


def floor_of(module: str) -> int:
    return FLOORS.get(package_of(module), TOP_FLOOR)


def _imports(tree: ast.AST, module: str, *, is_package: bool = False) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = module if is_package else module.rsplit(".", 1)[0]
                if node.level > 1:
                    base = base.rsplit(".", node.level - 1)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)
    return out


def our_imports(module: str) -> set[str]:
    """The modules of ours that `module` imports (names that are not modules are dropped)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = _imports(tree, module, is_package=path.name == "__init__.py")
    return {n for n in names if n in MODULES and n != module}


def direction_violations(module: str, imported: set[str]) -> list[str]:
    problems = []
    mine = package_of(module)
    for target in sorted(imported):
        theirs = package_of(target)
        if theirs == mine:
            continue
        if floor_of(target) > floor_of(module):
            problems.append(f"{module} (floor {floor_of(module)}) imports {target} (up a floor)")
        elif floor_of(target) == floor_of(module):
            problems.append(f"{module} imports {target} (sideways: {mine} -> {theirs})")
    return problems


def test_every_source_folder_is_read() -> None:
    # A rename must not silently drop modules from the check.
    for package in ("mailstack.base", "mailstack.delivery", "mailstack.smtp", "mailstack.imap"):
        assert sum(1 for m in MODULES if package_of(m) == package) >= 5, package
    assert len(MODULES) >= 80


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    assert direction_violations(module, our_imports(module)) == []


def test_direction_check_catches_up_and_sideways_imports() -> None:
    assert direction_violations("mailstack.delivery.local", {"mailstack.smtp.replies"}) == [
        "mailstack.delivery.local (floor 2) imports mailstack.smtp.replies (up a floor)"
    ]
    assert direction_violations("mailstack.imap.session", {"mailstack.smtp.replies"}) == [
        "mailstack.imap.session imports mailstack.smtp.replies (sideways: mailstack.imap ->"
        " mailstack.smtp)"
    ]
    assert direction_violations("mailstack.base.users", {"mailstack.app"}) != []
    assert direction_violations("mailstack.app", {"mailstack.smtp.server"}) == []
    assert direction_violations("mailstack.smtp.server", {"mailstack.delivery.store"}) == []


def _violations(module: str, seen: set[str]) -> list[str]:
    if module in seen:
        return []
    seen.add(module)
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    for name in sorted(_imports(tree, module, is_package=path.name == "__init__.py")):
        top = name.split(".")[0]
        if top in FORBIDDEN:
            problems.append(f"{module} imports {name}")
        elif name in MODULES:
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
    assert module in MODULES, f"{module} is listed as a pure core but does not exist"
    assert _violations(module, set()) == []


def test_checker_catches_an_impure_import() -> None:
    tree = ast.parse("import asyncio\nfrom os import path\n")
    assert {"asyncio", "os", "os.path"} <= _imports(tree, "x")
