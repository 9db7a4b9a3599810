"""How long does one big DATA freeze the event loop? (a measurement, not a test: not collected)

    python -m tests.smtp.stall_probe [--mb 25]

Serves (a) aiosmtpd's stock SMTP with a handler that only accepts, and (b) mailstack's MX with
real Maildir delivery, each on loopback in this process's loop. A separate client process sends
one message of --mb megabytes (76-octet lines) while a coroutine here wakes every 5 ms and
records how late it wakes: the worst lateness is the longest the loop was blocked, i.e. how long
every IMAP client of the same process would have waited.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from tests.support.smtpserver import running_smtp

CLIENT = r"""
import smtplib, sys
size = int(sys.argv[2]) * 1024 * 1024
line = b"x" * 74 + b"\r\n"
msg = b"Subject: big\r\n\r\n" + line * (size // len(line))
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=600) as s:
    s.sendmail("x@example.net", ["alice@example.com"], msg)
"""


async def lag_monitor(stop: asyncio.Event, out: list[float]) -> None:
    tick = 0.005
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(tick)
        out.append(time.perf_counter() - before - tick)


async def measure(port: int, mb: int) -> tuple[float, float]:
    stop, lags = asyncio.Event(), []  # type: ignore[var-annotated]
    monitor = asyncio.create_task(lag_monitor(stop, lags))
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-P", "-c", CLIENT, str(port), str(mb)
    )
    assert await proc.wait() == 0
    elapsed = time.perf_counter() - start
    stop.set()
    await monitor
    return max(lags), elapsed


class AcceptAll:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        return "250 OK"


async def main(mb: int) -> None:
    loop = asyncio.get_running_loop()
    stock = await loop.create_server(
        lambda: SMTP(AcceptAll(), data_size_limit=200 * 2**20, hostname="stock", loop=loop),
        "127.0.0.1",
        0,
    )
    worst, took = await measure(stock.sockets[0].getsockname()[1], mb)
    print(
        f"aiosmtpd stock DATA, {mb} MB: worst loop stall {worst * 1000:.0f} ms "
        f"(transfer {took:.1f} s)"
    )
    stock.close()
    with tempfile.TemporaryDirectory() as d:
        async with running_smtp(Path(d), smtp={"max_message_size": 200 * 2**20}) as h:
            worst, took = await measure(h.port, mb)
            print(
                f"mailstack MX DATA + Maildir delivery, {mb} MB: worst loop stall "
                f"{worst * 1000:.0f} ms (transfer {took:.1f} s)"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=25)
    asyncio.run(main(parser.parse_args().mb))
