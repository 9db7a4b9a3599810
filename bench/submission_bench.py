#!/usr/bin/env python3
"""Submission benchmark: mailstack vs an isolated Postfix, relaying to a loopback sink MX.

Not a test (pytest does not collect bench/). Run from the repository root, as root (Postfix's
master starts as root):

    python bench/submission_bench.py --messages 800 --write docs/benchmarks.md

What it measures: SENDERS clients (16) each keep one connection and submit 10 KB messages one
after another to one outside recipient; throughput is the number of messages per second of
wall time from the moment all senders are connected (and logged in: the argon2id checks are
timed apart, as a client logs in once per connection) until the sink has *received* the last
one (accepted and relayed). Latency: MAIL FROM to the 250 after DATA, per message (p50, p99).

The servers, both relaying through `[outbound] relay` / `relayhost` to the same sink:
- mailstack: `mailstack serve` (a fresh `init` deployment), clients on the submission port
  with STARTTLS and AUTH PLAIN (argon2id checked once per connection), every message
  DKIM-signed (rsa-sha256, 2048 bits) at enqueue, fsync'd into the queue before 250;
  `[submission]` sending limits turned off (they would stop a benchmark, by design).
- Postfix: an instance with its own config and queue (tests/support/postfix.py) on plain SMTP,
  relaying for 127.0.0.0/8 (`permit_mynetworks`): no TLS, no AUTH and no DKIM signing milter
  (opendkim is not installed here), so it does strictly less work per message.
The sink: aiosmtpd in a process of its own that counts messages (and checks mailstack's carry
a DKIM-Signature). Only 127.0.0.1 is contacted; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import re
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO))  # last: the installed mailstack, tests.* from the checkout

from tests.support.postfix import PostfixInstance, free_tcp_port  # noqa: E402
from tests.support.serve import ServeProcess  # noqa: E402

DOMAIN = "bench.example"
USER = f"sender@{DOMAIN}"
PASSWORD = "bench-password"  # noqa: S105 - a throwaway account of a loopback benchmark
RCPT = "someone@far.example"
SIZE = 10 * 1024
WAIT_S = 600.0

SINK = r"""
import asyncio, sys, time
from aiosmtpd.smtp import SMTP
count_path = sys.argv[2]
state = {"n": 0, "signed": 0}
class Handler:
    async def handle_DATA(self, server, session, envelope):
        state["n"] += 1
        state["signed"] += envelope.original_content.startswith(b"DKIM-Signature:")
        return "250 2.0.0 ok"
async def main():
    loop = asyncio.get_running_loop()
    factory = lambda: SMTP(Handler(), hostname="sink")
    server = await loop.create_server(factory, "127.0.0.1", int(sys.argv[1]))
    while True:
        with open(count_path + ".tmp", "w") as f:
            f.write(f"{state['n']} {state['signed']}")
        import os; os.replace(count_path + ".tmp", count_path)
        await asyncio.sleep(0.05)
