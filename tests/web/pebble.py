"""A real ACME CA on loopback: Let's Encrypt's test server pebble (Debian package `pebble`).

Its own HTTPS listener uses a trustme certificate (`ca_bundle` trusts it); its validation
authority resolves names through `dns` (a test nsd serving the deployment's zone) and fetches
HTTP-01 challenges on `http_port` (the deployment's listen.http port) and makes TLS-ALPN-01
handshakes to `tls_port` (its listen.https port; 1, nothing, when not given). No random validation
sleeps, no rejected nonces: the tests wait on events, not luck. Stopped by its PID.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import ssl
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import trustme

from tests.checks.conftest import free_ports


class Pebble:
    def __init__(
        self,
        directory: Path,
        *,
        http_port: int,
        dns: str,
        validity_s: int | None = None,
        tls_port: int = 1,
    ) -> None:
        self.directory = directory
        self.http_port = http_port
        self.tls_port = tls_port
        self.dns = dns
        self.validity_s = validity_s
        self.port, self.management_port = free_ports(2)
        self.proc: subprocess.Popen[str] | None = None
        self._pump: threading.Thread | None = None
        self.log: list[str] = []
        self.ca_bundle = directory / "pebble-ca.pem"

    @property
    def directory_url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start(self) -> Pebble:
        if shutil.which("pebble") is None:  # scripts/test installs it: fail, never skip
            pytest.fail("pebble is not installed (apt-get install pebble)")
        self.directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.directory / "cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.directory / "key.pem"))
        ca.cert_pem.write_to_path(str(self.ca_bundle))
        config: dict[str, object] = {
            "listenAddress": f"127.0.0.1:{self.port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.directory / "cert.pem"),
            "privateKey": str(self.directory / "key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity_s is not None:
            config["certificateValidityPeriod"] = self.validity_s
        path = self.directory / "pebble.json"
        path.write_text(json.dumps({"pebble": config}))
        env = os.environ | {"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
        self.proc = subprocess.Popen(
            ["pebble", "-config", str(path), "-dnsserver", self.dns],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            with self.proc.stdout as stream:
                for line in stream:
                    self.log.append(line)
                    lines.put(line)
            lines.put(None)

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()
        deadline = time.monotonic() + 30
        while (left := deadline - time.monotonic()) > 0:
            line = lines.get(timeout=left)
            if line is None:
                raise RuntimeError("pebble exited:\n" + "".join(self.log))
            if "ACME directory available at" in line:
                return self
        raise TimeoutError("pebble did not start:\n" + "".join(self.log))

    def root_pem(self) -> bytes:
        """The root pebble made at start (it signs every certificate it issues)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_bundle))
        url = f"https://127.0.0.1:{self.management_port}/roots/0"
        with urllib.request.urlopen(url, context=ctx, timeout=10) as response:
            return bytes(response.read())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._pump is not None:
            self._pump.join(timeout=10)  # it closes the pipe at EOF

    def __enter__(self) -> Pebble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
