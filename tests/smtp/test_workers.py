"""`serve` with SMTP worker processes: the MX's sessions run in children of the main process.

Real `mailstack serve` processes, real sockets. What must hold whatever process serves a
connection: mail is delivered, IMAP IDLE in the main process hears of it, the connection limits
count every worker's connections, a dead worker is replaced, SIGHUP reaches the workers' STARTTLS
and no worker outlives a killed main process.
"""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import install_new_certificate, run_cli
from tests.support.serve import ServeProcess

ALICE = "alice@example.com"
PASSWORD = "correct horse battery staple"
_READY = re.compile(r"SMTP worker (\d+) ready \(pid (\d+)\)")


def _configure(root: Path, **smtp: int) -> None:
    cfg = root / "mailstack.toml"
    text = cfg.read_text()
    for key, value in smtp.items():
        text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text, count=1)
        assert n == 1, key
    cfg.write_text(text)


@pytest.fixture
def served(deployment_dir: Path) -> Iterator[tuple[ServeProcess, dict[int, int]]]:
    """serve with two SMTP workers and at most 2 connections per client address; yields the
    process and each worker's pid."""
    _configure(deployment_dir, workers=2, max_connections_per_ip=2)
    assert (
        run_cli(
            deployment_dir, "user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n"
        ).returncode
        == 0
    )
    proc = ServeProcess(deployment_dir, "--log-level", "DEBUG")
    proc.start()
    try:
        pids = {int(m[1]): int(m[2]) for line in proc.log if (m := _READY.search(line))}
        assert sorted(pids) == [1, 2], "".join(proc.log)
        yield proc, pids
    finally:
        assert proc.stop() == 0, "".join(proc.log)


def _banner(port: int) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock, sock.recv(1024)


def _wait_all(proc: ServeProcess, needles: list[str]) -> None:
    """Until every needle was logged, in whatever order the processes wrote them."""
    while not all(any(n in line for line in proc.log) for n in needles):
        proc.wait_for("")  # the next line, whatever it is (fails at serve's timeout)


def _admitted(port: int) -> bool:
    sock, hello = _banner(port)
    sock.close()
    return hello.startswith(b"220 ")


def _send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail(
            "sender@example.org", [ALICE], f"Subject: n{n}\r\n\r\nmessage {n}\r\n".encode()
        )


def _inbox(root: Path) -> list[Path]:
    maildir = root / "mail/example.com/alice"
    return sorted([*(maildir / "new").iterdir(), *(maildir / "cur").iterdir()])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def _until(predicate: object, what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s}s: {what}")
        time.sleep(0.05)


def test_workers_deliver_and_imap_idle_in_the_main_process_hears_it(
    served: tuple[ServeProcess, dict[int, int]], deployment_dir: Path
) -> None:
    proc, _pids = served
    with socket.create_connection(("127.0.0.1", proc.port("imap")), timeout=20) as imap:
        f = imap.makefile("rwb")
        f.readline()
        f.write(f'a LOGIN {ALICE} "{PASSWORD}"\r\n'.encode())
        f.flush()
        assert b"a OK" in f.readline() or b"a OK" in f.readline()
        f.write(b"b SELECT INBOX\r\n")
        f.flush()
        while not (line := f.readline()).startswith(b"b "):
            pass
        assert line.startswith(b"b OK")
        f.write(b"c IDLE\r\n")
        f.flush()
        assert f.readline().startswith(b"+ ")
        # Two connections open at once: the hand-off gives each to another worker.
        with (
            smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=10) as one,
            smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=10) as two,
        ):
            for n in range(4):
                (one, two)[n % 2].sendmail(
                    "sender@example.org", [ALICE], f"Subject: n{n}\r\n\r\nbody\r\n".encode()
                )
        # The workers' deliveries reach the main process's IDLE session as EXISTS.
        seen = 0
        while seen < 4:
            line = f.readline()
            assert line, "IMAP connection closed"
            if m := re.match(rb"\* (\d+) EXISTS", line):
                seen = int(m[1])
        f.write(b"DONE\r\n")
        f.flush()
    assert len(_inbox(deployment_dir)) == 4
    _wait_all(proc, [f"SMTP worker {n} delivered to {ALICE} INBOX" for n in (1, 2)])


