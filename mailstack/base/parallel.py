"""A few worker processes for CPU-bound batches.

A process runs one Python thread at a time (the GIL), and some jobs are Python work over many
files: the first header fetch of a never-seen 100,000-message folder parses every header block,
about 4 s of one core. Spread over processes it takes the other cores too. Threads were measured
and gave nothing: a reader thread waited for the GIL after every system call.

- Each worker is `python -I -c BOOT`, fed over its stdin and answering on its stdout:
  length-prefixed pickles of (function, item) and (ok, result). Not multiprocessing's pools:
  forking copies serve's threads' locks in whatever state they are in, and its spawn runs the
  parent's main script again in every worker (serve's imports the whole CLI).
- Two items per worker are out at once, and a thread of the worker takes them in as they
  come: the worker starts on the next item the moment it answers one, however long the
  parent (busy with its own threads: the GIL) takes to send more. With one out at a time the
  workers of a first header fetch stood idle a quarter of the time.
- Started on first use and stopped after `IDLE_S` without work, so an idle server holds no
  extra processes (each is a Python interpreter of 20-40 MB).
- Best effort: when a worker cannot be started or dies, its items run in the caller's process.
  The answers are the same, only slower; an error of the work itself is raised as it would
  be here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pickle
import queue
import selectors
import struct
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

IDLE_S = 5.0  # workers without work this long are stopped (a FETCH fills parts well within)
MAX_WORKERS = 4
DEPTH = 2  # items out at once per worker
_LENGTH = struct.Struct("<Q")

# The worker's first step, before it can import anything of ours: the parent's sys.path
# (-I left out the current directory and PYTHON* variables; tests import tests.* modules),
# this package's own location first.
BOOT = (
    "import sys, pickle, struct;"
    "n, = struct.unpack('<Q', sys.stdin.buffer.read(8));"
    "sys.path[:] = pickle.loads(sys.stdin.buffer.read(n));"
    "from mailstack.base.parallel import serve; serve()"
)


# Where this mailstack was imported from, first on the worker's path: the same package,
# whatever else the parent's path holds (a test run's checkout comes before it).
_PACKAGES = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_count() -> int:
    """Processes worth starting: one per core this process may run on, at most MAX_WORKERS.
    One core: none (a worker would only take turns with the caller)."""
    cores = len(os.sched_getaffinity(0))
    return min(cores, MAX_WORKERS) if cores > 1 else 0


def _frame(obj: object) -> bytes:
    data = pickle.dumps(obj, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


def _send(fd: int, obj: object) -> None:
    view = memoryview(_frame(obj))
    while view:
        view = view[os.write(fd, view) :]


def _receive(fd: int) -> bytes:
    """One frame's pickle, read straight from the descriptor (no buffer that could hold the
    next frame out of the selector's sight); EOFError when the other side is gone."""
    (n,) = _LENGTH.unpack(_exactly(fd, _LENGTH.size))
    return _exactly(fd, n)


def _exactly(fd: int, n: int) -> bytes:
    parts = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("worker gone")
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


