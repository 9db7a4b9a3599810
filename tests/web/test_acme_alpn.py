"""ACME TLS-ALPN-01 (RFC 8737) against a real CA (pebble) on loopback: pebble's validation
handshakes go to our listen.https port and its HTTP-01 port is dead, so only TLS-ALPN-01 can
pass. `tls acme` answers them with its own https listener or through a running serve's, serve's
renewal uses the challenge chosen, and a pending challenge switches only its own name."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from mailstack.base.config import load_config
from mailstack.base.errors import MailstackError
from mailstack.base.paths import StatePaths
from mailstack.deployment import Deployment
from mailstack.init import hosted_domains
from mailstack.web import alpn
from mailstack.web.acme import acme_command
from tests.checks.conftest import set_resolver, start_nsd, zones
from tests.conftest import Cli
from tests.support.nsd import NsdServer
from tests.support.serve import ServeProcess
from tests.web.pebble import Pebble
from tests.web.test_acme import acme, leaf

pytestmark = pytest.mark.external

NAMES = {
    "mail.example.com",
    "autoconfig.example.com",
    "autodiscover.example.com",
    "mta-sts.example.com",
}
SHORT_S = 20 * 86400  # under the 30 days of web.acme_renew_days: serve renews at once


@dataclass
class Env:
    root: Path
    nsd: NsdServer
    base: Path

    def pebble(self, validity_s: int | None = None) -> Pebble:
        https_port = load_config(self.root / "mailstack.toml").listeners("https")[0][1]
        return Pebble(
            self.base / "pebble", http_port=1, tls_port=https_port,
            dns=f"127.0.0.1:{self.nsd.port}", validity_s=validity_s,
        )  # fmt: skip

    def set_listen(self, service: str, value: str) -> None:
        config = self.root / "mailstack.toml"
        text, n = re.subn(rf"(?m)^{service} = .*$", f"{service} = {value}", config.read_text())
        assert n == 1
        config.write_text(text)


@pytest.fixture
def env(web_dir: Path, tmp_path: Path) -> Iterator[Env]:
    nsd = start_nsd(tmp_path / "nsd", zones(web_dir))
    set_resolver(web_dir, f"127.0.0.1:{nsd.port}")
    try:
        yield Env(web_dir, nsd, tmp_path)
    finally:
        nsd.stop()


def handshake(
    port: int, name: str, *, alpn_protocols: list[str] | None = None, ca: bytes | None = None
) -> tuple[x509.Certificate, str | None]:
    """The certificate and ALPN protocol the https listener answers `name` with; verified
    against `ca` when given (as an ordinary client), else taken as it comes (as the CA does)."""
    if ca is not None:
        ctx = ssl.create_default_context(cadata=ca.decode())
    else:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn_protocols:
        ctx.set_alpn_protocols(alpn_protocols)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        protocol = tls.selected_alpn_protocol()
    assert der is not None
    return x509.load_der_x509_certificate(der), protocol


def names_of(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


def account(root: Path) -> dict[str, str]:
    return dict(json.loads((root / "acme/account.json").read_text()))


def test_alpn_without_serve_and_without_http(env: Env, cli: Cli) -> None:
    env.set_listen("http", "[]")  # no listen.http: the default is TLS-ALPN-01
    with env.pebble() as pebble:
        code, out, err = acme(cli, pebble)  # no serve: the command binds listen.https itself
        assert code == 0, err + "".join(pebble.log)
        root_ca = pebble.root_pem()
    assert "mail.example.com" in out
    cert = leaf(env.root)
    assert names_of(cert) == NAMES
    assert account(env.root)["challenge"] == ""  # renewals follow the config's rule
    assert list((env.root / "acme/tls-alpn").iterdir()) == []  # the challenge keys are gone
    with ServeProcess(env.root) as serve:
        served, _ = handshake(serve.port("https"), "mta-sts.example.com", ca=root_ca)
        assert served.serial_number == cert.serial_number


def test_alpn_beside_serve_then_serve_renews_by_alpn(env: Env, cli: Cli) -> None:
    with env.pebble(validity_s=SHORT_S) as pebble:
        # listen.http is set, but the admin chose TLS-ALPN-01: serve's https listener answers.
        with ServeProcess(env.root) as serve:
            code, out, err = acme(cli, pebble, "--challenge", "tls-alpn-01")
            assert code == 0, err + "".join(serve.log) + "".join(pebble.log)
            assert f"serve (pid {serve.pid}) reloads it now" in out
            serve.wait_for("SIGHUP: certificate reloaded")
            root_ca = pebble.root_pem()
            first = leaf(env.root)
            for name in NAMES:
                served, _ = handshake(serve.port("https"), name, ca=root_ca)
                assert served.serial_number == first.serial_number
        assert account(env.root)["challenge"] == "tls-alpn-01"
        # 20 days left: a new serve renews at once, by TLS-ALPN-01 on its own listener again
        # (pebble's HTTP-01 port is dead).
        with ServeProcess(env.root) as serve:
            serve.wait_for("ACME: certificate renewed")
            serve.wait_for("SIGHUP: certificate reloaded")
            second = leaf(env.root)
            assert second.serial_number != first.serial_number
            served, _ = handshake(serve.port("https"), "autoconfig.example.com", ca=root_ca)
            assert served.serial_number == second.serial_number
    assert list((env.root / "acme/tls-alpn").iterdir()) == []


def test_a_pending_challenge_switches_only_its_own_name(env: Env, web_dir: Path) -> None:
    ca = (web_dir / "tls/ca.pem").read_bytes()  # init's private CA signs the real certificate
    real = leaf(web_dir)
    authorization = "token-abc.thumbprint-xyz"
    with ServeProcess(web_dir) as serve:
        port = serve.port("https")
        with alpn.pending_challenges(alpn.challenge_dir(StatePaths(web_dir))) as publish:
            publish("autoconfig.example.com", authorization)
            # The CA's handshake: the challenge certificate and acme-tls/1 (RFC 8737 §3).
            cert, protocol = handshake(
                port, "autoconfig.example.com", alpn_protocols=["acme-tls/1"]
            )
            assert protocol == "acme-tls/1"
            assert names_of(cert) == {"autoconfig.example.com"}
            ext = cert.extensions.get_extension_for_oid(alpn.ID_PE_ACME_IDENTIFIER)
            assert ext.critical
            assert isinstance(ext.value, x509.UnrecognizedExtension)
            digest = hashlib.sha256(authorization.encode()).digest()
            assert ext.value.value == b"\x04\x20" + digest
            # Meanwhile every other name keeps the real certificate, with or without ALPN...
            for name in ("mail.example.com", "mta-sts.example.com"):
                cert, protocol = handshake(port, name, alpn_protocols=["h2", "http/1.1"], ca=ca)
                assert cert.serial_number == real.serial_number and protocol is None
            cert, _ = handshake(port, "mail.example.com", alpn_protocols=["acme-tls/1"], ca=ca)
            assert cert.serial_number == real.serial_number
            # ...and ordinary HTTPS to the challenged name fails for those seconds (documented).
            with pytest.raises(ssl.SSLCertVerificationError):
                handshake(port, "autoconfig.example.com", ca=ca)
        # Challenge over: the name has the real certificate again.
        cert, _ = handshake(port, "autoconfig.example.com", ca=ca)
        assert cert.serial_number == real.serial_number
        # A challenge left behind (tls acme killed) stops counting after MAX_PENDING_S.
        stale = alpn.challenge_dir(StatePaths(web_dir)) / "mta-sts.example.com.pem"
        stale.write_bytes(alpn.challenge_certificate("mta-sts.example.com", authorization))
        _, protocol = handshake(port, "mta-sts.example.com", alpn_protocols=["acme-tls/1"])
        assert protocol == "acme-tls/1"
        old = time.time() - alpn.MAX_PENDING_S - 60
        os.utime(stale, (old, old))
        cert, _ = handshake(port, "mta-sts.example.com", ca=ca)
        assert cert.serial_number == real.serial_number


def test_pebble_refuses_a_broken_acme_identifier(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard: the extension must hold SHA-256 of the key authorization. Built from anything
    else, pebble refuses every name and the current certificate stays."""
    env.set_listen("http", "[]")
    real = leaf(env.root)
    broken = alpn.acme_identifier_value
    monkeypatch.setattr(alpn, "acme_identifier_value", lambda ka: broken(ka + "x"))
    dep = Deployment.open(env.root)
    try:
        with env.pebble() as pebble, pytest.raises(MailstackError) as caught:
            acme_command(
                dep.paths, dep.config, hosted_domains(dep.config, dep.accounts),
                email="admin@example.com", directory=pebble.directory_url,
                ca_bundle=str(pebble.ca_bundle),
            )  # fmt: skip
    finally:
        dep.close()
    message = caught.value.message
    assert message.startswith("the CA could not validate "), message
    assert "mail.example.com" in message and "acmeValidation" in message, message
    assert "listen.https" in (caught.value.hint or "")
    assert leaf(env.root).serial_number == real.serial_number
    assert list((env.root / "acme/tls-alpn").iterdir()) == []


def test_challenge_choice_needs_its_listener(env: Env, cli: Cli) -> None:
    env.set_listen("https", "[]")
    result = cli("tls", "acme", "--email", "a@example.com", "--challenge", "tls-alpn-01",
                 "--directory", "https://127.0.0.1:1/dir")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: tls-alpn-01 needs listen.https"), result.stderr
    assert "Traceback" not in result.stderr
    env.set_listen("http", "[]")  # neither listener: the default (TLS-ALPN-01) says what to set
    result = cli("tls", "acme", "--email", "a@example.com", "--directory", "https://127.0.0.1:1/d")
    assert result.returncode == 1 and "listen.https" in result.stderr, result.stderr


def test_challenge_file_names_come_only_from_host_names(tmp_path: Path) -> None:
    """The SNI name picks a file: nothing but a plain A-label host name may (no traversal)."""
    assert alpn.challenge_path(tmp_path, "Mail.Example.COM.") == tmp_path / "mail.example.com.pem"
    assert alpn.challenge_path(tmp_path, "xn--bcher-kva.example") is not None
    for bad in ("../acme/account", "a/b", "..", "a..b", "", ".", "-", "a b", "ä.example"):
        assert alpn.challenge_path(tmp_path, bad) is None, bad
