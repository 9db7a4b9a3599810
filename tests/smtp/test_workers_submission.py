"""Submission served by SMTP worker processes, logins decided in the main process.

Real `mailstack serve` with two workers, real sockets. What must hold although the session runs
in a child: it is a worker's session (its connection id says so), a wrong password there counts
in the one throttle IMAP uses too, SCRAM works through the worker, and a session that logged in
in a worker frees its pre-auth place in the main process's limiter.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
import pytest

from tests.conftest import run_cli
from tests.delivery.test_dkim import txt_for
from tests.mailstack.test_login_serve import login as imap_login
from tests.smtp.test_submission_scram import MECH, authobject
from tests.smtp.test_workers import _configure
from tests.support.serve import ServeProcess

ALICE = "alice@example.com"
PASSWORD = "correct horse battery staple"


@pytest.fixture
def served(deployment_dir: Path) -> Iterator[ServeProcess]:
    with _served(deployment_dir) as proc:
        yield proc


@contextlib.contextmanager
def _served(deployment_dir: Path) -> Iterator[ServeProcess]:
    limits = {"max_connections": 3, "reserved_for_authenticated": 1, "lockout_failures": 3}
    _configure(deployment_dir, workers=2, **limits)  # the first of each key: [smtp], [auth]
    added = run_cli(deployment_dir, "user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    proc = ServeProcess(deployment_dir)
    proc.start()
    try:
        assert proc.seen_or_wait_for("SMTP worker 2 ready")
        yield proc
    finally:
        assert proc.stop() == 0, "".join(proc.log)


def _tls(root: Path) -> ssl.SSLContext:
    tls = ssl.create_default_context(cafile=str(root / "tls" / "ca.pem"))
    tls.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    return tls


def _starttls(proc: ServeProcess, source_ip: str = "127.0.0.1") -> smtplib.SMTP:
    smtp = smtplib.SMTP(
        "127.0.0.1", proc.port("submission"), timeout=30, source_address=(source_ip, 0)
    )
    try:
        smtp.starttls(context=_tls(proc.root))
        smtp.ehlo("client.example.org")
    except BaseException:
        smtp.close()
        raise
    return smtp


def test_a_wrong_password_in_a_worker_counts_in_the_throttle_imap_uses(
    served: ServeProcess,
) -> None:
    assert (
        imap_login(served.port("imap"), ALICE, PASSWORD, "127.0.1.1") == "OK"
    )  # the main process's throttle is warm
    for _ in range(3):
        with _starttls(served) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login(ALICE, "wrong")
    line = served.wait_for("login failed for")
    assert "[w1." in line or "[w2." in line  # a worker's session; decided in the main process
    # The same network, locked out by submission's failures:
    assert "UNAVAILABLE" in imap_login(served.port("imap"), ALICE, PASSWORD)
    with _starttls(served, "127.0.1.1") as smtp:  # another network is not
        assert smtp.login(ALICE, PASSWORD)[0] == 235


def test_scram_through_a_worker(served: ServeProcess) -> None:
    with _starttls(served) as smtp:
        _client, answer = authobject(ALICE, PASSWORD)
        assert smtp.auth(MECH, answer, initial_response_ok=True)[0] == 235
        assert smtp.sendmail(ALICE, [ALICE], f"From: {ALICE}\r\nSubject: s\r\n\r\nhi\r\n") == {}
    _client, answer = authobject(ALICE, PASSWORD, tamper=True)
    with _starttls(served) as smtp, pytest.raises(smtplib.SMTPAuthenticationError):
        smtp.auth(MECH, answer, initial_response_ok=True)
    assert served.wait_for("login failed for").rstrip().endswith("(SCRAM-SHA-256)")


def test_a_login_in_a_worker_frees_its_pre_auth_place(served: ServeProcess) -> None:
    # 3 connections at most, 1 of them kept for sessions that logged in.
    port = served.port("submission")
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(3)]
    try:
        greetings = [s.recv(1000)[:9] for s in idle]
        assert greetings == [b"220 mail.", b"220 mail.", b"421 4.7.0"]
        idle.pop().close()
        idle.pop().close()  # one pre-auth place free again
        user = None
        for _ in range(100):  # the main process hears of the close through the worker
            try:
                user = _starttls(served)
                break
            except smtplib.SMTPConnectError:
                time.sleep(0.05)
        assert user is not None
        with user:
            assert user.login(ALICE, PASSWORD)[0] == 235  # ...and leaves it: 1 + 1 in all
            late = None
            for _ in range(100):
                late = socket.create_connection(("127.0.0.1", port), timeout=30)
                if late.recv(1000)[:9] == b"220 mail.":
                    break
                late.close()
                late = None
                time.sleep(0.05)
            assert late is not None, "the logged-in session still holds a pre-auth place"
            late.close()
    finally:
        for s in idle:
            s.close()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.fixture
def served_holding(deployment_dir: Path) -> Iterator[ServeProcess]:
    """serve with two workers whose queue keeps mail for example.net: its route is a port
    nobody listens on, so each attempt fails for now and the message stays queued."""
    cfg = deployment_dir / "mailstack.toml"
    text, n = re.subn(
        r"(?m)^routes = .*$", 'routes = {"example.net" = "127.0.0.1:9"}', cfg.read_text()
    )
    assert n == 1
    cfg.write_text(text)
    with _served(deployment_dir) as proc:
        yield proc


def test_workers_sign_through_the_main_process(served_holding: ServeProcess) -> None:
    served = served_holding
    # A worker hands DKIM's RSA step to the main process (codec K): the messages it queues
    # are signed with the domain's key, and the worker never maps `cryptography` (about 10 MB
    # a process; issue 11's 10,000 IDLE sessions count every worker's memory).
    message = b"From: %s\r\nTo: someone@example.net\r\nSubject: out\r\n\r\nhello\r\n"

    def submit(_: int) -> None:
        with _starttls(served) as smtp:
            smtp.login(ALICE, PASSWORD)
            smtp.sendmail(ALICE, ["someone@example.net"], message % ALICE.encode())

    with ThreadPoolExecutor(2) as pool:  # two at a time (the limit here): both workers take some
        try:
            list(pool.map(submit, range(4)))
        except smtplib.SMTPException as exc:  # once in CI: 451 at MAIL; say what serve logged
            raise AssertionError(f"{exc}\nserve's log:\n{served.log_so_far()}") from exc
    queued = [p.read_bytes() for p in (served.root / "queue" / "msg").iterdir()]
    assert len(queued) == 4
    (key_path,) = (served.root / "dkim").glob("*.key")
    selector = key_path.name.split(".")[0]
    for signed in queued:
        assert signed.startswith(b"DKIM-Signature:"), signed[:200]
        assert dkim.verify(
            signed, dnsfunc=txt_for(f"{selector}._domainkey.example.com", key_path.read_bytes())
        )
    workers = _children(served.pid)
    assert len(workers) == 2
    for pid in workers:
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "python" in maps and "cryptography" not in maps
