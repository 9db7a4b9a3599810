"""A real authoritative DNS server (NLnet Labs' nsd) for tests, on a loopback high port.

Tests that need DNS (SPF, DKIM, DMARC, `mailstack check`) point mailstack's resolver
(`[dns] resolver = "127.0.0.1:<port>"`) at this server instead of mocking lookups, so the same
wire format, NXDOMAIN/NODATA distinctions and timeouts apply as in production.

Each instance lives in its own tmp dir: nsd.conf, the zone files, pid/xfrd/zonelist state and
the log. nsd runs in the foreground (`nsd -d`) as the current user (`username: ""`, no chroot,
no database), so it needs no root and touches nothing system-wide. Readiness is established by
querying the SOA of every zone with dnspython until nsd answers it authoritatively; stopping
sends SIGTERM to the PID we started (nsd's main process, which takes its children with it).

Usage from a test module or a conftest (bind the fixture to a module-level name so pytest
sees it; an assignment rather than an import keeps ruff's F811 quiet about the parameter):

    from tests.support import nsd
    from tests.support.nsd import NsdFactory

    nsd_server = nsd.nsd_server

    def test_something(nsd_server: NsdFactory) -> None:
        host, port = nsd_server({"example.com": ZONE_TEXT})
        ...
        nsd_server.stop()  # optional: e.g. to test what happens when DNS goes away
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

NSD = shutil.which("nsd") or "/usr/sbin/nsd"
NSD_CHECKZONE = shutil.which("nsd-checkzone") or "/usr/sbin/nsd-checkzone"

# How long nsd may take to load its zones and answer; generous because the machine is shared.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0


class NsdError(RuntimeError):
    """nsd could not be configured or started; the message carries nsd's own words."""


def _free_port() -> int:
    """A port that is free for both UDP and TCP on 127.0.0.1 right now (nsd needs both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise NsdError("no free UDP+TCP port on 127.0.0.1")


def _quote(value: str | Path) -> str:
    text = str(value)
    if '"' in text or "\n" in text:
        raise NsdError(f"unsupported character in nsd.conf value {text!r}")
    return f'"{text}"'


class NsdServer:
    """One nsd process serving `zones` ({origin: zone file text}) on 127.0.0.1:<port>."""

    def __init__(self, directory: Path, zones: Mapping[str, str | Path]) -> None:
        if not zones:
            raise NsdError("nsd needs at least one zone")
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = 0
        self.zones = {
            dns.name.from_text(origin).to_text(omit_final_dot=True).lower(): (
                text.read_text(encoding="utf-8") if isinstance(text, Path) else text
            )
            for origin, text in zones.items()
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "nsd.log"

    # -- files ---------------------------------------------------------------------------

    def _zone_file(self, origin: str) -> Path:
        return self.directory / f"{origin}.zone"

    def _write_files(self) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        for origin, text in self.zones.items():
            path = self._zone_file(origin)
            path.write_text(text, encoding="utf-8")
            # Fail fast with nsd's own diagnosis rather than a SERVFAILing zone later.
            check = subprocess.run(
                [NSD_CHECKZONE, origin, str(path)], capture_output=True, text=True, check=False
            )
            if check.returncode != 0:
                raise NsdError(f"zone {origin} is invalid: {(check.stdout + check.stderr).strip()}")
        d = self.directory
        lines = [
            "server:",
            f"    ip-address: 127.0.0.1@{self.port}",
            f"    port: {self.port}",
            '    username: ""',  # no privilege drop: we are whoever runs the tests
            '    chroot: ""',
            f"    zonesdir: {_quote(d)}",
            f"    pidfile: {_quote(d / 'nsd.pid')}",
            '    database: ""',  # nsd 4.x: serve straight from the zone files
            f"    xfrdfile: {_quote(d / 'xfrd.state')}",
            f"    xfrdir: {_quote(d)}",
            f"    zonelistfile: {_quote(d / 'zone.list')}",
            f"    logfile: {_quote(self.log_path)}",
            "    verbosity: 1",
            "    server-count: 1",  # the machine is small and shared
            "    hide-version: yes",
            "remote-control:",
            "    control-enable: no",
        ]
        for origin in self.zones:
            lines += [
                "zone:",
                f"    name: {_quote(origin)}",
                f"    zonefile: {_quote(self._zone_file(origin).name)}",
            ]
        conf = d / "nsd.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        """Start nsd and return (host, port) once it answers for every zone."""
        last_error = ""
        for _ in range(5):  # the free port can be taken between probing and nsd's bind
            self.port = _free_port()
            conf = self._write_files()
            with contextlib.suppress(FileNotFoundError):
                self.log_path.unlink()
            with open(self.directory / "nsd.stderr", "wb") as stderr:
                self.process = subprocess.Popen(
                    [NSD, "-d", "-c", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            try:
                self._wait_ready()
            except NsdError as exc:
                last_error = str(exc)
                self.stop()
                if "address already in use" in last_error.lower():
                    continue
                raise
            return self.host, self.port
        raise NsdError(f"nsd did not start: {last_error}")

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        pending = list(self.zones)
        while pending:
            if (code := self.process.poll()) is not None:
                stderr = (self.directory / "nsd.stderr").read_text(errors="replace")
                raise NsdError(f"nsd exited with status {code}: {stderr.strip()} {self.log()}")
            if time.monotonic() > deadline:
                raise NsdError(f"nsd did not answer within {START_TIMEOUT_S}s: {self.log()}")
            if self._answers_soa(pending[0]):
                pending.pop(0)

    def _answers_soa(self, origin: str) -> bool:
        query = dns.message.make_query(origin, dns.rdatatype.SOA)
        try:
            # Each attempt is itself the wait: a short per-query timeout, not a sleep.
            response = dns.query.udp(query, self.host, port=self.port, timeout=0.2)
        except (dns.exception.Timeout, OSError):
            return False
        return bool(
            response.rcode() == dns.rcode.NOERROR
            and response.flags & dns.flags.AA
            and response.answer
        )

    def stop(self) -> None:
        """SIGTERM the nsd we started (by PID) and wait for it; SIGKILL if it lingers."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NsdFactory:
    """What the `nsd_server` fixture yields: call it with zones, get (host, port)."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self.servers: list[NsdServer] = []

    def __call__(self, zones: Mapping[str, str | Path]) -> tuple[str, int]:
        server = NsdServer(self._base / f"nsd{len(self.servers)}", zones)
        self.servers.append(server)
        return server.start()

    @property
    def last(self) -> NsdServer:
        return self.servers[-1]

    def stop(self) -> None:
        """Stop every nsd this factory started (the fixture also does this at teardown)."""
        for server in self.servers:
            server.stop()


@pytest.fixture
def nsd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NsdFactory]:
    """Factory fixture: `host, port = nsd_server({"example.com": zone_text})`."""
    if not os.access(NSD, os.X_OK):
        pytest.fail(f"nsd is not installed ({NSD}); the test setup installs the Debian package")
    factory = NsdFactory(tmp_path_factory.mktemp("nsd"))
    try:
        yield factory
    finally:
        factory.stop()
