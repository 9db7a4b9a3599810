"""The role's optional nftables table (mailstack_firewall), run for real in a network namespace
of its own (`unshare -n`): the host's firewall is never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.ansible.support import BIN, HOST_PYTHON, ROLES

pytestmark = pytest.mark.external

PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 0}


def test_firewall_table_accepts_the_listening_ports(tmp_path: Path) -> None:
    nft = shutil.which("nft")
    assert nft is not None, "nft missing: scripts/test installs the Debian package nftables"
    playbook = tmp_path / "firewall.yml"
    playbook.write_text(
        "- hosts: all\n"
        "  gather_facts: false\n"
        "  tasks:\n"
        "    - ansible.builtin.include_role:\n"
        "        name: mailstack\n"
        "        tasks_from: firewall\n"
    )
    variables = {
        "mailstack_firewall": True,
        "mailstack_firewall_path": str(tmp_path / "nftables.d/mailstack.nft"),
        "mailstack_firewall_conf": str(tmp_path / "nftables.conf"),
        "mailstack_ports": PORTS,
    }
    (tmp_path / "vars.json").write_text(json.dumps(variables))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_ROLES_PATH": str(ROLES),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / ".ansible-local"),
        "ANSIBLE_CONFIG": str(tmp_path / "no-ansible.cfg"),
        "PYTHONWARNINGS": "ignore",
    }
    play = (
        f"{BIN / 'ansible-playbook'} -i localhost, -c local {playbook}"
        f" -e @{tmp_path / 'vars.json'} -e ansible_python_interpreter={HOST_PYTHON}"
    )
    # One namespace for the play (its handler loads the table) and the listing after it.
    script = f"{play} && {play} && echo '--- ruleset' && {nft} list table inet mailstack"
    done = subprocess.run(
        ["unshare", "-n", "bash", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    first, second = out.split("PLAY RECAP")[1:3]
    assert "changed=" in first and "changed=0" not in first.splitlines()[1]
    assert "changed=0" in second.splitlines()[1]  # the second run changes nothing
    ruleset = out.split("--- ruleset", 1)[1]
    assert "tcp dport { 25, 143, 465, 587 } accept" in ruleset
    assert (
        f'include "{tmp_path / "nftables.d/mailstack.nft"}"'
        in (tmp_path / "nftables.conf").read_text()
    )
