"""The CLI pieces the Ansible role stands on: `user passwd --check` and `systemd-unit`.

The role changes a password only when `passwd --check` says it differs, so `--check` must answer
right and write nothing; the unit it installs is `systemd-unit`'s, verified by systemd itself.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Cli


def _hash(root: Path, address: str) -> str:
    with sqlite3.connect(root / "users.sqlite3") as db:
        row = db.execute("SELECT password_hash FROM users WHERE address=?", (address,)).fetchone()
    return str(row[0])


def test_passwd_check_answers_and_writes_nothing(cli: Cli, deployment_dir: Path) -> None:
    assert (
        cli("user", "add", "bob@example.com", "--password-stdin", input="s3cret\n").returncode == 0
    )
    before = _hash(deployment_dir, "bob@example.com")

    same = cli("user", "passwd", "Bob@Example.com", "--check", "--password-stdin", input="s3cret\n")
    assert (same.returncode, same.stdout.strip()) == (0, "the password of bob@example.com matches")
    other = cli("user", "passwd", "bob@example.com", "--check", "--password-stdin", input="s3cre\n")
    assert other.returncode == 1
    assert other.stderr.strip() == "error: the password of bob@example.com differs"

    assert _hash(deployment_dir, "bob@example.com") == before  # neither answer changed it
    assert (
        cli("user", "passwd", "bob@example.com", "--password-stdin", input="n3w\n").returncode == 0
    )
    assert cli("user", "passwd", "bob@example.com", "--check", "--password-stdin",
               input="n3w\n").returncode == 0  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--check",), 2, "--check compares with a password read from stdin"),
        (("--check", "--password-stdin"), 2, "no password on standard input"),
    ],
)
def test_passwd_check_usage(
    cli: Cli, deployment_dir: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    assert (
        cli("user", "add", "bob@example.com", "--password-stdin", input="s3cret\n").returncode == 0
    )
    result = cli("user", "passwd", "bob@example.com", *args, input="")
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_passwd_check_unknown_user(cli: Cli, deployment_dir: Path) -> None:
    result = cli("user", "passwd", "nobody@example.com", "--check", "--password-stdin", input="x\n")
    assert result.returncode == 1
    assert "no such user: nobody@example.com" in result.stderr


def test_systemd_unit_is_hardened_and_unprivileged(cli: Cli, deployment_dir: Path) -> None:
    result = cli("systemd-unit")
    assert result.returncode == 0, result.stderr
    lines = set(result.stdout.splitlines())
    for line in (
        "User=mailstack",
        "Group=mailstack",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths={deployment_dir}",
        "PrivateTmp=yes",
        "Restart=on-failure",
    ):
        assert line in lines, line
    assert cli("systemd-unit", "--user", "mail", "--group", "adm").stdout.count("=mail\n") == 1


def test_systemd_unit_warns_when_its_user_does_not_exist(cli: Cli, deployment_dir: Path) -> None:
    result = cli("systemd-unit", "--user", "no-such-mailstack-user")
    assert result.returncode == 0  # the unit may be written before the user is made
    assert "User=no-such-mailstack-user" in result.stdout
    assert result.stderr.startswith("warning: user no-such-mailstack-user does not exist yet")
    assert "mailstack init --system-user" in result.stderr


def test_systemd_unit_refuses_root(cli: Cli, deployment_dir: Path) -> None:
    result = cli("systemd-unit", "--user", "root")
    assert result.returncode == 2
    assert "serve runs unprivileged" in result.stderr


def test_systemd_analyze_verifies_the_unit(cli: Cli, deployment_dir: Path, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed"
    unit = tmp_path / "mailstack.service"
    unit.write_text(cli("systemd-unit").stdout)
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # verify only warns (exit 0) on an unknown directive: any output is a finding.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
