"""What users install is what the tests test: the wheel's contents, every module importable from
the installed package, every command's --help, demo and check on the install, and the README's
"Try it" line run as written.

scripts/test exports MAILSTACK_WHEEL (the wheel it built and installed); without it the wheel is
built here from the checkout.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import click
import pytest

import mailstack
from mailstack.cli import main as cli_main
from tests.conftest import MAILSTACK, ROOT, run_cli

FOLDERS = {"mailstack": "mailstack", "smtp": "mailstack/smtp", "delivery": "mailstack/delivery"}
FOLDERS |= {"imap": "mailstack/imap", "templates": "mailstack/templates"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("MAILSTACK_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (found,) = out.glob("mailstack-*.whl")
    return found


def tree_files() -> set[str]:
    """Every file of the four source folders and templates/, at its installed path."""
    expected: set[str] = set()
    for folder, installed in FOLDERS.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            expected.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return expected


def test_the_wheel_holds_every_file_of_the_tree(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = tree_files()
    assert len(expected) > 80  # the walk found the tree (a moved folder must not pass vacuously)
    assert "mailstack/checks/runner.py" in expected  # the file the first wheels left out
    assert sorted(expected - names) == []
    # Nothing but mailstack lands in site-packages.
    tops = {n.split("/", 1)[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"mailstack"}


def test_tests_use_the_installed_package() -> None:
    assert "site-packages" in Path(mailstack.__file__).parts
    assert Path(MAILSTACK).is_file()


def test_every_installed_module_imports() -> None:
    package_dir = Path(mailstack.__file__).parent
    modules = []
    for path in sorted(package_dir.rglob("*.py")):
        if path.name == "__main__.py":  # runs the CLI: covered by the --help test
            continue
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    assert len(modules) > 80
    for name in modules:
        importlib.import_module(name)


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            out += command_paths(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_every_command_has_help(tmp_path: Path) -> None:
    paths = command_paths(cli_main)
    assert ("check",) in paths
    assert ("user", "add") in paths
    assert len(paths) > 20
    for path in paths:
        result = subprocess.run(
            [MAILSTACK, *path, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, (path, result.stderr)
        assert "Usage:" in result.stdout, path
        assert "Traceback" not in result.stderr, path


def test_demo_then_check_on_the_install(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    made = run_cli(root, "demo", "--no-serve", "--base-port", "31000")
    assert made.returncode == 0, made.stderr
    # A resolver on a closed loopback port: DNS checks fail fast instead of waiting on a
    # network this machine does not have. The listeners are down (no serve): failures, exit 1.
    checked = run_cli(root, "check", "--json", "--resolver", "127.0.0.1:9", timeout=300)
    assert checked.returncode == 1, checked.stderr
    assert "Traceback" not in checked.stderr
    report = json.loads(checked.stdout)
    groups = {c["group"] for c in report["checks"]}
    assert {"config", "files", "dns", "tls", "smtp", "imap"} <= groups
    assert next(c for c in report["checks"] if c["id"] == "config.valid")["status"] == "pass"


def readme_try_line() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"\*\*Try it\*\*.*?```sh\n(.+?)\n```", text, re.DOTALL)
    assert match is not None, "README.md lost its **Try it** block"
    (line,) = match[1].strip().splitlines()
    return line


def _connect_when_up(port: int, deadline_s: float) -> socket.socket:
    """The banner comes before `serve` has bound every port: retry until it has."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _read_until(proc: subprocess.Popen[str], marker: str, lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return
    raise AssertionError(
        "the command ended before printing " + repr(marker) + ":\n" + "".join(lines)
    )


@pytest.mark.external
@pytest.mark.timeout(300)  # a fresh venv and every dependency installed: ~110 s on a busy machine
def test_the_readme_try_it_line_works_as_written(tmp_path: Path) -> None:
    """The README's first command, run from a copy of the checkout as a new user would (as root,
    on Debian), with a throwaway prefix instead of /opt/mailstack; then the demo it starts is
    logged in to over IMAPS, verified against the demo's CA, with the password it printed."""
    line = readme_try_line()
    assert "/opt/mailstack" in line and line.endswith("mailstack demo")
    prefix = tmp_path / "opt-mailstack"
    command = line.replace("/opt/mailstack", str(prefix))
    for port in (2525, 2543, 2565, 2587, 2593):  # the demo's default ports must be free
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))
    env = {k: v for k, v in os.environ.items() if k not in ("MAILSTACK_DIR", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env["PATH"].split(os.pathsep) if not p.startswith(sys.prefix)
    )
    env["DEBIAN_FRONTEND"] = "noninteractive"
    source = tmp_path / "src"  # a clean copy: the user's checkout, without our venv and caches
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.pyc")
    )
    proc = subprocess.Popen(
        ["bash", "-c", command],
        cwd=source,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    state: Path | None = None
    try:
        _read_until(proc, "Press Ctrl-C to stop.", lines)
        out = "".join(lines)
        where = re.search(r"served from (\S+)", out)
        password = re.search(r"password\s+(\S+)", out)
        assert where is not None and password is not None, out
        state = Path(where[1])
        assert (prefix / "bin" / "mailstack").is_file()
        tls = ssl.create_default_context(cafile=str(state / "tls/ca.pem"))
        # By address, verifying the certificate's name (what a client with an /etc/hosts line
        # for mail.example.test does).
        with (
            _connect_when_up(2593, deadline_s=60) as raw,
            tls.wrap_socket(raw, server_hostname="mail.example.test") as imaps,
        ):
            reader = imaps.makefile("rb")
            assert reader.readline().startswith(b"* OK")
            imaps.sendall(f'a LOGIN demo@example.test "{password[1]}"\r\n'.encode())
            reply = reader.readline()
            while reply.startswith(b"* "):
                reply = reader.readline()
            assert reply.startswith(b"a OK"), reply
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        if state is not None:
            shutil.rmtree(state, ignore_errors=True)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "Traceback" not in "".join(lines) + rest
