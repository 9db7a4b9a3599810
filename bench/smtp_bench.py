#!/usr/bin/env python3
"""SMTP receiving benchmark: mailstack vs an isolated Postfix, both delivering to Maildir.

Not a test (pytest does not collect bench/). Run from the repository root, as root (Postfix's
master starts as root and drops to the `postfix` user):

    python bench/smtp_bench.py --write docs/benchmarks.md

What it measures, per server, message size (10 KB, 100 KB) and concurrency (1, 4, 16 senders):
- throughput: messages accepted (250 after DATA) *and* present in the recipients' Maildir
  `new/` directories, per second of wall time from the first connection until the last file
  is there. mailstack answers 250 only after the message is fsync'd in the Maildir; Postfix
  answers 250 once its queue file is fsync'd and delivers afterwards, so its delivery tail is
  included by waiting for the files;
- latency: per-message time from MAIL FROM to the 250 after DATA (p50, p99).
Each sender keeps one connection and sends its messages one after another (no pipelining),
to one of four recipients in turn.

Then 25 MB messages from 4 senders while a probe thread sends NOOP on its own connection to
the same SMTP port every few milliseconds: the worst NOOP round trip is an upper bound on how
long the server's event loop (mailstack: one asyncio loop for every connection) was stalled.

The servers:
- mailstack: `mailstack serve` as a subprocess (a fresh `mailstack init` deployment on
  127.0.0.1 with ephemeral ports; `smtp.verify_inbound = false`, since Postfix here does no
  SPF/DKIM/DMARC either);
- Postfix: an instance with its own config/queue dirs (tests/support/postfix.py) whose
  `virtual(8)` agent delivers to Maildirs.
Every request loop is bounded in count and time; only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Last, so the installed mailstack (not the checkout's folders) is imported; tests.* from here.
sys.path.append(str(REPO))

from tests.support.postfix import MaildirTarget, PostfixInstance  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

DOMAIN = "bench.example"
USERS = [f"u{i}" for i in range(1, 5)]
PASSWORD = "bench-password"  # noqa: S105 - throwaway accounts of a loopback benchmark
SCENARIO_TIME_CAP_S = 60.0  # a scenario stops sending after this long, whatever its count
DELIVERY_WAIT_S = 180.0


# -- messages --------------------------------------------------------------------------------


def make_message(size: int, seq: int) -> bytes:
    """A plain message of about `size` bytes, CRLF lines, none starting with a dot."""
    head = (
        f"From: Bench <bench@sender.example>\r\nTo: <u1@{DOMAIN}>\r\n"
        f"Subject: bench {seq}\r\nMessage-ID: <{seq}.{time.time_ns()}@sender.example>\r\n"
        "Date: Sun, 22 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789xy\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


# -- a minimal SMTP client (lock-step, no pipelining), the same for both servers ---------------


class SmtpClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> SmtpClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        client = cls(reader, writer)
        await client.expect(220)
        await client.command(b"EHLO bench.client.example", 250)
        return client

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 300)
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode(errors="replace").rstrip())
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def expect(self, code: int) -> None:
        got, text = await self.reply()
        if got != code:
            raise RuntimeError(f"expected {code}, got {text!r}")

    async def command(self, line: bytes, code: int) -> None:
        self.writer.write(line + b"\r\n")
        await self.expect(code)

    async def send_message(self, rcpt: str, message: bytes) -> None:
        await self.command(b"MAIL FROM:<bench@sender.example> SIZE=%d" % len(message), 250)
        await self.command(f"RCPT TO:<{rcpt}>".encode(), 250)
        await self.command(b"DATA", 354)
        self.writer.write(message)
        self.writer.write(b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n")
        await self.writer.drain()
        await self.expect(250)

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"QUIT", 221)
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    host: str
    port: int
    maildirs: list[Path]
    stop: Callable[[], None]
    imap_port: int | None = None  # mailstack: IMAP in the same service, probed during the stall

    def delivered(self) -> int:
        total = 0
        for md in self.maildirs:
            with contextlib.suppress(FileNotFoundError), os.scandir(md / "new") as it:
                total += sum(1 for _ in it)
        return total


def start_mailstack(workdir: Path) -> Server:
    root = workdir / "mailstack"
    env = {k: v for k, v in os.environ.items() if k not in ("MAILSTACK_DIR", "PYTHONPATH")}

    def cli(*args: str, stdin: str | None = None) -> None:
        subprocess.run(
            # The installed console script: `python -m` from the checkout would import its
            # folders instead of the installed package.
            [str(Path(sys.executable).with_name("mailstack")), "--dir", str(root), *args],
            input=stdin,
            text=True,
            check=True,
            capture_output=True,
            env=env,
            cwd=REPO,
        )

    cli(
        "init",
        "--domain",
        DOMAIN,
        "--hostname",
        f"mx.{DOMAIN}",
        "--ipv4",
        "127.0.0.1",
        "--listen-host",
        "127.0.0.1",
        "--smtp-port",
        "0",
        "--submission-port",
        "0",
        "--submissions-port",
        "0",
        "--imap-port",
        "0",
        "--imaps-port",
        "0",
        "--non-interactive",
    )
    config = root / "mailstack.toml"
    text = config.read_text()
    if "verify_inbound = true" not in text:
        raise RuntimeError("cannot find smtp.verify_inbound in the generated config")
    text = text.replace("verify_inbound = true", "verify_inbound = false")
    if os.environ.get("BENCH_SMTP_WORKERS"):  # compare worker counts: e.g. 0 (in-process), 2, 3
        text = text.replace("workers = -1", f"workers = {os.environ['BENCH_SMTP_WORKERS']}")
    config.write_text(text)
    for user in USERS:
        cli("user", "add", f"{user}@{DOMAIN}", "--password-stdin", stdin=PASSWORD + "\n")
    serve = ServeProcess(root, timeout_s=60).start()
    host, port = serve.listeners["smtp"][0]
    maildirs = [root / "mail" / DOMAIN / user for user in USERS]

    def stop() -> None:
        serve.stop()

    return Server("mailstack", host, port, maildirs, stop, imap_port=serve.port("imap"))


def start_postfix(workdir: Path) -> Server:
    base = workdir / "postfix-mail"
    instance = PostfixInstance(
        workdir / "postfix",
        hostname="postfix.bench.example",
        maildir=MaildirTarget(DOMAIN, base, USERS),
    )
    host, port = instance.start()
    maildirs = [base / DOMAIN / user for user in USERS]
    return Server("postfix", host, port, maildirs, instance.stop)


# -- scenarios ---------------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    size: int
    senders: int
    messages: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    round: int = 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


async def wait_delivered(server: Server, target: int) -> None:
    deadline = time.monotonic() + DELIVERY_WAIT_S
    while server.delivered() < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{server.name}: {server.delivered()} of {target} delivered")
        await asyncio.sleep(0.01)  # polling the file system: there is no event to wait on


async def run_scenario(server: Server, size: int, senders: int, per_sender: int) -> Result:
    messages = [make_message(size, i) for i in range(per_sender)]
    before = server.delivered()
    latencies: list[float] = []
    sent = 0
    start = time.perf_counter()
    stop_at = start + SCENARIO_TIME_CAP_S

    async def sender(n: int) -> None:
        nonlocal sent
        client = await SmtpClient.connect(server.host, server.port)
        try:
            for i, msg in enumerate(messages):
                if time.perf_counter() > stop_at:
                    break
                rcpt = f"{USERS[(n + i) % len(USERS)]}@{DOMAIN}"
                t0 = time.perf_counter()
                await client.send_message(rcpt, msg)
                latencies.append(time.perf_counter() - t0)
                sent += 1
        finally:
            await client.quit()

    await asyncio.gather(*(sender(n) for n in range(senders)))
    await wait_delivered(server, before + sent)
    seconds = time.perf_counter() - start
    return Result(
        server.name,
        size,
        senders,
        sent,
        round(seconds, 3),
        round(sent / seconds, 1),
        round(percentile(latencies, 50) * 1000, 2),
        round(percentile(latencies, 99) * 1000, 2),
    )


@dataclass
class StallResult:
    server: str
    probe: str  # the protocol of the NOOPs: smtp (the senders' port) or imap
    messages: int
    seconds: float
    idle_noop_ms: float
    noops: int
    worst_noop_ms: float
    p99_noop_ms: float


# The probe runs in a process of its own: as a thread of this process it shared the GIL with the
# senders here, and its round trips measured this process's stalls as much as the server's.
PROBE = r"""
import json, select, socket, sys, time
host, port, interval_s, proto = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
max_probes = 200_000
rtts = []
with socket.create_connection((host, port), timeout=120) as s:
    f = s.makefile("rb")
    def smtp_reply():
        while True:
            line = f.readline()
            if not line or line[3:4] != b"-":
                return line
    def imap_reply(tag):
        while True:
            line = f.readline()
            if not line or line.startswith(tag + b" "):
                return line
    if proto == "smtp":
        smtp_reply()
        s.sendall(b"EHLO probe.example\r\n")
        smtp_reply()
        probe, ok = (lambda: (s.sendall(b"NOOP\r\n"), smtp_reply())[1]), b"250"
    else:
        f.readline()
        s.sendall(b'l LOGIN ' + sys.argv[5].encode() + b' "' + sys.argv[6].encode() + b'"\r\n')
        if not imap_reply(b"l").startswith(b"l OK"):
            raise SystemExit("IMAP login refused")
        probe, ok = (lambda: (s.sendall(b"n NOOP\r\n"), imap_reply(b"n"))[1]), b"n OK"
    print("ready", flush=True)
    while len(rtts) < max_probes:
        t0 = time.perf_counter()
        if not probe().startswith(ok):
            raise SystemExit("NOOP refused")
        rtts.append(time.perf_counter() - t0)
        if select.select([sys.stdin], [], [], interval_s)[0]:
            break  # told to stop