def test_connection_limits_count_every_workers_connections(
    served: tuple[ServeProcess, dict[int, int]],
) -> None:
    proc, _pids = served
    port = proc.port("smtp")
    first, hello1 = _banner(port)
    second, hello2 = _banner(port)
    assert hello1.startswith(b"220 ") and hello2.startswith(b"220 ")
    third, refused = _banner(port)
    third.close()
    assert refused.startswith(b"421 4.7.0 Too many connections from your address")
    first.close()  # its worker reports the close; the slot comes back
    _until(lambda: _admitted(port), "a slot after a connection closed")
    second.close()


def test_a_killed_worker_is_replaced_and_its_connections_released(
    served: tuple[ServeProcess, dict[int, int]], deployment_dir: Path
) -> None:
    proc, pids = served
    port = proc.port("smtp")
    held, hello = _banner(port)  # both idle: the hand-off picks worker 1
    assert hello.startswith(b"220 ")
    os.kill(pids[1], signal.SIGKILL)
    proc.wait_for("SMTP worker 1 exited")
    line = proc.wait_for("SMTP worker 1 ready")
    m = _READY.search(line)
    assert m is not None and int(m[2]) != pids[1]
    held.close()
    # The dead worker's connection no longer counts: two at once are admitted again.
    a, hello_a = _banner(port)
    b, hello_b = _banner(port)
    a.close()
    b.close()
    assert hello_a.startswith(b"220 ") and hello_b.startswith(b"220 ")
    _until(lambda: _admitted(port), "slots back after closing both")
    for n in range(3):
        # One at a time, each after a slot is seen free: a worker reports a close to the main
        # process a moment after the client sees it, later still on a loaded machine.
        _until(lambda: _admitted(port), "a free slot")
        _send(port, n)
    assert len(_inbox(deployment_dir)) == 3


def test_sighup_reloads_the_workers_starttls_certificate(
    served: tuple[ServeProcess, dict[int, int]], deployment_dir: Path
) -> None:
    proc, _pids = served
    ca_file = install_new_certificate(deployment_dir)
    proc.signal(signal.SIGHUP)
    _wait_all(proc, [f"SMTP worker w{n}: SIGHUP: certificate reloaded" for n in (1, 2)])
    # The workers' lines name their component (run as `python -m`, it had been "__main__").
    reloaded = [line for line in proc.log if "SMTP worker w" in line and "reloaded" in line]
    assert len(reloaded) == 2
    assert all(" INFO workers SMTP worker w" in line for line in reloaded)
    assert not any("__main__" in line for line in proc.log)
    trust_new = ssl.create_default_context(cafile=str(ca_file))
    trust_new.check_hostname = False  # we connect to 127.0.0.1; the chain is what we check
    with (  # both at once: one connection per worker
        smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=10) as one,
        smtplib.SMTP("127.0.0.1", proc.port("smtp"), timeout=10) as two,
    ):
        for smtp in (one, two):
            smtp.starttls(context=trust_new)  # verifies against the new CA only
            assert smtp.noop()[0] == 250


def test_workers_stop_when_the_main_process_is_killed(deployment_dir: Path) -> None:
    _configure(deployment_dir, workers=2)
    proc = ServeProcess(deployment_dir).start()
    pids = [int(m[2]) for line in proc.log if (m := _READY.search(line))]
    assert len(pids) == 2
    proc.signal(signal.SIGKILL)
    proc.stop()
    _until(lambda: all(_gone(pid) for pid in pids), "workers exit after the main process died")


def test_workers_config_is_checked(deployment_dir: Path) -> None:
    _configure(deployment_dir, workers=-5)
    result = run_cli(deployment_dir, "config", "validate")
    assert result.returncode == 1
    assert "smtp.workers" in result.stderr
    assert "Traceback" not in result.stderr


def test_workers_zero_serves_smtp_in_the_main_process(deployment_dir: Path) -> None:
    # What a single-core host gets by default: no worker processes, the same MX.
    _configure(deployment_dir, workers=0)
    assert (
        run_cli(
            deployment_dir, "user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n"
        ).returncode
        == 0
    )
    proc = ServeProcess(deployment_dir).start()
    try:
        assert not any("SMTP worker" in line for line in proc.log)
        _send(proc.port("smtp"), 1)
        assert len(_inbox(deployment_dir)) == 1
    finally:
        assert proc.stop() == 0, "".join(proc.log)
    assert not any("SMTP worker" in line for line in proc.log)
