"""ACME against a real CA (pebble) on loopback: `tls acme` issues with HTTP-01, `serve` renews
before expiry and reloads without a restart, a failed renewal keeps the current certificate and
`status`/`check` say so."""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from mailstack.base.config import load_config
from tests.checks.conftest import check, only, set_resolver, start_nsd, zones
from tests.conftest import MAILSTACK, Cli
from tests.support.nsd import NsdServer
from tests.support.serve import ServeProcess
from tests.web.pebble import Pebble

pytestmark = pytest.mark.external

NAMES = {
    "mail.example.com",
    "autoconfig.example.com",
    "autodiscover.example.com",
    "mta-sts.example.com",
}
SHORT_S = 20 * 86400  # a certificate with 20 days left: under the 30 of web.acme_renew_days


@dataclass
class Env:
    root: Path
    nsd: NsdServer
    base: Path

    def pebble(self, validity_s: int | None = None) -> Pebble:
        http_port = load_config(self.root / "mailstack.toml").listeners("http")[0][1]
        return Pebble(
            self.base / "pebble", http_port=http_port, dns=f"127.0.0.1:{self.nsd.port}",
            validity_s=validity_s,
        )  # fmt: skip


@pytest.fixture
def env(web_dir: Path, tmp_path: Path) -> Iterator[Env]:
    nsd = start_nsd(tmp_path / "nsd", zones(web_dir))
    set_resolver(web_dir, f"127.0.0.1:{nsd.port}")
    try:
        yield Env(web_dir, nsd, tmp_path)
    finally:
        nsd.stop()


def acme(cli: Cli, pebble: Pebble, *extra: str) -> tuple[int, str, str]:
    result = cli(
        "tls", "acme", "--email", "admin@example.com",
        "--directory", pebble.directory_url, "--ca-bundle", str(pebble.ca_bundle), *extra,
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


def leaf(root: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((root / "tls/fullchain.pem").read_bytes())


def served(port: int, ca: bytes, name: str = "mail.example.com") -> x509.Certificate:
    """The certificate the https listener presents now, verified against `ca`."""
    ctx = ssl.create_default_context(cadata=ca.decode())
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def names_of(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def test_issue_then_serve_renews_and_reloads(env: Env, cli: Cli) -> None:
    with env.pebble(validity_s=SHORT_S) as pebble:
        code, out, err = acme(cli, pebble)  # no serve: the command binds listen.http itself
        assert code == 0, err + "".join(pebble.log)
        assert "mail.example.com" in out and "renews it 30 days before" in out
        root_ca = pebble.root_pem()
        first = leaf(env.root)
        assert names_of(first) == NAMES
        assert stat.S_IMODE((env.root / "tls/privkey.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((env.root / "acme/account.json").stat().st_mode) == 0o600
        assert not (env.root / "tls/ca.pem").exists()  # the private CA no longer vouches
        assert list((env.root / "acme/challenges").iterdir()) == []  # cleaned up
        # 20 days left, under 30: serve renews at once and reloads without a restart.
        with ServeProcess(env.root) as serve:
            port = serve.port("https")
            serve.wait_for("ACME: certificate renewed")
            serve.wait_for("SIGHUP: certificate reloaded")
            second = leaf(env.root)
            assert second.serial_number != first.serial_number
            for name in NAMES:
                assert served(port, root_ca, name).serial_number == second.serial_number
            status = cli("status")
            assert re.search(r"^acme +ok .* renewed, expires ", status.stdout, re.M), status.stdout
            _, data = check(env.root, "--only", "web")
            assert only(data, "web.acme")["status"] == "pass"
            # Pebble's root is in no trust store: check says the policy cannot be fetched...
            assert only(data, "web.mta_sts")["status"] == "fail"
            assert "CERTIFICATE_VERIFY_FAILED" in only(data, "web.mta_sts")["message"]
            # ...and passes for a machine that trusts it (as every sender trusts a public CA).
            bundle = env.base / "roots.pem"
            bundle.write_bytes(root_ca)
            trusted = subprocess.run(
                [MAILSTACK, "--dir", str(env.root), "check", "--json", "--only", "web"],
                env={k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
                | {"SSL_CERT_FILE": str(bundle)},
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert only(json.loads(trusted.stdout), "web.mta_sts")["status"] == "pass"


def test_failed_renewal_keeps_the_certificate_and_says_so(env: Env, cli: Cli) -> None:
    with env.pebble(validity_s=SHORT_S) as pebble:
        code, _, err = acme(cli, pebble)
        assert code == 0, err
        root_ca = pebble.root_pem()
    current = leaf(env.root)
    # The CA is gone when serve wants to renew.
    with ServeProcess(env.root) as serve:
        # Logged while serve starts: before or after "mailstack ready", as the loop runs.
        serve.seen_or_wait_for("ACME: renewal failed, keeping the current certificate")
        assert served(serve.port("https"), root_ca).serial_number == current.serial_number
        status = cli("status", "--json")
        assert '"ok": false' in status.stdout and "renewal failed" in status.stdout
        assert re.search(r"^acme +FAILED .*renewal failed", cli("status").stdout, re.M)
        _, data = check(env.root, "--only", "web")
        finding = only(data, "web.acme")
        assert finding["status"] == "warn", finding
        assert "current certificate" in finding["message"]
    assert leaf(env.root).serial_number == current.serial_number


def test_tls_acme_beside_a_running_serve(env: Env, cli: Cli) -> None:
    with env.pebble() as pebble, ServeProcess(env.root) as serve:
        code, out, err = acme(cli, pebble)  # serve's http listener answers the challenges
        assert code == 0, err + "".join(serve.log)
        assert f"serve (pid {serve.pid}) reloads it now" in out
        serve.wait_for("SIGHUP: certificate reloaded")
        cert = served(serve.port("https"), pebble.root_pem(), "mta-sts.example.com")
        assert cert.serial_number == leaf(env.root).serial_number
        assert not any("renewing" in line for line in serve.log)  # 5 years left: nothing due


def test_tls_acme_failures_are_one_line(env: Env, cli: Cli) -> None:
    # An unreachable CA.
    with env.pebble() as pebble:
        bundle = pebble.directory / "kept-ca.pem"
        bundle.write_bytes(pebble.ca_bundle.read_bytes())
        dead = pebble.directory_url
    result = cli("tls", "acme", "--email", "a@example.com", "--directory", dead,
                 "--ca-bundle", str(bundle))  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: ACME with https://127.0.0.1:")
    assert "Traceback" not in result.stderr
    assert "issuance failed" in cli("status").stdout
    # No listen.http: HTTP-01 cannot work, and the message says what to set.
    config = env.root / "mailstack.toml"
    pebble = env.pebble()
    config.write_text(re.sub(r"(?m)^http = .*$", "http = []", config.read_text()))
    with pebble:
        code, _, err = acme(cli, pebble, "--challenge", "http-01")
    assert code == 1
    assert "http-01 needs listen.http (" in err and "Traceback" not in err
    # The certificate is untouched: still the one of the private CA.
    ca = x509.load_pem_x509_certificate((env.root / "tls/ca.pem").read_bytes())
    assert leaf(env.root).issuer == ca.subject
