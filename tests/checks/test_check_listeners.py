"""Live listener variants: a listener down, nothing running, an open relay, a stale certificate.

The open relay is a third-party test double of a *foreign* MTA (aiosmtpd accepting every
RCPT) that the config's listen.smtp points at: our own SMTP code is never changed for it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from mailstack.base.users import Accounts
from tests.checks.conftest import (
    FORWARD,
    check,
    free_ports,
    make_deployment,
    not_passing,
    only,
    set_listen,
    set_resolver,
    start_nsd,
    zones,
)
from tests.checks.test_check_files_tls import write_leaf
from tests.conftest import MAILSTACK
from tests.support.serve import ServeProcess

pytestmark = pytest.mark.external

LIVE_GROUPS = ("--only", "smtp", "--only", "imap", "--only", "relay", "--only", "e2e")


def nothing_left(root: Path) -> None:
    accounts = Accounts(root / "users.sqlite3")
    try:
        assert accounts.users() == []
    finally:
        accounts.close()
    assert list((root / "mail").iterdir()) == []


def test_imap_listener_down(tmp_path: Path) -> None:
    root = tmp_path / "state"
    ports = make_deployment(root)
    set_listen(root, "imap", "[]")
    with ServeProcess(root) as serve:
        assert "imap" not in serve.listeners
        set_listen(root, "imap", f'["127.0.0.1:{ports["imap"]}"]')  # what check is told
        proc, data = check(root, *LIVE_GROUPS)
    assert proc.returncode == 1
    assert not_passing(data) == {"imap.banner": "fail", "imap.starttls": "skip"}
    banner = only(data, "imap.banner")
    assert banner["message"] == f"127.0.0.1:{ports['imap']}: cannot connect: Connection refused"
    assert f'listen.imap = ["127.0.0.1:{ports["imap"]}"]' in banner["fix"]
    assert "mailstack serve" in banner["fix"]
    nothing_left(root)


def test_nothing_running_fails_and_still_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    proc, data = check(root, *LIVE_GROUPS)
    assert proc.returncode == 1
    assert not_passing(data) == {
        "smtp.banner": "fail",
        "smtp.ehlo": "skip",
        "smtp.starttls": "skip",
        "smtp.auth": "skip",
        "imap.banner": "fail",
        "imap.starttls": "skip",
        "imap.tls": "fail",
        "imap.login": "fail",
        "relay.open": "skip",
        "e2e.delivery": "fail",
    }
    nothing_left(root)


class AcceptEverything:
    """A foreign MTA misconfigured as an open relay: every RCPT gets 250."""

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_open_relay_is_caught(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    (port,) = free_ports(1)
    relay = Controller(
        AcceptEverything(), hostname="127.0.0.1", port=port, server_hostname="mail.example.com"
    )
    relay.start()
    try:
        set_listen(root, "smtp", f'["127.0.0.1:{port}"]')
        proc, data = check(root, "--only", "relay")
    finally:
        relay.stop()
    assert proc.returncode == 1
    finding = only(data, "relay.open")
    assert finding["status"] == "fail"
    assert finding["message"].startswith(f"127.0.0.1:{port}: OPEN RELAY")
    assert "relay-check@example.net" in finding["message"]
    assert "554 5.7.1" in finding["fix"]


def test_our_server_is_not_an_open_relay(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    with ServeProcess(root):
        proc, data = check(root, "--only", "relay")
    assert proc.returncode == 0
    assert only(data, "relay.open")["status"] == "pass"
    assert "relaying to example.net is refused (554" in only(data, "relay.open")["message"]


def test_certificate_changed_but_not_reloaded(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    now = dt.datetime.now(dt.UTC)
    with ServeProcess(root) as serve:
        write_leaf(
            root,
            names=["mail.example.com"],
            not_before=now - dt.timedelta(hours=1),
            not_after=now + dt.timedelta(days=90),
        )
        _, data = check(root, "--only", "smtp", "--only", "imap")
        stale = {"smtp.starttls": "fail", "imap.starttls": "fail", "imap.tls": "fail"}
        assert not_passing(data) == stale
        for id_ in stale:
            assert "presents another certificate" in only(data, id_)["message"]
            assert "systemctl reload mailstack" in only(data, id_)["fix"]
        serve.signal(signal.SIGHUP)
        serve.wait_for("certificate reloaded")
        proc, data = check(root, "--only", "smtp", "--only", "imap")
    assert not_passing(data) == {}
    assert proc.returncode == 0


def test_probe_in_junk_when_spf_does_not_cover_us(tmp_path: Path) -> None:
    """serve judges the probe by our zones: SPF fails -> DMARC p=quarantine -> Junk -> warn."""
    root = tmp_path / "state"
    make_deployment(root)
    texts = zones(root)
    texts[FORWARD] = texts[FORWARD].replace('"v=spf1 mx -all"', '"v=spf1 ip4:192.0.2.1 -all"')
    nsd = start_nsd(tmp_path / "nsd", texts)
    set_resolver(root, f"127.0.0.1:{nsd.port}")
    try:
        with ServeProcess(root):
            proc, data = check(root, "--only", "e2e")
    finally:
        nsd.stop()
    assert proc.returncode == 0  # a warning
    e2e = only(data, "e2e.delivery")
    assert e2e["status"] == "warn"
    assert e2e["message"].startswith("the probe message arrived in Junk, not INBOX")
    assert "dns.spf" in e2e["fix"]
    nothing_left(root)


def test_sigterm_while_the_probe_exists_still_removes_it(tmp_path: Path) -> None:
    """An MX that accepts the connection and never greets holds check inside the e2e send,
    with the probe mailbox present; SIGTERM then must unwind and remove it."""
    root = tmp_path / "state"
    make_deployment(root)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        set_listen(root, "smtp", f'["127.0.0.1:{silent.getsockname()[1]}"]')
        env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
        proc = subprocess.Popen(
            [
                MAILSTACK,
                "--dir",
                str(root),
                "check",
                "--json",
                "--only",
                "e2e",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        try:
            silent.settimeout(60)
            conn, _ = silent.accept()  # check is now waiting for our greeting
            with conn:
                accounts = Accounts(root / "users.sqlite3")
                try:
                    assert [u.address.split("-")[0] for u in accounts.users()] == ["mailstack"]
                finally:
                    accounts.close()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    nothing_left(root)
