"""The role deployed once for the whole package: tests/ansible/support.py runs the playbook."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.ansible.support import SERVICES, PlaybookRun, free_ports, open_path_to, run_playbook

PASSWORDS = {"alice@example.com": "alice-first-pw", "bob@example.com": "bob-first-pw"}


@dataclass
class Deployed:
    work: Path
    variables: dict[str, object]
    first: PlaybookRun

    @property
    def venv(self) -> Path:
        return self.work / "venv"

    @property
    def state(self) -> Path:
        return self.work / "state"

    @property
    def mailstack(self) -> str:
        return str(self.venv / "bin/mailstack")

    def port(self, service: str) -> int:
        ports = self.variables["mailstack_ports"]
        assert isinstance(ports, dict)
        return int(ports[service])


def variables_for(
    work: Path, wheel: str, passwords: dict[str, str], ports: dict[str, int]
) -> dict[str, object]:
    return {
        "mailstack_domain": "example.com",
        "mailstack_hostname": "mail.example.com",
        "mailstack_ipv4": "127.0.0.1",
        "mailstack_source": wheel,
        "mailstack_venv": str(work / "venv"),
        "mailstack_state_dir": str(work / "state"),
        "mailstack_unit_path": str(work / "mailstack.service"),
        "mailstack_listen_host": "127.0.0.1",
        "mailstack_ports": ports,
        "mailstack_apt_update_cache": False,  # python3-venv is here; no list refresh needed
        "mailstack_manage_service": False,
        "mailstack_check": False,
        "mailstack_config": {"smtp": {"max_message_size": 10485760}},
        "mailstack_users": [
            {"address": "alice@example.com", "password": passwords["alice@example.com"]},
            {"address": "bob@example.com", "password": passwords["bob@example.com"], "quota": "1G"},
        ],
        "mailstack_aliases": [
            {"address": "team@example.com", "targets": ["alice@example.com", "Bob@example.com"]}
        ],
        # a certificate "from a public CA" (trustme's), imported with `mailstack tls import`
        "mailstack_tls_cert": str(work / "public/fullchain.pem"),
        "mailstack_tls_key": str(work / "public/privkey.pem"),
    }


def _public_certificate(work: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    (work / "public").mkdir()
    leaf.cert_chain_pems[0].write_to_path(str(work / "public/fullchain.pem"))
    for blob in leaf.cert_chain_pems[1:]:
        blob.write_to_path(str(work / "public/fullchain.pem"), append=True)
    leaf.private_key_pem.write_to_path(str(work / "public/privkey.pem"))
    ca.cert_pem.write_to_path(str(work / "public/ca.pem"))


@pytest.fixture(scope="package")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    assert os.geteuid() == 0, "the role is run as root, as on a server (scripts/test runs as root)"
    wheel = os.environ.get("MAILSTACK_WHEEL", "")
    assert wheel and Path(wheel).is_file(), (
        "MAILSTACK_WHEEL must name the built wheel (scripts/test exports it; by hand: "
        "pip wheel --no-deps -w DIR . and export MAILSTACK_WHEEL=DIR/mailstack-*.whl)"
    )
    work = tmp_path_factory.mktemp("ansible")
    open_path_to(work)  # serve runs as mailstack and must reach its state dir
    _public_certificate(work)
    ports = dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True))
    variables = variables_for(work, wheel, PASSWORDS, ports)
    first = run_playbook(work, variables, name="first")
    assert (first.returncode, first.failed) == (0, 0), first.explain()
    return Deployed(work, variables, first)


@pytest.fixture(scope="package", autouse=True)
def one_role_run_per_machine() -> Iterator[None]:
    """The role creates and changes the machine's one `mailstack` system user: two test runs
    at once (two checkouts on one machine) would fight over it. They take turns here."""
    with open("/tmp/mailstack-ansible-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
