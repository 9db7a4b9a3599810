"""`mailstack_source` naming a checkout, not a wheel: the role builds the wheel on the controller
(with fixed timestamps, so an unchanged checkout gives the same file) and installs it; a second
run changes nothing."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.ansible.conftest import PASSWORDS, variables_for
from tests.ansible.support import SERVICES, free_ports, open_path_to, run_playbook
from tests.conftest import ROOT

# Two playbook runs, a wheel built from the checkout and a venv installed: like test_playbook.py,
# far beyond the suite's 120 s hang guard on a shared 2-core machine.
pytestmark = [pytest.mark.external, pytest.mark.timeout(900)]


def test_a_checkout_as_source_installs_and_a_second_run_changes_nothing(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("from-checkout")
    open_path_to(work)
    checkout = work / "checkout"  # what an admin has: the project's files, no build output
    shutil.copytree(
        ROOT, checkout, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.pyc")
    )
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    variables = variables_for(work, str(checkout), PASSWORDS, ports)
    for key in ("mailstack_tls_cert", "mailstack_tls_key"):  # no certificate to import here
        variables.pop(key)
    first = run_playbook(work, variables, name="checkout-first")
    assert (first.returncode, first.failed) == (0, 0), first.explain()
    version = subprocess.run(
        [str(work / "venv/bin/mailstack"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert version.stdout.startswith("mailstack, version ")
    users = subprocess.run(
        [str(work / "venv/bin/mailstack"), "--dir", str(work / "state"), "user", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "alice@example.com" in users.stdout and "bob@example.com" in users.stdout
    again = run_playbook(work, variables, name="checkout-second")
    assert (again.returncode, again.failed) == (0, 0), again.explain()
    assert (again.changed, again.changed_tasks) == (0, []), again.explain()
