"""The https and http listeners of a real `serve`: TLS from the shared store with SNI and a
SIGHUP reload, ACME challenge files on http, the redirect, `status` listing them."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
from pathlib import Path

import pytest

from tests.conftest import Cli, install_new_certificate
from tests.support.serve import ServeProcess
from tests.web.conftest import http_request, https_request


def test_https_serves_with_the_deployment_certificate_for_every_name(
    web_serve: ServeProcess, web_dir: Path
) -> None:
    ca = web_dir / "tls/ca.pem"
    port = web_serve.port("https")
    for name in ("mail.example.com", "autoconfig.example.com", "mta-sts.example.com"):
        reply = https_request(port, "/no-such-page", host=name, ca=ca)
        assert reply.status == 404, name
    other_ca = web_dir / "other-ca.pem"
    import trustme

    trustme.CA().cert_pem.write_to_path(str(other_ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(port, "/", ca=other_ca)


def test_sighup_reloads_the_https_certificate(web_serve: ServeProcess, web_dir: Path) -> None:
    port = web_serve.port("https")
    assert https_request(port, "/x", ca=web_dir / "tls/ca.pem").status == 404
    new_ca = install_new_certificate(web_dir)
    web_serve.signal(signal.SIGHUP)
    web_serve.wait_for("SIGHUP: certificate reloaded")
    assert https_request(port, "/x", ca=new_ca).status == 404
    with pytest.raises(ssl.SSLCertVerificationError):
        https_request(port, "/x", ca=web_dir / "tls/ca.pem")


def test_http_answers_acme_challenges_and_redirects_the_rest(
    web_serve: ServeProcess, web_dir: Path
) -> None:
    port, https_port = web_serve.port("http"), web_serve.port("https")
    challenges = web_dir / "acme/challenges"
    challenges.mkdir(parents=True)
    (challenges / "tok_EN-1").write_bytes(b"tok_EN-1.thumbprint")
    (web_dir / "secret").write_text("not for the web")

    reply = http_request(port, "/.well-known/acme-challenge/tok_EN-1", host="mta-sts.example.com")
    assert (reply.status, reply.body) == (200, b"tok_EN-1.thumbprint")
    assert reply.headers["Content-Type"] == "application/octet-stream"
    for bad in ("missing", "..%2F..%2Fsecret", "a.b"):
        assert http_request(port, f"/.well-known/acme-challenge/{bad}").status == 404, bad

    reply = http_request(port, "/mail/config-v1.1.xml?x=1", host="autoconfig.example.com")
    assert reply.status == 308
    assert reply.headers["Location"] == (
        f"https://autoconfig.example.com:{https_port}/mail/config-v1.1.xml?x=1"
    )
    assert http_request(port, "/", method="POST").status == 308


def test_status_lists_the_web_listeners(web_serve: ServeProcess, cli: Cli) -> None:
    result = cli("status", "--json")
    assert result.returncode == 0, result.stderr
    found = {item["service"]: item for item in json.loads(result.stdout)["listeners"]}
    assert found["https"]["accepting"] and found["http"]["accepting"]
    assert found["https"]["address"] == f"127.0.0.1:{web_serve.port('https')}"
    assert any(line.startswith("  https ") for line in cli("status").stdout.splitlines())


def test_bad_web_listener_is_a_config_error_naming_the_key(web_dir: Path, cli: Cli) -> None:
    cfg = web_dir / "mailstack.toml"
    cfg.write_text(re.sub(r"(?m)^https = .*$", 'https = ["nowhere"]', cfg.read_text()))
    result = cli("serve")
    assert result.returncode == 1
    assert "listen.https[0]" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_enables_the_web_side_only_when_asked(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    base = ["init", "--non-interactive", "--domain", "example.org", "--hostname"]
    on = run_cli(tmp_path / "on", *base, "mail.example.org", "--ipv4", "192.0.2.1",
                 "--https-port", "8443", "--http-port", "8080")  # fmt: skip
    assert on.returncode == 0, on.stderr
    text = (tmp_path / "on/mailstack.toml").read_text()
    assert 'https = ["0.0.0.0:8443"]' in text and 'http = ["0.0.0.0:8080"]' in text
    off = run_cli(tmp_path / "off", *base, "mail.example.org", "--ipv4", "192.0.2.1")
    assert off.returncode == 0, off.stderr
    text = (tmp_path / "off/mailstack.toml").read_text()
    assert "https = []" in text and "http = []" in text


def test_sigterm_closes_idle_keep_alive_connections(web_serve: ServeProcess, web_dir: Path) -> None:
    """An idle keep-alive client does not hold serve for the whole drain deadline."""
    import http.client
    import time

    ctx = ssl.create_default_context(cafile=str(web_dir / "tls/ca.pem"))
    conn = http.client.HTTPSConnection("127.0.0.1", web_serve.port("https"), context=ctx)
    conn.sock = ctx.wrap_socket(
        socket.create_connection(("127.0.0.1", web_serve.port("https"))),
        server_hostname="mail.example.com",
    )
    conn.request("GET", "/mail/config-v1.1.xml", headers={"Host": "autoconfig.example.com"})
    response = conn.getresponse()
    response.read()
    assert response.status == 200 and not response.will_close  # kept alive
    started = time.monotonic()
    assert web_serve.stop() == 0
    assert time.monotonic() - started < 15  # well under serve's 30 s drain deadline
    conn.close()
