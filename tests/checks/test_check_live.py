"""`mailstack check` on a working deployment: real nsd, real serve, real clients.

Everything passes except what cannot on loopback with a private CA, each asserted with its
reason: tls.trust warns (private CA), dns.caa warns (init writes no CAA record), network checks
skip without --network. Submission (587 STARTTLS, 465 implicit TLS) passes like the rest.
"""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest

from mailstack.base.users import Accounts
from mailstack.checks import GROUPS, OPT_IN_GROUPS
from tests.checks.conftest import Live, check, not_passing, only
from tests.conftest import MAILSTACK, run_cli

pytestmark = pytest.mark.external

SUBMISSION_IDS = ("submission.starttls", "submission.auth", "submission.tls")


def expected_not_passing() -> dict[str, str]:
    expected = {
        "tls.trust": "warn",
        "dns.caa": "warn",
        "network.dnsbl": "skip",
        "network.port25": "skip",
        "web.mta_sts": "skip",  # this deployment serves no https (tests/web check it served)
        "web.autoconfig": "skip",
        "web.acme": "skip",
    }
    return expected


def test_everything_passes_but_the_known_warnings(live: Live) -> None:
    proc, data = check(live.root, "--resolver", live.resolver)
    assert not_passing(data) == expected_not_passing(), data
    assert proc.returncode == 0, proc.stderr
    assert data["ok"] is True
    assert set(data) == {"ok", "checks"}
    ids = [c["id"] for c in data["checks"]]
    everyone = [i for g, group in GROUPS.items() if g not in OPT_IN_GROUPS for i in group]
    assert sorted(set(ids)) == sorted(everyone)
    for c in data["checks"]:
        assert set(c) == {"id", "group", "status", "message", "fix"}
        assert c["group"] == c["id"].split(".")[0]
        assert (c["fix"] is None) == (c["status"] in ("pass", "skip")), c
    trust = only(data, "tls.trust")
    assert "private CA" in trust["message"]
    assert "tls import" in trust["fix"]
    assert "no CAA record" in only(data, "dns.caa")["message"]
    assert only(data, "dns.caa")["fix"].endswith(
        'example.com. 3600 IN CAA 0 issue "letsencrypt.org" (name the CA you use)'
    )
    for id_ in SUBMISSION_IDS:
        assert only(data, id_)["status"] == "pass"
    assert "AUTH before TLS is refused (530)" in only(data, "submission.auth")["message"]
    assert "needs the Internet" in only(data, "network.dnsbl")["message"]
    assert "p=quarantine" in only(data, "dns.dmarc")["message"]
    assert "was deleted" in only(data, "e2e.delivery")["message"]
    assert "554" in only(data, "relay.open")["message"]


def test_the_probe_mailbox_leaves_nothing_behind(live: Live) -> None:
    before_files = sorted(p.relative_to(live.root) for p in (live.root / "mail").rglob("*"))
    _, data = check(live.root, "--resolver", live.resolver, "--only", "imap", "--only", "e2e")
    assert {c["id"]: c["status"] for c in data["checks"]}.get("e2e.delivery") == "pass", data
    accounts = Accounts(live.root / "users.sqlite3")
    try:
        assert accounts.users() == []
    finally:
        accounts.close()
    after_files = sorted(p.relative_to(live.root) for p in (live.root / "mail").rglob("*"))
    assert after_files == before_files == []


def test_strict_fails_on_warnings(live: Live) -> None:
    proc, data = check(live.root, "--resolver", live.resolver, "--only", "tls", "--strict")
    assert proc.returncode == 1
    assert data["ok"] is False
    assert not_passing(data) == {"tls.trust": "warn"}
    proc, data = check(live.root, "--resolver", live.resolver, "--only", "tls")
    assert proc.returncode == 0
    assert data["ok"] is True


def test_plain_table_when_piped(live: Live) -> None:
    proc = run_cli(
        live.root,
        "check",
        "--resolver",
        live.resolver,
        "--only",
        "tls",
        "--only",
        "smtp",
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" not in proc.stdout  # no colour codes when not a terminal
    lines = proc.stdout.splitlines()
    assert "TLS certificate:" in lines
    assert "SMTP (MX):" in lines
    assert any(line.split()[:2] == ["WARN", "tls.trust"] for line in lines)
    assert any(line.strip().startswith("fix: for public use") for line in lines)
    assert any(line.split()[:2] == ["PASS", "smtp.starttls"] for line in lines)
    assert lines[-1] == "OK: 8 pass, 1 warn, 0 fail, 0 skip"


def test_dir_without_deployment_fails_config_and_skips_the_rest(tmp_path: Path) -> None:
    proc, data = check(tmp_path / "nothing")
    assert proc.returncode == 1
    assert only(data, "config.valid")["status"] == "fail"
    assert "mailstack --dir" in only(data, "config.valid")["fix"]
    assert {c["status"] for c in data["checks"] if c["id"] != "config.valid"} == {"skip"}


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["--only", "nonsense"], id="unknown-group"),
        pytest.param(["--resolver", "not-an-ip"], id="bad-resolver"),
        pytest.param(["--bogus"], id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2(live: Live, args: list[str]) -> None:
    proc = run_cli(live.root, "check", *args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def run_on_terminal(root: Path, *args: str) -> tuple[int, str]:
    """Run the CLI with a pseudo-terminal as stdout, as an admin at a shell would."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
    env.update(COLUMNS="160", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [MAILSTACK, "--dir", str(root), *args],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_rich_table_with_symbols_and_colours_on_a_terminal(live: Live) -> None:
    code, screen = run_on_terminal(
        live.root, "check", "--resolver", live.resolver, "--only", "tls", "--only", "relay"
    )
    assert code == 0
    assert "\x1b[" in screen  # colours
    plain = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    assert "TLS certificate" in plain
    assert "Open relay" in plain
    assert re.search(r"│ ✔ │ tls\.chain", plain)
    assert re.search(r"│ ! │ tls\.trust", plain)
    assert "OK: 5 pass, 1 warn, 0 fail, 0 skip" in plain
