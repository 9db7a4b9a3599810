#!/usr/bin/env python3
"""Submission benchmark: mailstack vs an isolated Postfix, relaying to a loopback sink MX.

Not a test (pytest does not collect bench/). Run from the repository root, as root (Postfix's
master starts as root), with opendkim installed (`apt-get install opendkim`) for the
Postfix-with-DKIM row:

    python -P bench/submission_bench.py --messages 800 --rounds 3

What it measures: SENDERS clients (16) each keep one connection and submit 10 KB messages one
after another to one outside recipient; throughput is the number of messages per second of
wall time from the moment all senders are connected (and logged in: the argon2id checks are
timed apart, as a client logs in once per connection) until the sink has *received* the last
one (accepted and relayed). Latency: MAIL FROM to the 250 after DATA, per message (p50, p99).
For mailstack also the CPU (user + system) of `serve` and its SMTP workers per message, from
/proc: a figure that a machine loaded by others barely moves, for A/B runs of two builds.
The servers all run at once (idle but for the one driven) and are driven in turn, round after
round, in a rotating order, so a machine loaded by others slows each alike; the table gives
each one's median round (and the slowest and fastest).

The servers, all relaying through `[outbound] relay` / `relayhost` to the same sink:
- mailstack: `mailstack serve` (a fresh `init` deployment), clients on the submission port
  with STARTTLS and AUTH PLAIN (argon2id checked once per connection), every message
  DKIM-signed (rsa-sha256, 2048 bits) at enqueue, fsync'd into the queue before 250;
  `[submission]` sending limits turned off (they would stop a benchmark, by design).
- postfix+opendkim: an instance with its own config and queue (tests/support/postfix.py),
  clients with STARTTLS (same certificate) but no AUTH (Postfix's SASL needs a Dovecot or
  Cyrus daemon; relaying is allowed to 127.0.0.0/8 instead), every message signed by an
  opendkim milter (rsa-sha256, relaxed/relaxed, 2048 bits, the same key).
- postfix: the same without TLS and without the milter: strictly less work per message.
Both Postfix instances reuse connections to the relay as Postfix does by default
(`smtp_connection_cache_on_demand = yes`; the test instances turn it off).
The sink: aiosmtpd in a process of its own that counts messages (and those that carry a
DKIM-Signature). Only 127.0.0.1 is contacted; every process started here is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import platform
import pwd
import re
import shutil
import signal
import socket
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

from tests.support import postfix as postfix_support  # noqa: E402
from tests.support.postfix import PostfixInstance, free_tcp_port  # noqa: E402

# STARTTLS in smtpd needs the TLS manager (its PRNG seed), which the test instances leave out
postfix_support.MASTER_CF += "tlsmgr    unix  -       -       n       1000?   1       tlsmgr\n"
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
        head = b"\n" + envelope.original_content.split(b"\r\n\r\n", 1)[0]
        state["signed"] += b"\nDKIM-Signature:" in head
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
    async def connect(cls, port: int, tls: ssl.SSLContext | None, auth: bool) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        if (await client.reply())[0] != 220:
            raise RuntimeError("no greeting")
        await client.command(b"EHLO bench.client.example", 250)
        if tls is not None:
            await client.command(b"STARTTLS", 220)
            await writer.start_tls(tls, server_hostname=f"mail.{DOMAIN}")
            await client.command(b"EHLO bench.client.example", 250)
        if auth:
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
    cpu_ms: float | None = None  # CPU of serve and its workers per message (mailstack only)

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
    port: int, tls: ssl.SSLContext | None, auth: bool, senders: int, total: int
) -> tuple[list[float], float, float]:
    """(latencies, connect+AUTH seconds for all senders, perf_counter when sending began)."""
    per = total // senders
    latencies: list[float] = []
    start = time.perf_counter()
    clients = await asyncio.gather(*(Client.connect(port, tls, auth) for _ in range(senders)))
    began = time.perf_counter()

    async def one(index: int, client: Client) -> None:
        for i in range(per):
            start = time.perf_counter()
            await client.send(message(index * per + i))
            latencies.append((time.perf_counter() - start) * 1000)
        await client.quit()

    await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
    return latencies, began - start, began


@dataclass
class Server:
    name: str
    port: int
    tls: ssl.SSLContext | None
    auth: bool
    pid: int | None = None  # mailstack's serve: its CPU (and its workers') is measured


def cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process and its live children (serve's SMTP workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in [pid, *map(int, children)]:
        with contextlib.suppress(FileNotFoundError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_one(server: Server, sink: Sink, n: int) -> Result:
    name = server.name
    before, signed_before = sink.counts()
    cpu_before = cpu_s(server.pid) if server.pid else 0.0
    latencies, login_s, began = asyncio.run(drive(server.port, server.tls, server.auth, 16, n))
    sent = len(latencies)
    deadline = time.monotonic() + WAIT_S
    while sink.counts()[0] - before < sent:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name}: the sink got {sink.counts()[0] - before} of {sent}")
        time.sleep(0.01)
    seconds = time.perf_counter() - began
    cpu_ms = (cpu_s(server.pid) - cpu_before) * 1000 / sent if server.pid else None
    latencies.sort()
    return Result(
        name,
        sent,
        seconds,
        statistics.median(latencies),
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        sink.counts()[1] - signed_before,
        login_s,
        cpu_ms,
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


class BenchPostfix(PostfixInstance):
    """A test instance with Postfix's default connection reuse and, optionally, STARTTLS and
    an opendkim milter."""

    def __init__(
        self, directory: Path, sink_port: int, *, tls: Path | None = None, milter: int = 0
    ) -> None:
        super().__init__(
            directory, hostname="postfix.bench.example", relay_to=("127.0.0.1", sink_port)
        )
        self.tls, self.milter = tls, milter

    def _main_cf(self) -> str:
        extra = {"smtp_connection_cache_on_demand": "yes"}  # Postfix's default
        if self.tls is not None:
            extra |= {
                "smtpd_tls_security_level": "may",
                "smtpd_tls_cert_file": str(self.tls / "fullchain.pem"),
                "smtpd_tls_key_file": str(self.tls / "privkey.pem"),
            }
        if self.milter:
            extra |= {
                "smtpd_milters": f"inet:127.0.0.1:{self.milter}",
                "milter_default_action": "tempfail",  # never relay unsigned
            }
        return super()._main_cf() + "".join(f"{k} = {v}\n" for k, v in extra.items())


def start_opendkim(workdir: Path, key: Path, selector: str) -> tuple[subprocess.Popen[bytes], int]:
    """opendkim in the foreground as a signing milter on a loopback port."""
    # opendkim refuses a configuration or key under a directory others may write (/tmp)
    directory = Path(tempfile.mkdtemp(prefix="submission-bench-opendkim-", dir="/run"))
    (workdir / "opendkim").symlink_to(directory)  # found beside the rest; removed at the end
    user = pwd.getpwnam("opendkim")
    shutil.copy(key, directory / "key.pem")
    for path in (directory, directory / "key.pem"):
        os.chown(path, user.pw_uid, user.pw_gid)
    os.chmod(directory / "key.pem", 0o600)
    port = free_tcp_port()
    conf = directory / "opendkim.conf"
    conf.write_text(
        f"Mode s\nDomain {DOMAIN}\nSelector {selector}\nKeyFile {directory / 'key.pem'}\n"
        "Canonicalization relaxed/relaxed\nSignatureAlgorithm rsa-sha256\n"
        f"Socket inet:{port}@127.0.0.1\nUserID opendkim\nInternalHosts 127.0.0.1\n"
        f"PidFile {directory / 'pid'}\nSyslog no\n"
    )
    proc = subprocess.Popen(["opendkim", "-f", "-x", str(conf)])
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return proc, port
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("opendkim did not start")
        time.sleep(0.1)


def median_of(results: list[Result]) -> Result:
    return sorted(results, key=lambda r: r.rate)[len(results) // 2]


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def render(rounds: dict[str, list[Result]], n: int, loads: list[str]) -> str:
    rows = []
    for name, results in rounds.items():
        m = median_of(results)
        rates = sorted(r.rate for r in results)
        rows.append(
            f"| {name} | {len(results)} x {m.messages} | **{m.rate:.1f}** | "
            f"{rates[0]:.1f}-{rates[-1]:.1f} | {m.p50_ms:.1f} | {m.p99_ms:.1f} | "
            f"{m.signed} | {m.login_s:.2f} | "
            f"{'-' if m.cpu_ms is None else f'{m.cpu_ms:.2f}'} |"
        )
    ours = median_of(rounds["mailstack"]).rate
    ratios = [
        f"{ours / median_of(r).rate:.2f}x vs {name}" for name, r in rounds.items()
        if name != "mailstack"
    ]  # fmt: skip
    return "\n".join(
        [
            f"`python -P bench/submission_bench.py --messages {n} --rounds "
            f"{len(rounds['mailstack'])}` on {platform.machine()}, {os.cpu_count()} cores "
            f"shared with other builds, {time.strftime('%Y-%m-%d %H:%M')} UTC; load average "
            f"(1/5/15 min) at the start of each round: {'; '.join(loads)}.",
            "",
            "| server | rounds x messages | msg/s (median round) | slowest-fastest | p50 ms |"
            " p99 ms | DKIM-signed at the sink | 16 connects (+TLS, AUTH) s |"
            " server CPU ms/msg |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Ratio mailstack / Postfix (median rounds): **{', '.join(ratios)}**.",
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=800, help="per server and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only-mailstack", action="store_true", help="no Postfix rows")
    parser.add_argument("--profile", type=Path, help="py-spy record serve into this file")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="submission-bench-", dir="/tmp"))
    os.chmod(workdir, 0o755)  # noqa: S103 - the postfix user must reach its instance
    sink = Sink(workdir)
    rounds: dict[str, list[Result]] = {}
    loads: list[str] = []
    with contextlib.ExitStack() as stack:
        stack.callback(sink.stop)
        serve, root = start_mailstack(workdir, sink.port)
        stack.callback(lambda: (workdir / "serve.log").write_text("".join(serve.log)))
        stack.callback(serve.stop)
        tls = ssl.create_default_context(cafile=str(root / "tls/ca.pem"))
        servers = [Server("mailstack", serve.port("submission"), tls, True, serve.pid)]
        if not args.only_mailstack:
            key = next((root / "dkim").glob(f"*.{DOMAIN}.key"))
            milter, milter_port = start_opendkim(workdir, key, key.name.split(".")[0])
            stack.callback(shutil.rmtree, (workdir / "opendkim").resolve())
            stack.callback(lambda: (milter.terminate(), milter.wait(10)))
            for name, postfix in (
                ("postfix+opendkim", BenchPostfix(
                    workdir / "pf-dkim", sink.port, tls=root / "tls", milter=milter_port)),
                ("postfix", BenchPostfix(workdir / "pf-plain", sink.port)),
            ):  # fmt: skip
                _host, port = postfix.start()
                stack.callback(postfix.stop)
                servers.append(Server(name, port, tls if postfix.tls else None, False))
        if args.profile:
            spy = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "--threads", "-o",
                 str(args.profile), "--format", "raw" if args.profile.suffix == ".txt"
                 else "flamegraph", "--pid", str(serve.pid)]
            )  # fmt: skip
            stack.callback(lambda: (spy.send_signal(signal.SIGINT), spy.wait(60)))
        for i in range(args.rounds):
            loads.append(load_average())
            for server in servers[i % len(servers) :] + servers[: i % len(servers)]:
                result = run_one(server, sink, args.messages)
                print(f"round {i + 1}: {server.name}: {result.rate:.1f} msg/s", flush=True)
                rounds.setdefault(server.name, []).append(result)
    report = render(rounds, args.messages, loads)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
