"""A real validating resolver for tests: a DNSSEC-signed zone on nsd, NLnet Labs' unbound in
front of it with that zone's key as its trust anchor, both on loopback high ports.

`sign_zone(directory, origin, text)` signs zone text with ldns (ldns-keygen, ldns-signzone;
one ECDSA P-256 key as KSK and ZSK) and returns (signed text, DS record of the key).
`UnboundServer(directory, anchors={origin: ds}, stubs={origin: nsd_port}).start()` runs
unbound in the foreground as the current user, resolving those zones only through the stub
(nsd), validating them against the DS; answers that validate carry the AD bit, answers whose
signatures do not validate are SERVFAIL, as from any validating resolver in production.
Readiness: a query answered with AD. Stopped by SIGTERM to the PID we started.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from tests.support.nsd import _free_port

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"
START_TIMEOUT_S = 20.0


class UnboundError(RuntimeError):
    pass


def sign_zone(directory: Path, origin: str, text: str) -> tuple[str, str]:
    """(signed zone text, DS record text) for `origin` (e.g. "test.")."""
    directory.mkdir(parents=True, exist_ok=True)
    unsigned = directory / f"{origin}zone"
    unsigned.write_text(text)
    keygen = subprocess.run(
        ["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    base = keygen.stdout.strip()  # "Ktest.+013+12345"
    expire = time.strftime("%Y%m%d", time.gmtime(time.time() + 30 * 86400))
    subprocess.run(
        ["ldns-signzone", "-e", expire, "-o", origin, str(unsigned), base],
        cwd=directory,
        capture_output=True,
        text=True,
        check=True,
    )
    signed = Path(f"{unsigned}.signed").read_text()
    ds = (directory / f"{base}.ds").read_text().strip()
    return signed, ds


class UnboundServer:
    def __init__(
        self, directory: Path, *, anchors: Mapping[str, str], stubs: Mapping[str, int]
    ) -> None:
        self.directory = directory
        self.anchors = anchors
        self.stubs = stubs
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _write_conf(self) -> Path:
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        lines = [
            "server:",
            "    interface: 127.0.0.1",
            f"    port: {self.port}",
            "    do-daemonize: no",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{d}"',
            f'    pidfile: "{d / "unbound.pid"}"',
            "    use-syslog: no",
            f'    logfile: "{d / "unbound.log"}"',
            "    verbosity: 1",
            "    num-threads: 1",
            "    access-control: 127.0.0.0/8 allow",
            "    do-not-query-localhost: no",  # the stub (nsd) is on loopback
            '    module-config: "validator iterator"',
            "    qname-minimisation: no",
            "    val-log-level: 2",
            *(f'    trust-anchor: "{ds}"' for ds in self.anchors.values()),
            # unbound answers special-use names (RFC 6761: test., invalid., ...) itself
            # unless told not to
            *(f'    local-zone: "{zone}" nodefault' for zone in self.stubs),
            "remote-control:",
            "    control-enable: no",
        ]
        for zone, port in self.stubs.items():
            lines += ["stub-zone:", f'    name: "{zone}"', f"    stub-addr: 127.0.0.1@{port}"]
        conf = d / "unbound.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self, probe: str) -> int:
        """Start; return the port once `probe` (a name in a stub zone) validates."""
        for _ in range(5):
            self.port = _free_port()
            conf = self._write_conf()
            with open(self.directory / "unbound.stderr", "wb") as stderr:
                self.process = subprocess.Popen(
                    [UNBOUND, "-d", "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            try:
                self._wait_ready(probe)
            except UnboundError as exc:
                self.stop()
                if "address already in use" in str(exc).lower():
                    continue
                raise
            return self.port
        raise UnboundError("unbound did not start: no free port")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / "unbound.log").read_text(errors="replace") + (
                self.directory / "unbound.stderr"
            ).read_text(errors="replace")
        return ""

    def _wait_ready(self, probe: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        query = dns.message.make_query(probe, dns.rdatatype.A)
        query.flags |= dns.flags.AD
        while True:
            if self.process.poll() is not None:
                raise UnboundError(f"unbound exited: {self.log()}")
            if time.monotonic() > deadline:
                raise UnboundError(f"unbound did not validate {probe}: {self.log()}")
            try:
                response = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.5)
            except (dns.exception.Timeout, OSError):
                continue
            if response.flags & dns.flags.AD:
                return
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