asyncio.run(main())
"""


def message(seq: int) -> bytes:
    head = (
        f"From: Sender <{USER}>\r\nTo: <{RCPT}>\r\nSubject: bench {seq}\r\n"
        f"Message-ID: <{seq}.{time.time_ns()}@{DOMAIN}>\r\n"
        "Date: Sun, 06 Dec 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789xy\r\n"
    return head + line * max(1, (SIZE - len(head)) // len(line))


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), 300)
            if not line:
                raise ConnectionError("server closed the connection")
            lines.append(line.decode(errors="replace").rstrip())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def command(self, line: bytes, code: int) -> None:
        self.writer.write(line + b"\r\n")
        got, text = await self.reply()
        if got != code:
            raise RuntimeError(f"{line[:20]!r}: expected {code}, got {text!r}")

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        if (await client.reply())[0] != 220:
            raise RuntimeError("no greeting")
        await client.command(b"EHLO bench.client.example", 250)
        if tls is not None:
            await client.command(b"STARTTLS", 220)
            await writer.start_tls(tls, server_hostname=f"mail.{DOMAIN}")
            await client.command(b"EHLO bench.client.example", 250)
            token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
            await client.command(b"AUTH PLAIN " + token, 235)
        return client

    async def send(self, body: bytes) -> None:
        await self.command(f"MAIL FROM:<{USER}>".encode(), 250)
        await self.command(f"RCPT TO:<{RCPT}>".encode(), 250)
        await self.command(b"DATA", 354)
        self.writer.write(body + b".\r\n")
        got, text = await self.reply()
        if got != 250:
            raise RuntimeError(f"DATA: {text!r}")

    async def quit(self) -> None:
        with contextlib.suppress(Exception):
            await self.command(b"QUIT", 221)
        self.writer.close()


@dataclass
class Result:
    server: str
    messages: int
    seconds: float
    p50_ms: float
    p99_ms: float
    signed: int
    login_s: float  # connecting all senders (mailstack: + STARTTLS and AUTH), not in `seconds`

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


class Sink:
    def __init__(self, workdir: Path) -> None:
        self.port = free_tcp_port()
        self.count_file = workdir / "sink.count"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SINK, str(self.port), str(self.count_file)]
        )
        deadline = time.monotonic() + 30
        while not self.count_file.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.05)

    def counts(self) -> tuple[int, int]:
        with contextlib.suppress(FileNotFoundError, ValueError):
            n, signed = self.count_file.read_text().split()
            return int(n), int(signed)
        return 0, 0

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)


async def drive(
    port: int, tls: ssl.SSLContext | None, senders: int, total: int
) -> tuple[list[float], float, float]:
    """(latencies, connect+AUTH seconds for all senders, perf_counter when sending began)."""
    per = total // senders
    latencies: list[float] = []
    start = time.perf_counter()
    clients = await asyncio.gather(*(Client.connect(port, tls) for _ in range(senders)))
    began = time.perf_counter()

    async def one(index: int, client: Client) -> None:
        for i in range(per):
            start = time.perf_counter()
            await client.send(message(index * per + i))
            latencies.append((time.perf_counter() - start) * 1000)
        await client.quit()

    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    return latencies, began - start, began


def run_one(name: str, port: int, tls: ssl.SSLContext | None, sink: Sink, n: int) -> Result:
    before, signed_before = sink.counts()
    latencies, login_s, began = asyncio.run(drive(port, tls, 16, n))
    sent = len(latencies)
    deadline = time.monotonic() + WAIT_S
    while sink.counts()[0] - before < sent:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the sink got {sink.counts()[0] - before} of {sent}")
        time.sleep(0.01)
    seconds = time.perf_counter() - began
    latencies.sort()
    return Result(
        name,
        sent,
        seconds,
        statistics.median(latencies),
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        sink.counts()[1] - signed_before,
        login_s,
    )


def start_mailstack(workdir: Path, sink_port: int) -> tuple[ServeProcess, Path]:
    root = workdir / "mailstack"
    exe = str(Path(sys.executable).with_name("mailstack"))
    env = {k: v for k, v in os.environ.items() if k not in ("MAILSTACK_DIR", "PYTHONPATH")}

    def cli(*args: str, stdin: str | None = None) -> None:
        subprocess.run(
            [exe, "--dir", str(root), *args],
            input=stdin,
            text=True,
            check=True,
            capture_output=True,
            env=env,
        )

    ports = ["--smtp-port", "0", "--submission-port", "0", "--submissions-port", "0"]
    ports += ["--imap-port", "0", "--imaps-port", "0"]
    cli("init", "--domain", DOMAIN, "--hostname", f"mail.{DOMAIN}", "--ipv4", "127.0.0.1",
        "--listen-host", "127.0.0.1", *ports, "--non-interactive")  # fmt: skip
    config = root / "mailstack.toml"
    text = config.read_text().replace('relay = ""', f'relay = "127.0.0.1:{sink_port}"')
    for key in ("messages_per_hour", "recipients_per_hour", "account_messages_per_hour"):
        text = re.sub(rf"(?m)^{key} = \d+$", f"{key} = 0", text)
    text = re.sub(r"(?m)^network_messages_per_hour = \d+$", "network_messages_per_hour = 0", text)
    config.write_text(text)
    cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    return ServeProcess(root, timeout_s=60).start(), root


def render(results: list[Result], n: int) -> str:
    m = next(r for r in results if r.server == "mailstack")
    p = next(r for r in results if r.server == "postfix")
    return "\n".join(
        [
            "## Submission: mailstack vs Postfix, relaying to a sink MX",
            "",
            f"`python bench/submission_bench.py --messages {n}` on {platform.machine()}, "
            f"{os.cpu_count()} cores (shared), {time.strftime('%Y-%m-%d')}. 16 clients, one "
            "connection each, 10 KB messages to one outside recipient; msg/s from the moment "
            "all 16 are connected (and, for mailstack, logged in: argon2id, timed apart) until "
            "the sink has every message. mailstack: STARTTLS + AUTH PLAIN on "
            "the submission port, every message DKIM-signed and fsync'd in the queue before "
            "250, relayed through `[outbound] relay`. Postfix: plain SMTP from mynetworks, "
            "no TLS, no AUTH, **no DKIM milter** (less work per message), `relayhost` to the "
            "same sink.",
            "",
            "| server | messages | msg/s | p50 ms | p99 ms | DKIM-signed at the sink |"
            " 16 connects (+TLS, AUTH) s |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *(
                f"| {r.server} | {r.messages} | {r.rate:.1f} | {r.p50_ms:.1f} | "
                f"{r.p99_ms:.1f} | {r.signed} | {r.login_s:.2f} |"
                for r in (m, p)
            ),
            "",
            f"Ratio mailstack / Postfix: **{m.rate / p.rate:.2f}x** msg/s "
            f"(p99 latency {m.p99_ms / p.p99_ms:.2f}x).",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=800, help="per server (16 senders)")
    parser.add_argument("--write", type=Path, help="append the section to this Markdown file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="submission-bench-", dir="/tmp"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postfix user must reach its instance
    sink = Sink(workdir)
    results: list[Result] = []
    try:
        serve, root = start_mailstack(workdir, sink.port)
        try:
            tls = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
            results.append(run_one("mailstack", serve.port("submission"), tls, sink, args.messages))
        finally:
            serve.stop()
            (workdir / "serve.log").write_text("".join(serve.log))  # kept: where time went
        postfix = PostfixInstance(
            workdir / "postfix", hostname="postfix.bench.example", relay_to=("127.0.0.1", sink.port)
        )
        _host, port = postfix.start()
        try:
            results.append(run_one("postfix", port, None, sink, args.messages))
        finally:
            postfix.stop()
    finally:
        sink.stop()
    report = render(results, args.messages)
    print(report)
    if args.write:
        with args.write.open("a", encoding="utf-8") as f:
            f.write("\n" + report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
