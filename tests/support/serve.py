"""Run `mailstack serve` as a real subprocess and learn where it listens.

Waits for the log lines `<service> listening on host:port` and `mailstack ready`, never for a
fixed time. Stops the process it started (by PID) at exit. `wrapper` runs serve under another
program (strace, for the fsync-order tests); signals then go to serve itself, not the wrapper.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tests.conftest import MAILSTACK

_LISTEN = re.compile(r" (\w+) listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+)$")


class ServeProcess:
    def __init__(
        self, root: Path, *extra: str, timeout_s: float = 30, wrapper: Sequence[str] = ()
    ) -> None:
        self.root = root
        self.extra = extra
        self.timeout_s = timeout_s
        self.wrapper = tuple(wrapper)
        self._serve_pid: int | None = None
        self.listeners: dict[str, list[tuple[str, int]]] = {}
        self.log: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
        self.proc = subprocess.Popen(
            [*self.wrapper, MAILSTACK, "--dir", str(self.root), "serve", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for("mailstack ready")
        _ = self.pid  # while serve surely runs: stop() must not look it up after it exited
        return self

    def _pump(self) -> None:
        """Copy serve's stderr lines into a queue (a thread: select() can't see text buffers)."""
        assert self.proc is not None
        assert self.proc.stderr is not None
        with self.proc.stderr as stream:
            for line in stream:
                self._lines.put(line)
        self._lines.put(None)

    def seen_or_wait_for(self, needle: str) -> str:
        """A line with `needle` already read (e.g. while waiting for "mailstack ready", which
        a line logged during start-up may precede), else `wait_for(needle)`."""
        for line in self.log:
            if needle in line:
                return line
        return self.wait_for(needle)

    def wait_for(self, needle: str) -> str:
        """Read stderr until a line containing `needle`; fail with the log if the process ends."""
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                assert self.proc is not None
                raise RuntimeError(f"serve exited ({self.proc.wait()}):\n" + "".join(self.log))
            self.log.append(line)
            if m := _LISTEN.search(line.rstrip("\n")):
                self.listeners.setdefault(m[1], []).append((m[2], int(m[3])))
            if needle in line:
                return line
        raise TimeoutError(
            f"no {needle!r} from serve within {self.timeout_s}s:\n" + "".join(self.log)
        )

    @property
    def pid(self) -> int:
        """serve's own PID (under a wrapper: the wrapper's one child, looked up once)."""
        assert self.proc is not None
        if not self.wrapper:
            return self.proc.pid
        if self._serve_pid is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            (child,) = children.split()
            self._serve_pid = int(child)
        return self._serve_pid

    def port(self, service: str) -> int:
        return self.listeners[service][0][1]

    def signal(self, sig: signal.Signals) -> None:
        os.kill(self.pid, sig)

    def log_so_far(self) -> str:
        """Every line serve wrote until now (for a failing test's message)."""
        while True:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            self.log.append(line)
        return "".join(self.log)

    def stop(self) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop in time)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            serve = self.pid
            with contextlib.suppress(ProcessLookupError):  # it may have exited by itself
                os.kill(serve, signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.timeout_s)
            except subprocess.TimeoutExpired:
                if serve != self.proc.pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(serve, signal.SIGKILL)
                self.proc.kill()
                self.proc.wait()
        while True:  # the pump ends at EOF, after the process exited
            try:
                line = self._lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.log.append(line)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