def serve() -> None:
    """A worker's loop (BOOT calls it): items until stdin ends. A Ctrl-C in a terminal reaches
    the whole process group: the parent decides, the worker ignores it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    source, sink = sys.stdin.buffer, sys.stdout.fileno()  # BOOT read from the same buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the frames
    inbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def take_in() -> None:  # the next item is here before this one is done
        while len(head := source.read(_LENGTH.size)) == _LENGTH.size:
            (n,) = _LENGTH.unpack(head)
            data = source.read(n)
            if len(data) != n:
                break
            inbox.put(data)
        inbox.put(None)

    threading.Thread(target=take_in, daemon=True).start()
    try:
        while (data := inbox.get()) is not None:
            try:
                fn, item = pickle.loads(data)  # noqa: S301 - only our parent writes here
                answer: tuple[bool, object] = (True, fn(item))
            except Exception as exc:  # handed to the caller, raised there
                answer = (False, exc)
            try:
                _send(sink, answer)
            except pickle.PicklingError as exc:
                _send(sink, (False, RuntimeError(f"unpicklable result or error: {exc}")))
    except BaseException:
        # The reader thread may hold stdin's lock: a normal exit would abort on it.
        import traceback

        traceback.print_exc()
        os._exit(1)


class _Worker:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        if self.proc.stdin is None or self.proc.stdout is None:  # pragma: no cover - PIPE
            raise OSError("worker pipes missing")
        self.stdin = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout.fileno()
        _send(self.stdin, [_PACKAGES, *(p for p in sys.path if p != _PACKAGES)])

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # the worker's loop ends on EOF
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class Pool:
    """The worker processes of one serving process, shared by every caller (thread-safe):
    a `map` takes the workers that are free, and gives them back when it ends."""

    def __init__(self, workers: int | None = None, idle_s: float = IDLE_S) -> None:
        self.workers = worker_count() if workers is None else workers
        self.idle_s = idle_s
        self._lock = threading.Lock()
        self._free: list[_Worker] = []
        self._started = 0  # workers alive, free or taken
        self._users = 0  # `map` calls running
        self._timer: threading.Timer | None = None

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """fn(item) for each item, as the results come (not in the items' order). `fn` and the
        items are pickled: a module-level function (or a functools.partial of one) and plain
        values. DEPTH items per worker are out at a time, so a slow consumer holds a few
        results, not all of them. No worker free (another caller has them all, or none can
        start): the items run here, in order."""
        job = _Job(fn, iter(items), self._take())
        try:
            for worker in list(job.workers):
                for _ in range(DEPTH):
                    if worker in job.workers:  # not dropped by the send before
                        self._send(job, worker)
            while job.out or job.redo:
                while job.redo:
                    yield fn(job.redo.pop())
                for key, _ in job.selector.select() if job.out else ():
                    worker = key.data
                    try:
                        data = _receive(worker.stdout)
                    except (EOFError, OSError) as exc:
                        self._drop(job, worker, exc)
                        continue
                    job.out[worker].popleft()
                    self._send(job, worker)
                    if not job.out.get(worker, True):  # nothing left for it
                        del job.out[worker]
                        job.selector.unregister(worker.stdout)
                    ok, value = pickle.loads(data)  # noqa: S301 - our worker's pipe
                    if not ok:
                        raise value
                    yield value
            yield from map(fn, job.pending)  # no worker (left): here
        finally:
            for worker in list(job.out):  # stopped early: answers are due
                self._drop(job, worker, None)
            job.selector.close()
            self._give_back(job.workers)

    def close(self) -> None:
        """Stop the free workers now (serve's shutdown; tests)."""
        with self._lock:
            free, self._free = self._free, []
            self._started -= len(free)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for worker in free:
            worker.stop()

    def pids(self) -> list[int]:
        """The free worker processes (tests, benchmarks)."""
        with self._lock:
            return sorted(w.proc.pid for w in self._free)

    def _send(self, job: _Job[T, R], worker: _Worker) -> None:
        """Send `worker` the job's next item, if any."""
        for item in job.pending:
            try:
                _send(worker.stdin, (job.fn, item))
            except OSError as exc:
                job.redo.append(item)
                self._drop(job, worker, exc)
                return
            out = job.out.get(worker)
            if out is None:
                out = job.out[worker] = collections.deque()
                job.selector.register(worker.stdout, selectors.EVENT_READ, worker)
            out.append(item)
            return

    def _take(self) -> list[_Worker]:
        with self._lock:
            self._users += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            taken, self._free = self._free, []
            missing = self.workers - self._started
            self._started += missing
        for _ in range(missing):
            try:
                taken.append(_Worker())
            except OSError as exc:
                log.warning("cannot start a worker process, working in this one: %s", exc)
                with self._lock:
                    self._started -= 1
        return taken

    def _give_back(self, workers: list[_Worker]) -> None:
        with self._lock:
            self._users -= 1
            self._free.extend(workers)
            if self._users or not self._free:
                return
            self._timer = threading.Timer(self.idle_s, self._stop_idle)
            self._timer.daemon = True
            self._timer.start()

    def _stop_idle(self) -> None:
        with self._lock:
            if self._users or self._timer is None:
                return  # taken again meanwhile
            self._timer = None
        self.close()

    def _drop(self, job: _Job[T, R], worker: _Worker, exc: BaseException | None) -> None:
        """Stop a worker that failed (its items are redone here) or was left mid-job."""
        if exc is not None:
            log.warning("a worker process failed, its items run here: %s", exc)
        out = job.out.pop(worker, None)
        if out is not None:
            job.selector.unregister(worker.stdout)
            if exc is not None:
                job.redo.extend(out)
        if worker not in job.workers:
            return  # dropped already
        job.workers.remove(worker)
        with self._lock:
            self._started -= 1
        worker.stop(kill=True)


class _Job(Generic[T, R]):
    """One `map` call's state."""

    def __init__(self, fn: Callable[[T], R], pending: Iterator[T], workers: list[_Worker]):
        self.fn = fn
        self.pending = pending
        self.workers = workers  # taken from the pool; given back at the end
        self.out: dict[_Worker, collections.deque[T]] = {}  # items sent, oldest first
        self.redo: list[T] = []  # items of failed workers, run here
        self.selector = selectors.DefaultSelector()


class PerProcess(Generic[T]):
    """This process's object for a key (a file's path): the one the process registered (a
    store's own), else one made for the key, the last few of them kept. For functions that
    another process calls by name: a worker storing rows through `put_rows` opens its own
    table, serve's own process goes through the one its store already has."""

    def __init__(self, make: Callable[[str], T], keep: int = 4) -> None:
        self._make = make
        self._known: weakref.WeakValueDictionary[str, T] = weakref.WeakValueDictionary()
        self._kept: collections.deque[T] = collections.deque(maxlen=keep)

    def register(self, key: str, obj: T) -> None:
        self._known[key] = obj

    def get(self, key: str) -> T:
        obj = self._known.get(key)
        if obj is None:
            obj = self._make(key)  # it registers itself
            self._kept.append(obj)
        return obj


POOL = Pool()
