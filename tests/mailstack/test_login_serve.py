"""Logins against a real `mailstack serve` subprocess: the throttle seen and lifted with the
CLI while serve runs, the auth cache dropped by `user passwd`/`user del`, and a flood of bad
logins that must not slow a normal client (issue 10 items 2 and 6, issue 11's auth cache).

Loopback holds all of 127.0.0.0/8: a client bound to 127.0.2.1 is another /24 (another client
network for the throttle) than one on 127.0.0.1.
"""

from __future__ import annotations

import imaplib
import json
import re
import smtplib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.support.serve import ServeProcess

ALICE, BOB = "alice@example.com", "bob@example.com"
PASSWORD, NEW_PASSWORD = "alice-pw-1", "alice-pw-2"


def set_auth(root: Path, **keys: int) -> None:
    """Set [auth] keys in the mailstack.toml that init wrote (it lists every key)."""
    cfg = root / "mailstack.toml"
    text = cfg.read_text()
    for key, value in keys.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
        assert n == 1, key
    cfg.write_text(text)


def add_user(root: Path, address: str, password: str) -> None:
    result = run_cli(root, "user", "add", address, "--password-stdin", input=password + "\n")
    assert result.returncode == 0, result.stderr


class Imap(imaplib.IMAP4):
    """imaplib from a chosen loopback source address."""

    def __init__(self, port: int, source_ip: str = "127.0.0.1") -> None:
        self.source_ip = source_ip
        super().__init__("127.0.0.1", port, timeout=60)

    def _create_socket(self, timeout: float | None) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self.source_ip, 0)
        )


def login(port: int, user: str, password: str, source_ip: str = "127.0.0.1") -> str:
    """The tagged answer to LOGIN: 'OK' or the NO text (with its response code)."""
    client = Imap(port, source_ip)
    try:
        client.login(user, password)
    except imaplib.IMAP4.error as exc:
        return str(exc)
    finally:
        client.shutdown()
    return "OK"


@pytest.fixture
def serve(deployment_dir: Path) -> Iterator[ServeProcess]:
    set_auth(deployment_dir, lockout_failures=3)
    add_user(deployment_dir, ALICE, PASSWORD)
    add_user(deployment_dir, BOB, "bob-pw")
    with ServeProcess(deployment_dir) as proc:
        yield proc


def throttle_list(root: Path) -> list[dict[str, object]]:
    result = run_cli(root, "throttle", "list", "--json")
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def test_throttle_list_and_clear_act_on_a_running_serve(
    deployment_dir: Path, serve: ServeProcess
) -> None:
    port = serve.port("imap")
    assert run_cli(deployment_dir, "throttle", "list").stdout == "no login throttles\n"
    for _ in range(3):
        assert "AUTHENTICATIONFAILED" in login(port, ALICE, "guess", "127.0.2.1")
    assert "UNAVAILABLE" in login(port, ALICE, PASSWORD, "127.0.2.1")
    assert login(port, ALICE, PASSWORD, "127.0.0.1") == "OK"  # the user's own network

    rows = throttle_list(deployment_dir)
    by_kind = {r["kind"]: r for r in rows}
    assert by_kind["pair"]["account"] == ALICE
    assert by_kind["pair"]["network"] == "127.0.2.0/24"
    assert (by_kind["pair"]["failures"], by_kind["pair"]["status"]) == (3, "refused")
    assert (by_kind["network"]["network"], by_kind["network"]["status"]) == (
        "127.0.2.0/24",
        "counting",
    )
    assert (by_kind["account"]["account"], by_kind["account"]["failures"]) == (ALICE, 3)
    table = run_cli(deployment_dir, "throttle", "list")
    assert table.returncode == 0
    assert "127.0.2.0/24" in table.stdout
    assert "refused" in table.stdout

    cleared = run_cli(deployment_dir, "throttle", "clear", "127.0.2.200")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout == "cleared 2 throttle records for 127.0.2.0/24\n"
    assert login(port, ALICE, PASSWORD, "127.0.2.1") == "OK"  # no restart needed

    for _ in range(3):
        login(port, ALICE, "guess", "127.0.3.1")
    assert "UNAVAILABLE" in login(port, ALICE, PASSWORD, "127.0.3.1")
    cleared = run_cli(deployment_dir, "throttle", "clear", " Alice@Example.COM.")
    assert cleared.stdout == f"cleared 2 throttle records for {ALICE}\n"
    assert login(port, ALICE, PASSWORD, "127.0.3.1") == "OK"
    remaining = throttle_list(deployment_dir)
    assert [(r["kind"], r["network"]) for r in remaining] == [("network", "127.0.3.0/24")]

    assert run_cli(deployment_dir, "throttle", "clear").returncode == 0
    assert throttle_list(deployment_dir) == []
    bad = run_cli(deployment_dir, "throttle", "clear", " ")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: TARGET:")
    assert "Traceback" not in bad.stderr


