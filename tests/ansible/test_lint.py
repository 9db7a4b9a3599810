"""The role as ansible-lint's production profile and yamllint see it, and its config template
as mailstack's own loader sees it (the role's template must load through load_config)."""

from __future__ import annotations

import os
import subprocess
import tomllib
from pathlib import Path

import jinja2
import pytest

from mailstack.base.config import load_config
from tests.ansible.support import ANSIBLE_DIR, BIN

TEMPLATE = ANSIBLE_DIR / "roles/mailstack/templates/mailstack.toml.j2"


def _run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [str(BIN / tool), *args],
        cwd=ANSIBLE_DIR,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


@pytest.mark.timeout(600)
def test_ansible_lint_production_profile_passes() -> None:
    done = _run("ansible-lint", "--profile", "production", "--offline")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Profile 'production' was required, and it passed" in done.stdout + done.stderr


def test_yamllint_passes() -> None:
    done = _run("yamllint", "--strict", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def _render(**variables: object) -> str:
    # Ansible's own settings for templates: trim_blocks on, undefined variables are errors.
    env = jinja2.Environment(  # noqa: S701 - TOML, not HTML
        trim_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    base: dict[str, object] = {
        "mailstack_hostname": "mail.example.com",
        "mailstack_domain": "example.com",
        "mailstack_ipv4": "203.0.113.5",
        "mailstack_ipv6": "2001:db8::25",
        "mailstack_listen_host": "0.0.0.0",
        "mailstack_ports": {
            "smtp": 25,
            "submission": 587,
            "submissions": 465,
            "imap": 143,
            "imaps": 993,
        },
        "mailstack_dkim_selector": "mailstack",
        "mailstack_config": {},
    }
    return env.from_string(TEMPLATE.read_text()).render({**base, **variables})


def test_config_template_loads_with_merged_config(tmp_path: Path) -> None:
    path = tmp_path / "mailstack.toml"
    path.write_text(
        _render(
            mailstack_listen_host="::",
            mailstack_config={
                "server": {"hostname": "mx.example.com"},  # a key of a section the role writes
                "outbound": {"relay": "relay.example.net:587", "mx_port": 2525},
                "imap": {"allow_plaintext_auth": True},
            },
        )
    )
    cfg = load_config(path)
    assert cfg.server.hostname == "mx.example.com"
    assert list(cfg.server.domains) == ["example.com"]
    assert cfg.listeners("imaps") == [("::", 993)]
    assert cfg.outbound.relay == "relay.example.net:587"
    assert cfg.outbound.mx_port == 2525
    assert cfg.imap.allow_plaintext_auth is True
    assert cfg.dkim.selector == "mailstack"


def test_config_template_writes_any_value_as_toml() -> None:
    odd = {"a b": 'say "hi" \\ <&>', "n": [1, True, "s"], "t": {"k.v": 1, "e": "é"}, "f": False}
    parsed = tomllib.loads(_render(mailstack_config={"extra": odd}))
    assert parsed["extra"] == odd


def test_config_template_with_a_bad_value_fails_validation(tmp_path: Path) -> None:
    # What the role's `validate:` relies on: a wrong type is refused, naming the key.
    path = tmp_path / "mailstack.toml"
    path.write_text(_render(mailstack_config={"smtp": {"max_message_size": "huge"}}))
    done = subprocess.run(
        [str(BIN / "mailstack"), "config", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert "smtp.max_message_size" in done.stderr


def test_example_vault_password_decrypts_as_documented(tmp_path: Path) -> None:
    # group_vars/all.example.yml says which vault password its example was encrypted with.
    (tmp_path / "vault-password").write_text("example-vault-password\n")
    done = subprocess.run(
        [str(BIN / "ansible"), "-i", "localhost,", "-c", "local", "localhost", "-m", "debug",
         "-a", "var=mailstack_password_you", "-e", f"@{ANSIBLE_DIR}/group_vars/all.example.yml",
         "--vault-password-file", str(tmp_path / "vault-password")],
        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path), "PYTHONWARNINGS": "ignore"},
        timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"mailstack_password_you": "correct horse battery staple"' in done.stdout
