"""`mailstack init` on a terminal asks for what is missing (a real pty, as an admin sees it)."""

from __future__ import annotations

from pathlib import Path

import pexpect

from tests.conftest import MAILSTACK


def test_init_prompts_for_missing_values(tmp_path: Path) -> None:
    root = tmp_path / "state"
    child = pexpect.spawn(
        MAILSTACK,
        ["--dir", str(root), "init"],
        encoding="utf-8",
        timeout=60,
    )
    child.expect_exact("Mail domain (e.g. example.com):")
    child.sendline("example.net")
    child.expect_exact("Server hostname [mail.example.net]:")
    child.sendline("")
    child.expect_exact("Public IPv4 address:")
    child.sendline("192.0.2.10")
    child.expect_exact("Created the mailstack deployment for example.net")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    text = (root / "mailstack.toml").read_text()
    assert 'hostname = "mail.example.net"' in text and 'ipv4 = "192.0.2.10"' in text


def test_a_bad_answer_is_asked_again(tmp_path: Path) -> None:
    root = tmp_path / "state"
    child = pexpect.spawn(MAILSTACK, ["--dir", str(root), "init"], encoding="utf-8", timeout=60)
    child.expect_exact("Mail domain (e.g. example.com):")
    child.sendline("not a domain")
    child.expect_exact("'not a domain' is not a valid domain name; try again")
    child.expect_exact("Mail domain (e.g. example.com):")
    child.sendline("example.net")
    child.expect_exact("Server hostname [mail.example.net]:")
    child.sendline("198.51.100.7")
    child.expect_exact("is an IP address; give the server's name")
    child.expect_exact("Server hostname [mail.example.net]:")
    child.sendline("")
    child.expect_exact("Public IPv4 address:")
    child.sendline("300.1.1.1")
    child.expect_exact("'300.1.1.1' is not an IPv4 address; try again")
    child.expect_exact("Public IPv4 address:")
    child.sendline("198.51.100.7")
    child.expect_exact("Created the mailstack deployment for example.net")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
