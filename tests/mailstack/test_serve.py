"""`mailstack serve` as a process: starts every listener, refuses clearly, stops cleanly."""

from __future__ import annotations

import re
import signal
import smtplib
import socket
import ssl
from pathlib import Path

import pytest
import trustme

from tests.conftest import install_new_certificate, run_cli
from tests.support.serve import ServeProcess


def set_listener(root: Path, service: str, value: str) -> None:
    cfg = root / "mailstack.toml"
    text = re.sub(rf"(?m)^{service} = .*$", f"{service} = {value}", cfg.read_text())
    cfg.write_text(text)


def test_serve_starts_every_listener_and_stops_on_sigterm(deployment_dir: Path) -> None:
    tls = ssl.create_default_context(cafile=str(deployment_dir / "tls/ca.pem"))
    tls.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    proc = ServeProcess(deployment_dir).start()
    try:
        assert {"smtp", "submission", "submissions", "imap", "imaps"} <= set(proc.listeners)
        with smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=10) as smtp:
            code, banner = smtp.ehlo("client.example.org")
            assert code == 250
            assert banner.startswith(b"mail.example.com")
        with smtplib.SMTP("127.0.0.1", proc.port("submission"), timeout=10) as smtp:
            smtp.ehlo("client.example.org")
            assert smtp.has_extn("starttls")
            assert smtp.starttls(context=tls)[0] == 220
            code, banner = smtp.ehlo("client.example.org")
            assert code == 250
            assert smtp.has_extn("auth")
        with smtplib.SMTP_SSL(
            "127.0.0.1", proc.port("submissions"), timeout=10, context=tls
        ) as smtp:
            code, banner = smtp.ehlo("client.example.org")
            assert code == 250
            assert smtp.has_extn("auth")
        with socket.create_connection(("127.0.0.1", proc.port("imap")), timeout=10) as s:
            assert s.recv(1024).startswith(b"* OK")
        with (
            socket.create_connection(("127.0.0.1", proc.port("imaps")), timeout=10) as raw,
            tls.wrap_socket(raw, server_hostname="mail.example.com") as s,
        ):
            assert s.recv(1024).startswith(b"* OK")
    finally:
        status = proc.stop()
    assert status == 0, "".join(proc.log)
    assert "stopped" in "".join(proc.log)


def test_port_in_use_is_one_clear_line(deployment_dir: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        set_listener(deployment_dir, "smtp", f'["127.0.0.1:{port}"]')
        result = run_cli(deployment_dir, "serve")
    assert result.returncode == 1
    assert f"cannot listen on listen.smtp 127.0.0.1:{port}: address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_certificate_refuses_to_start(deployment_dir: Path) -> None:
    (deployment_dir / "tls/privkey.pem").unlink()
    result = run_cli(deployment_dir, "serve")
    assert result.returncode == 1
    assert "TLS file missing" in result.stderr
    assert "privkey.pem" in result.stderr
    assert "Traceback" not in result.stderr


def test_mismatched_key_refuses_to_start(deployment_dir: Path) -> None:
    other = trustme.CA().issue_cert("mail.example.com")
    (deployment_dir / "tls/privkey.pem").write_bytes(other.private_key_pem.bytes())
    result = run_cli(deployment_dir, "serve")
    assert result.returncode == 1
    assert "does not match the certificate" in result.stderr
    assert "Traceback" not in result.stderr


def _served_cert(port: int, cafile: Path | None) -> bytes:
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else ssl.create_default_context()
    if cafile is None:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="mail.example.com") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def test_sighup_reloads_the_certificate(deployment_dir: Path) -> None:
    with ServeProcess(deployment_dir) as proc:
        port = proc.port("imaps")
        before = _served_cert(port, deployment_dir / "tls/ca.pem")
        ca_file = install_new_certificate(deployment_dir)
        proc.signal(signal.SIGHUP)
        proc.wait_for("certificate reloaded")
        after = _served_cert(port, None)
        assert after != before
        assert _served_cert(port, ca_file) == after  # verifies against the new CA


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_exit_zero(deployment_dir: Path, sig: signal.Signals) -> None:
    proc = ServeProcess(deployment_dir).start()
    proc.signal(sig)
    assert proc.proc is not None
    assert proc.proc.wait(timeout=30) == 0
    proc.stop()
