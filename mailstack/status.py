"""`mailstack status`: is it working? One look at a deployment, for a person or a script.

A running `serve` keeps `run/serve.json` (ServeStatus: pid, start time, version, the addresses
it listens on, its SMTP workers' pids), written when it is up and whenever a worker restarts,
removed when it stops; `check` leaves `run/last-check.json`. `collect` reads those and looks
for itself: is that pid alive and a mailstack process, does each listener accept a TCP
connection, are the workers alive; plus the queue, the certificate's expiry and free disk.
Exit status (the CLI): 0 when serve is running, 1 when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from mailstack import __version__
from mailstack.base.config import format_hostport, parse_hostport
from mailstack.base.fsutil import atomic_write, ensure_dir
from mailstack.base.paths import StatePaths

CONNECT_TIMEOUT_S = 1.0


@dataclass
class ServeStatus:
    """What `serve` writes about itself (run/serve.json)."""

    paths: StatePaths
    pid: int
    started: float
    version: str
    hostname: str
    listeners: list[tuple[str, str]]  # (service, "host:port") as bound

    @classmethod
    def starting(
        cls, paths: StatePaths, hostname: str, servers: list[tuple[str, asyncio.Server]]
    ) -> ServeStatus:
        bound = [
            (service, format_hostport(*sock.getsockname()[:2]))
            for service, server in servers
            for sock in server.sockets
        ]
        return cls(paths, os.getpid(), time.time(), __version__, hostname, bound)

    def write(self, worker_pids: list[int]) -> None:
        record = {
            "pid": self.pid,
            "started": self.started,
            "version": self.version,
            "hostname": self.hostname,
            "listeners": [{"service": s, "address": a} for s, a in self.listeners],
            "workers": worker_pids,
        }
        ensure_dir(self.paths.run_dir, mode=0o750)
        atomic_write(self.paths.serve_status, json.dumps(record) + "\n", mode=0o640)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.paths.serve_status.unlink()


@dataclass
class Listener:
    service: str
    address: str
    accepting: bool


@dataclass
class Status:
    running: bool
    reason: str  # why not running, or "" when it is
    pid: int | None = None
    version: str | None = None
    uptime_s: float | None = None
    listeners: list[Listener] = field(default_factory=list)
    workers: dict[str, bool] = field(default_factory=dict)  # pid -> alive
    queue_size: int | None = None
    queue_oldest_s: float | None = None
    certificate_expires: float | None = None  # epoch seconds
    certificate_days_left: float | None = None
    last_check: dict[str, Any] | None = None
    disk_free_bytes: int | None = None
    # The last ACME issuance or renewal attempt (acme/state.json); None without ACME.
    acme: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_mailstack(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user: look at its command line
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the pid
    return b"mailstack" in cmdline


def _accepts(address: str) -> bool:
    host, port = parse_hostport(address)
    # A wildcard listener answers on loopback too.
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _certificate_expiry(path: Path) -> float | None:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None
    return cert.not_valid_after_utc.timestamp()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def collect(root: Path, *, now: float | None = None) -> Status:
    from mailstack.base.config import load_config
    from mailstack.delivery.queue import OutboundQueue

    now = time.time() if now is None else now
    paths = StatePaths(root)
    serve = _read_json(paths.serve_status) or {}
    pid = serve.get("pid")
    if not isinstance(pid, int):
        status = Status(False, "serve is not running (no run/serve.json)")
    elif not _is_mailstack(pid):
        status = Status(False, f"serve is not running (pid {pid} is gone)", pid=pid)
    else:
        status = Status(True, "", pid=pid, version=str(serve.get("version")))
        started = serve.get("started")
        if isinstance(started, int | float):
            status.uptime_s = now - started
        for item in serve.get("listeners") or []:
            service, address = str(item.get("service")), str(item.get("address"))
            status.listeners.append(Listener(service, address, _accepts(address)))
        for worker in serve.get("workers") or []:
            if isinstance(worker, int):
                status.workers[str(worker)] = _is_mailstack(worker)
    with contextlib.suppress(Exception):  # a broken config or spool: the rest still helps
        queue = OutboundQueue(load_config(paths.config), paths)
        entries = queue.list()
        status.queue_size = len(entries)
        if entries:
            status.queue_oldest_s = now - min(e.created for e in entries)
    expires = _certificate_expiry(paths.tls_cert)
    if expires is not None:
        status.certificate_expires = expires
        status.certificate_days_left = (expires - now) / 86400
    status.last_check = _read_json(paths.last_check)
    status.acme = _read_json(paths.acme_state)
    with contextlib.suppress(OSError):
        status.disk_free_bytes = shutil.disk_usage(root).free
    return status


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {seconds % 60}s"


def render(status: Status, *, now: float | None = None) -> list[str]:
    """Plain lines for a terminal, most important first."""
    now = time.time() if now is None else now
    lines = []
    if status.running:
        uptime = _duration(status.uptime_s) if status.uptime_s is not None else "?"
        lines.append(f"serve      running (pid {status.pid}, up {uptime}, {status.version})")
    else:
        lines.append(f"serve      NOT RUNNING: {status.reason}")
    for listener in status.listeners:
        state = "accepting" if listener.accepting else "NOT ACCEPTING"
        lines.append(f"  {listener.service:<12} {listener.address:<24} {state}")
    if status.workers:
        alive = sum(status.workers.values())
        lines.append(f"workers    {alive} of {len(status.workers)} SMTP worker(s) alive")
    if status.queue_size is not None:
        oldest = (
            f", oldest {_duration(status.queue_oldest_s)}"
            if status.queue_oldest_s is not None
            else ""
        )
        lines.append(f"queue      {status.queue_size} message(s){oldest}")
    if status.certificate_days_left is not None:
        days = status.certificate_days_left
        note = "EXPIRED" if days < 0 else ("renew soon" if days < 30 else "ok")
        lines.append(f"tls        certificate expires in {days:.0f} days ({note})")
    if status.acme:
        when = _duration(now - float(status.acme.get("time", now)))
        state = "ok" if status.acme.get("ok") else "FAILED"
        lines.append(f"acme       {state} {when} ago: {status.acme.get('message', '')}")
    check = status.last_check
    if check:
        when = _duration(now - float(check.get("time", now)))
        verdict = "passed" if check.get("ok") else f"FAILED: {', '.join(check.get('failed', []))}"
        lines.append(f"check      last run {when} ago: {verdict}")
    else:
        lines.append("check      never run (mailstack check)")
    if status.disk_free_bytes is not None:
        lines.append(f"disk       {status.disk_free_bytes / 2**30:.1f} GiB free")
    return lines
