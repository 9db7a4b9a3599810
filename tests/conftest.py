"""Fixtures shared by every test package: running the real CLI, a fresh deployment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The suite tests the installed wheel (scripts/test builds and installs it), never this checkout.
# pytest put the checkout's root on sys.path to import the `tests` package; take it off before
# anything imports `mailstack`. Subprocesses run the installed console script (MAILSTACK), which
# does not put the working directory on sys.path as `python -m` would.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import mailstack  # noqa: E402

if "site-packages" not in Path(mailstack.__file__).parts:
    pytest.exit(
        f"mailstack was imported from the checkout ({mailstack.__file__}), not an installed"
        " wheel: run ./scripts/test, which builds and installs it",
        returncode=2,
    )

from mailstack.init import InitOptions, init_deployment  # noqa: E402

# Hypothesis for the whole suite. The suite runs on small shared machines (2 cores, other runs
# beside it), where an example's wall time measures the machine, not mailstack: no per-example
# deadline, and no too_slow health check (store and protocol examples do real file I/O).
# A test's own @settings overrides only what it names.
settings.register_profile("mailstack", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("mailstack")

MAILSTACK = str(Path(sys.executable).with_name("mailstack"))

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(
    root: Path, *args: str, input: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`mailstack --dir ROOT ARGS...` as a real subprocess, as an admin would run it."""
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
    return subprocess.run(
        [MAILSTACK, "--dir", str(root), *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def cli(state_dir: Path) -> Cli:
    def call(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run_cli(state_dir, *args, input=input)

    return call


LOOPBACK_PORTS = (("smtp", 0), ("submission", 0), ("submissions", 0), ("imap", 0), ("imaps", 0))


@pytest.fixture
def deployment_dir(state_dir: Path) -> Path:
    """A deployment for example.com on 127.0.0.1, every listener on an ephemeral port."""
    init_deployment(
        state_dir,
        InitOptions(
            domain="example.com",
            hostname="mail.example.com",
            ipv4="127.0.0.1",
            listen_host="127.0.0.1",
            ports=LOOPBACK_PORTS,
            dkim_selector="test",
        ),
    )
    return state_dir


def install_new_certificate(root: Path) -> Path:
    """Replace the deployment's certificate with one from a fresh CA (as an admin renewing
    it would); returns that CA's PEM file, to verify against after SIGHUP."""
    import trustme  # only the tests that renew certificates need it

    ca = trustme.CA()
    leaf = ca.issue_cert("mail.example.com")
    (root / "tls/fullchain.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    (root / "tls/privkey.pem").write_bytes(leaf.private_key_pem.bytes())
    ca_file = root / "new-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return ca_file