print(json.dumps(rtts), flush=True)
"""


class NoopProbe:
    """NOOP round trips every `interval_s` on one connection, in a child process, until stop()."""

    def __init__(
        self, host: str, port: int, interval_s: float = 0.005, *, imap_login: str = ""
    ) -> None:
        proto = ["imap", imap_login, PASSWORD] if imap_login else ["smtp"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROBE, host, str(port), str(interval_s), *proto],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"NOOP probe failed (exit {self.proc.wait(60)})")

    def stop(self) -> list[float]:
        out, _ = self.proc.communicate("stop\n", timeout=120)
        if self.proc.returncode != 0:
            raise RuntimeError(f"NOOP probe failed (exit {self.proc.returncode})")
        rtts: list[float] = json.loads(out.strip().splitlines()[-1])
        return rtts


async def run_stall(server: Server, size: int, senders: int, per_sender: int) -> list[StallResult]:
    """One result per probe: SMTP NOOPs on the senders' port and, for mailstack, IMAP NOOPs."""
    probes: dict[str, tuple[int, str]] = {"smtp": (server.port, "")}
    if server.imap_port is not None:
        probes["imap"] = (server.imap_port, f"{USERS[0]}@{DOMAIN}")
    idle: dict[str, list[float]] = {}
    for kind, (port, login) in probes.items():
        p = NoopProbe(server.host, port, imap_login=login)
        await asyncio.to_thread(p.wait_ready)
        await asyncio.sleep(0.5)  # half a second of idle round trips as the reference
        idle[kind] = await asyncio.to_thread(p.stop)
    running = {
        kind: NoopProbe(server.host, port, imap_login=login)
        for kind, (port, login) in probes.items()
    }
    for p in running.values():
        await asyncio.to_thread(p.wait_ready)
    message = make_message(size, 0)
    before = server.delivered()
    start = time.perf_counter()

    async def sender(n: int) -> None:
        client = await SmtpClient.connect(server.host, server.port)
        try:
            for i in range(per_sender):
                await client.send_message(f"{USERS[(n + i) % len(USERS)]}@{DOMAIN}", message)
        finally:
            await client.quit()

    rtts: dict[str, list[float]] = {}
    try:
        await asyncio.gather(*(sender(n) for n in range(senders)))
        await wait_delivered(server, before + senders * per_sender)
    finally:
        for kind, p in running.items():
            rtts[kind] = await asyncio.to_thread(p.stop)
    seconds = time.perf_counter() - start
    return [
        StallResult(
            server.name,
            kind,
            senders * per_sender,
            round(seconds, 2),
            round(statistics.median(idle[kind]) * 1000, 3),
            len(rtts[kind]),
            round(max(rtts[kind]) * 1000, 1),
            round(percentile(rtts[kind], 99) * 1000, 1),
        )
        for kind in probes
    ]