def test_the_auth_cache_answers_repeats_and_forgets_on_passwd_and_del(
    deployment_dir: Path, serve: ServeProcess
) -> None:
    port = serve.port("imap")
    verified = f"login {ALICE} from 127.0.0.1\n"
    cached = f"login {ALICE} from 127.0.0.1 (cached)\n"
    assert login(port, ALICE, PASSWORD) == "OK"
    assert serve.wait_for(f"login {ALICE} ").endswith(verified)
    assert login(port, ALICE, PASSWORD) == "OK"
    assert serve.wait_for(f"login {ALICE} ").endswith(cached)

    changed = run_cli(
        deployment_dir, "user", "passwd", ALICE, "--password-stdin", input=NEW_PASSWORD + "\n"
    )
    assert changed.returncode == 0, changed.stderr
    assert "AUTHENTICATIONFAILED" in login(port, ALICE, PASSWORD)  # the cached one is gone
    assert login(port, ALICE, NEW_PASSWORD) == "OK"
    assert serve.wait_for(f"login {ALICE} ").endswith(verified)
    assert login(port, ALICE, NEW_PASSWORD) == "OK"
    assert serve.wait_for(f"login {ALICE} ").endswith(cached)

    assert run_cli(deployment_dir, "user", "del", ALICE).returncode == 0
    assert "AUTHENTICATIONFAILED" in login(port, ALICE, NEW_PASSWORD)
    assert not any(PASSWORD in line or NEW_PASSWORD in line for line in serve.log)


def test_a_client_opening_16_connections_at_once_is_not_delayed(serve: ServeProcess) -> None:
    # 16 logins in flight for one account from one network used to count 11 of them as
    # failures (beyond the 5 in flight it lets pass) and delay the last by 30 s.
    barrier = threading.Barrier(16)
    answers: list[str] = []

    def connect() -> None:
        client = Imap(serve.port("imap"))
        try:
            barrier.wait()
            answers.append(client.login(ALICE, PASSWORD)[0])
        finally:
            client.shutdown()

    threads = [threading.Thread(target=connect) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == ["OK"] * 16
    lines = [serve.wait_for("login ").rstrip("\n") for _ in range(16)]
    assert all(line.split("] ", 1)[-1].startswith(f"login {ALICE} from ") for line in lines), lines
    assert len([line for line in lines if line.endswith("from 127.0.0.1")]) == 1  # one argon2id
    assert throttle_list(serve.root) == []


def round_trip(serve: ServeProcess, subject: str) -> float:
    """A normal client's work: deliver one message on 25, then log in over IMAP, select the
    inbox and fetch it. Seconds taken."""
    start = time.monotonic()
    with smtplib.SMTP("127.0.0.1", serve.port("smtp"), timeout=60) as smtp:
        smtp.sendmail(
            BOB, [ALICE], f"From: {BOB}\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\nhi\r\n"
        )
    client = Imap(serve.port("imap"))
    try:
        client.login(ALICE, PASSWORD)
        client.select("INBOX")
        _, found = client.search(None, "SUBJECT", f'"{subject}"')
        (number,) = found[0].split()
        _, data = client.fetch(number, "(BODY.PEEK[])")
        assert subject.encode() in data[0][1]  # type: ignore[index]
    finally:
        client.logout()
    return time.monotonic() - start


@pytest.mark.timeout(300)
def test_a_flood_of_bad_logins_does_not_slow_a_normal_client(
    deployment_dir: Path, serve: ServeProcess
) -> None:
    """Issue 10 item 6: 90 parallel bad logins from two addresses took a normal client's
    delivery + IMAP fetch from 0.6 s to 9.0 s. The bound of 2 s is safe on 2 shared cores:
    hashing runs on half the cores (1 thread here), so the loop and the delivery thread keep
    a core; the round trip itself needs well under 0.5 s of it even on a busy machine."""
    port = serve.port("imap")
    baseline = round_trip(serve, "before")  # also the login the auth cache remembers
    stop = threading.Event()
    ready = threading.Barrier(91)
    sockets: list[socket.socket] = []
    lock = threading.Lock()

    def attacker(source_ip: str, n: int) -> None:
        try:
            sock = socket.create_connection(("127.0.0.1", port), 60, (source_ip, 0))
            with lock:
                sockets.append(sock)
            stream = sock.makefile("rb")
            stream.readline()  # greeting
            ready.wait(60)
            i = 0
            while not stop.is_set():  # keep guessing: each answer, the next guess
                i += 1
                sock.sendall(b"a%d LOGIN guess%d-%d@example.com wrong\r\n" % (i, n, i))
                if not stream.readline():
                    return
        except (OSError, threading.BrokenBarrierError):
            return

    threads = [
        threading.Thread(target=attacker, args=(ip, n), daemon=True)
        for ip in ("127.0.2.1", "127.0.3.1")
        for n in range(45)
    ]
    for t in threads:
        t.start()
    try:
        ready.wait(60)
        during = round_trip(serve, "during")
        fresh_start = time.monotonic()
        assert login(port, BOB, "bob-pw", "127.0.1.1") == "OK"  # a login that must verify
        fresh = time.monotonic() - fresh_start
    finally:
        stop.set()
        with lock:
            for sock in sockets:
                sock.close()
        for t in threads:
            t.join(30)
    print(f"round trip {baseline:.2f}s before, {during:.2f}s during; fresh login {fresh:.2f}s")
    assert during < 2.0
    # A verifying login waits for at most a few hashes, not the flood's: 5 s on an idle
    # machine; on a loaded one (the baseline round trip, which verifies too, shows how
    # loaded) proportionally more. Starved by the flood it would take tens of seconds.
    assert fresh < max(5.0, 2 * baseline)