# -- report ------------------------------------------------------------------------------------


def machine_description() -> list[str]:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB RAM"
    postfix = subprocess.run(
        ["postconf", "-h", "-d", "mail_version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    disk = (
        subprocess.run(
            ["df", "-hT", tempfile.gettempdir()], capture_output=True, text=True, check=False
        )
        .stdout.splitlines()[-1]
        .split()
    )
    return [
        f"- CPU: {os.cpu_count()} cores, {cpu}; {mem}",
        f"- Kernel: {platform.system()} {platform.release()}; file system for the Maildirs "
        f"and queues: {disk[1] if len(disk) > 1 else '?'} ({tempfile.gettempdir()})",
        f"- Python {platform.python_version()}; Postfix {postfix}",
        "- Absolute numbers move with whatever else the cores do (this is a shared virtual "
        "machine); compare the ratios, each from two runs in the same minute.",
    ]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def _median_row(results: list[Result], server: str, size: int, senders: int) -> Result | None:
    rows = [r for r in results if (r.server, r.size, r.senders) == (server, size, senders)]
    if not rows:
        return None
    rows.sort(key=lambda r: r.per_second)
    mid = rows[len(rows) // 2]
    return Result(
        server,
        size,
        senders,
        mid.messages,
        mid.seconds,
        mid.per_second,
        round(statistics.median(r.p50_ms for r in rows), 2),
        round(statistics.median(r.p99_ms for r in rows), 2),
        len(rows),
    )


def _round_ratios(results: list[Result], size: int, senders: int) -> list[float]:
    """mailstack / Postfix msg/s of each round (both ran in the same minute)."""
    out = []
    for n in sorted({r.round for r in results}):
        pair = {
            r.server: r.per_second
            for r in results
            if (r.size, r.senders, r.round) == (size, senders, n)
        }
        if pair.get("postfix") and "mailstack" in pair:
            out.append(pair["mailstack"] / pair["postfix"])
    return out


def _workers_setting() -> str:
    return os.environ.get("BENCH_SMTP_WORKERS", "-1")


def _workers_used() -> int:
    from mailstack.workers.parent import worker_count

    return worker_count(int(_workers_setting()))


def render(results: list[Result], stalls: list[StallResult], command: str) -> str:
    rounds = max((r.round for r in results), default=1)
    lines = [
        "# Benchmarks",
        "",
        "## SMTP receiving: mailstack vs Postfix, delivering to Maildir",
        "",
        f"Run on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Rerun with:",
        "",
        "```sh",
        command,
        "```",
        "",
        "Machine:",
        "",
        *machine_description(),
        "",
        "Method (details in `bench/smtp_bench.py`): each sender holds one SMTP connection and "
        "sends messages one after another (no pipelining) to four Maildir recipients in turn. "
        "*msg/s* counts messages that were accepted **and** are in the recipient's Maildir "
        "`new/`, from the first connection until the last file is there. *p99* is the 99th "
        "percentile of MAIL FROM → 250-after-DATA. Ratios are mailstack / Postfix: above 1x "
        "means mailstack delivers more messages per second, or has the higher (worse) p99. "
        f"Each row ran {rounds} time(s), the two servers one after the other each time (same "
        "minute, same background load); the table shows each server's median run, the "
        "median of the per-run throughput ratios and the range of those ratios.",
        "",
        "What each side does per message:",
        "",
        f"- **mailstack** (`mailstack serve` with `smtp.workers = {_workers_setting()}`: "
        f"{_workers_used()} SMTP worker processes, each with its own asyncio loop; "
        "`smtp.verify_inbound = false` because this Postfix checks no SPF/DKIM/DMARC either; "
        "no DNSBL): the main process accepts, counts the connection limits and passes the "
        "socket to the least busy worker; in the worker, SMTP on the loop (aiosmtpd plus our "
        "command loop and DATA framer); at RCPT the recipient's routes come from a cache "
        "checked against the account database's `data_version` (a worker-thread hop for "
        "SQLite on a miss) and the quota from `maildirsize`; at the end of DATA the loop adds "
        "Return-Path/Delivered-To/Received and hands the message, in the pieces it arrived in, "
        "to the worker's group commit (`delivery/commit.py`) and awaits it: the commit thread "
        "flushes the deliveries that queued while the previous flush ran together: each one's "
        "quota checked, converted to LF, written to `tmp/` and **fsynced**, then per folder one "
        "dotlock, the renames into `new/`, one `dovecot-uidlist` append with its fsync and one "
        "fsync of `new/`, per account one `maildirsize` line. Only then does the sender get "
        "its 250.",
        "- **Postfix** (isolated instance, `tests/support/postfix.py`: `virtual(8)` delivery "
        "to Maildir, recipients from a `texthash` map, no DNS lookups, process limit 200): "
        "`smtpd` → `cleanup` writes the queue file and fsyncs it before the 250; `qmgr` hands "
        "it to `virtual(8)`, which writes the Maildir file (fsynced by Postfix's `mail_copy`) "
        "and renames it into `new/`. Postfix does not fsync directories. Its 250 comes before "
        "the Maildir delivery, whose time the throughput includes by waiting for the files.",
        "",
        "| size | senders | mailstack msg/s | Postfix msg/s | throughput ratio (range) "
        "| mailstack p99 ms | Postfix p99 ms | p99 ratio | messages per run (m / P) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sorted({r.size for r in results}):
        for senders in sorted({r.senders for r in results}):
            m = _median_row(results, "mailstack", size, senders)
            p = _median_row(results, "postfix", size, senders)
            ratios = _round_ratios(results, size, senders)
            if m is None or p is None or not ratios:
                continue
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            lines.append(
                f"| {size // 1024} KB | {senders} | {m.per_second} | {p.per_second} "
                f"| {statistics.median(ratios):.2f}x{spread} | {m.p99_ms} | {p.p99_ms} "
                f"| {ratio(m.p99_ms, p.p99_ms)} | {m.messages} / {p.messages} |"
            )
    if stalls:
        lines += [
            "",
            "## Event-loop stall under 25 MB messages",
            "",
            "4 senders each send 25 MB messages while separate connections, each from a process "
            "of its own, send NOOP every 5 ms and time each round trip: one on the SMTP port "
            "(for mailstack it lands on a worker that also receives some of the 25 MB "
            "messages, so its worst round trip bounds the longest stall of a worker's loop) "
            "and, for mailstack, one IMAP session (the main process's loop, where IMAP, "
            "submission and the queue run). Postfix runs one process per connection, so its "
            'column is the reference for "no shared loop at all". (Postfix\'s worst of about '
            "1000 ms recurs: one NOOP per run waits about a second while its p99 stays low; we "
            "have not looked into why.)",
            "",
            "| server | NOOPs over | 25 MB messages | seconds | idle NOOP median ms "
            "| NOOPs during load | p99 NOOP ms | worst NOOP ms |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for st in stalls:
            lines.append(
                f"| {st.server} | {st.probe.upper()} | {st.messages} | {st.seconds} "
                f"| {st.idle_noop_ms} | {st.noops} | {st.p99_noop_ms} | {st.worst_noop_ms} |"
            )
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------


@dataclass
class Plan:
    sizes: list[int] = field(default_factory=lambda: [10 * 1024, 100 * 1024])
    senders: list[int] = field(default_factory=lambda: [1, 4, 16])
    total_messages: dict[int, int] = field(
        # Runs of several seconds each: shorter ones were dominated by start-up and noise.
        default_factory=lambda: {10 * 1024: 4800, 100 * 1024: 1600}
    )
    big_size: int = 25 * 1024 * 1024
    big_senders: int = 4
    big_per_sender: int = 2
    rounds: int = 3  # each row is the median of this many interleaved runs


async def bench(
    plan: Plan, workdir: Path, *, stall: bool
) -> tuple[list[Result], list[StallResult]]:
    servers = [start_mailstack(workdir), start_postfix(workdir)]
    results: list[Result] = []
    stalls: list[StallResult] = []
    try:
        for server in servers:  # warm up: processes spawned, caches filled
            await run_scenario(server, 10 * 1024, 4, 5)
        for size in plan.sizes:
            for senders in plan.senders:
                per_sender = max(1, plan.total_messages[size] // senders)
                for n in range(1, plan.rounds + 1):
                    # Interleave the servers so both see the same background load.
                    for server in servers:
                        r = await run_scenario(server, size, senders, per_sender)
                        r.round = n
                        print(json.dumps(asdict(r)), flush=True)
                        results.append(r)
        if stall:
            for server in servers:
                got = await run_stall(server, plan.big_size, plan.big_senders, plan.big_per_sender)
                for st in got:
                    print(json.dumps(asdict(st)), flush=True)
                stalls.extend(got)
    finally:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
    return results, stalls


def write_report(doc: Path, report: str) -> None:
    """Replace the sections this benchmark writes; keep every other `## ` section of `doc`
    (the IMAP benchmark's, notes on what changed)."""
    ours = {line for line in report.splitlines() if line.startswith("## ")}
    kept: list[str] = []
    if doc.exists():
        sections = ("\n" + doc.read_text()).split("\n## ")[1:]
        kept = [
            "## " + sec.rstrip("\n")
            for sec in sections
            if "## " + sec.split("\n", 1)[0] not in ours
        ]
    doc.write_text("\n\n".join([report.rstrip("\n"), *kept]) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, help="write the Markdown report here")
    parser.add_argument("--quick", action="store_true", help="a few messages per scenario")
    parser.add_argument("--no-stall", action="store_true", help="skip the 25 MB stall test")
    parser.add_argument(
        "--senders", type=int, nargs="+", help="only these sender counts (default: 1 4 16)"
    )
    parser.add_argument("--rounds", type=int, help="runs per row, median reported (default 3)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: Postfix's master starts as root", file=sys.stderr)
        return 2
    if shutil.which("postfix") is None:
        print("postfix is not installed (apt-get install postfix)", file=sys.stderr)
        return 2
    plan = Plan()
    if args.quick:
        plan.total_messages = {10 * 1024: 32, 100 * 1024: 16}
        plan.big_per_sender = 1
    if args.senders:
        plan.senders = args.senders
    if args.rounds:
        plan.rounds = args.rounds
    # Postfix daemons (user `postfix`) must reach the work dir: make it o+x, ours alone.
    workdir = Path(tempfile.mkdtemp(prefix="mailstack-bench-"))
    workdir.chmod(0o711)
    try:
        results, stalls = asyncio.run(bench(plan, workdir, stall=not args.no_stall))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    command = (
        "sudo python bench/smtp_bench.py --write docs/benchmarks.md"
        + (" --quick" if args.quick else "")
        + (" --no-stall" if args.no_stall else "")
        + (" --senders " + " ".join(map(str, args.senders)) if args.senders else "")
        + (f" --rounds {args.rounds}" if args.rounds else "")
    )
    report = render(results, stalls, command)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out_dir / f"smtp-{stamp}.json").write_text(
        json.dumps(
            {"results": [asdict(r) for r in results], "stalls": [asdict(s) for s in stalls]},
            indent=2,
        )
    )
    if args.write:
        write_report(args.write, report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
