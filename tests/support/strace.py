"""Read `strace -f -yy` output: which system calls ran, in which order, on which files.

The fsync-order tests (tests/delivery/test_fsync_order.py) run mailstack under strace and ask
of the trace: did the message file's fsync, its rename into place, the directory's fsync (and
the uidlist's fsync) all return before the reply was written to the client's socket? A kill -9
test cannot see a missing fsync (the kernel keeps written pages when a process dies); the
system calls can.

Order: strace prints a call when it returns, or, when another thread's call comes between, its
entry (`<unfinished ...>`) and later its return (`<... fsync resumed>`). strace prints a call's
return before it lets the thread go on, so when the program orders A's return before B's start
(a thread waits for another's result), the trace does too: `Call.start` / `Call.end` are line
numbers in that one ordering, and "A before B" is `a.end < b.start`.

Paths: `-yy` prints each fd argument as `fd<path>` (sockets as `fd<TCP:[local->peer]>`) and
`rename` takes literal path strings (mailstack passes absolute ones), so no fd bookkeeping is
needed here.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

# What the tests trace: files created, synced and renamed; bytes read from and written to
# sockets. Narrow on purpose: strace stops the process at each traced call (with
# --seccomp-bpf, at those only).
TRACED = (
    "openat",
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "unlink",
    "unlinkat",
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "write",
    "writev",
    "sendto",
    "sendmsg",
)
STRACE_ARGS = (
    "strace",
    "-f",  # threads, and the SMTP worker processes `serve` spawns
    "-q",  # no attach/detach chatter; keeps "+++ exited with N +++"
    "-yy",  # fds as <path> or <TCP:[local->peer]>
    "--seccomp-bpf",  # stop only at traced calls: keeps the traced server fast enough
    "-s",
    "256",  # enough of each buffer to read an SMTP/IMAP reply line
    "-e",
    "trace=" + ",".join(TRACED),
)


def strace_command(output: Path) -> list[str]:
    """The strace command line to put before a program; its trace goes to `output`."""
    if shutil.which(STRACE_ARGS[0]) is None:
        pytest.fail("strace is not installed (Debian: strace); scripts/test installs it")
    return [*STRACE_ARGS, "-o", str(output)]


READS = frozenset({"read", "readv", "recvfrom", "recvmsg"})
WRITES = frozenset({"write", "writev", "sendto", "sendmsg"})
SYNCS = frozenset({"fsync", "fdatasync"})
RENAMES = frozenset({"rename", "renameat", "renameat2"})
UNLINKS = frozenset({"unlink", "unlinkat"})

EXITED = "+++ exited"  # Call.name of a process's exit: `PID +++ exited with N +++`

_PID = re.compile(r"^(\d+)\s+(.*)$")
_COMPLETE = re.compile(r"^(\w+)\((.*)\)\s+=\s+(.*)$")
_UNFINISHED = re.compile(r"^(\w+)\((.*?)\s*<unfinished \.\.\.>$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)\)\s+=\s+(.*)$")
_EXIT = re.compile(r"^\+\+\+ exited with (\d+) \+\+\+$")
# The first argument's fd annotation. Non-greedy up to the `>` that ends the argument: socket
# annotations contain "->" themselves.
_FD = re.compile(r"^-?\d+<(.*?)>(?:,|$)")
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"')
_PEER = re.compile(r"->\[?([0-9a-fA-F.:]+?)\]?:(\d+)\]$")
_ESCAPES = {"n": 10, "r": 13, "t": 9, "v": 11, "f": 12, "a": 7, "b": 8, '"': 34, "\\": 92}


@dataclass(frozen=True, slots=True)
class Call:
    pid: int
    name: str
    args: str  # the text between the parentheses (entry and resumed halves joined)
    result: str  # "0", "14</path>", "-1 ENOENT (...)", "?" (never returned), exit status
    start: int  # line number of the call's entry
    end: int  # line number of its return (a call that never returned: after the last line)

    @property
    def ok(self) -> bool:
        return not self.result.startswith(("-1", "?"))

    @property
    def fd_path(self) -> str | None:
        """What the first argument's fd refers to (a path, or `TCP:[...]` for a socket)."""
        m = _FD.match(self.args)
        return m[1] if m else None

    @property
    def strings(self) -> list[bytes]:
        """The argument strings, unescaped (a buffer `strace -s` cut short keeps its head)."""
        return [unescape(m[1]) for m in _STRING.finditer(self.args)]

    @property
    def created(self) -> str | None:
        """For an openat that created a file (O_CREAT) and succeeded: its path."""
        if self.name != "openat" or "O_CREAT" not in self.args or not self.ok:
            return None
        m = re.match(r"^-?\d+<(.*)>$", self.result)
        return m[1] if m else None

    @property
    def peer_port(self) -> int | None:
        """For a call on a TCP socket: the peer's port (the client's, on a server socket)."""
        path = self.fd_path
        if path is None or not path.startswith("TCP"):
            return None
        m = _PEER.search(path)
        return int(m[2]) if m else None


def unescape(text: str) -> bytes:
    """A C string as strace prints it (\\n, \\", \\\\, \\xNN, octal \\NNN) back to bytes."""
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "x":
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif nxt in "01234567":
            m = re.match(r"[0-7]{1,3}", text[i + 1 :])
            assert m is not None
            out.append(int(m[0], 8))
            i += 1 + len(m[0])
        else:
            out.append(_ESCAPES[nxt])
            i += 2
    return bytes(out)


def parse(text: str) -> list[Call]:
    """Every call of an `strace -f -o FILE` trace, ordered by where it started."""
    calls: list[Call] = []
    pending: dict[int, tuple[str, str, int]] = {}  # pid -> (name, args, start) unfinished
    lines = text.splitlines()
    for n, line in enumerate(lines):
        m = _PID.match(line)
        if m is None:
            continue
        pid, rest = int(m[1]), m[2]
        if (c := _COMPLETE.match(rest)) and "<unfinished" not in rest:
            calls.append(Call(pid, c[1], c[2], c[3], n, n))
        elif u := _UNFINISHED.match(rest):
            pending[pid] = (u[1], u[2], n)
        elif r := _RESUMED.match(rest):
            name, args, start = pending.pop(pid, (r[1], "", n))
            assert name == r[1], f"line {n + 1}: {r[1]} resumed, {name} pending"
            calls.append(Call(pid, name, args + r[2], r[3], start, n))
        elif e := _EXIT.match(rest):
            calls.append(Call(pid, EXITED, "", e[1], n, n))
    # A call still pending never returned (the process was killed in it).
    calls += [
        Call(pid, name, args, "?", start, len(lines))
        for pid, (name, args, start) in pending.items()
    ]
    calls.sort(key=lambda call: call.start)
    return calls


@dataclass(frozen=True, slots=True)
class Placed:
    """One file made durable by write-tmp, fsync, rename, fsync-the-directory."""

    final: str  # where it ended up (new/<name>, cur/<name>, queue/msg/<id>, ...)
    created: Call  # the openat that created the temporary file
    file_sync: Call | None  # its fsync, before the rename (under its temporary name)
    rename: Call
    dir_sync: Call | None  # the first fsync of the destination directory after the rename


def placed_files(calls: list[Call], under: str) -> list[Placed]:
    """Every file renamed into place below directory `under` (an absolute path), with the calls
    that made it durable (None where one is missing)."""
    prefix = under.rstrip("/") + "/"
    found = []
    for rename in calls:
        if rename.name not in RENAMES or not rename.ok:
            continue
        paths = [s.decode() for s in rename.strings]
        if len(paths) != 2 or not paths[1].startswith(prefix):
            continue
        tmp, final = paths
        created = next((c for c in calls if c.created == tmp and c.end < rename.start), None)
        if created is None:
            continue  # not a write of ours (e.g. new/ -> cur/ moves)
        file_sync = next(
            (
                c
                for c in calls
                if c.name in SYNCS
                and c.ok
                and c.fd_path == tmp
                and created.end < c.start
                and c.end < rename.start
            ),
            None,
        )
        found.append(
            Placed(final, created, file_sync, rename, first_sync(calls, parent(final), rename))
        )
    return found


def parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def first_sync(calls: list[Call], path: str, after: Call) -> Call | None:
    """The first successful fsync of `path` that started after `after` returned."""
    return next(
        (
            c
            for c in calls
            if c.name in SYNCS and c.ok and c.fd_path == path and c.start > after.end
        ),
        None,
    )


def reply_to(calls: list[Call], port: int, work: Call) -> Call | None:
    """The server's answer to the request whose handling included `work`: the first write on
    the socket to client port `port` after the last read on it that came before `work`.

    The client must wait for that answer before sending more (smtplib and imaplib do). TLS
    hides the reply's text, not this order: a server that answers before `work` has its
    answer before that read or between it and `work`, never as the first write after.
    """
    on_socket = [c for c in calls if c.peer_port == port and c.ok]
    reads = [c for c in on_socket if c.name in READS and c.end < work.start]
    if not reads:
        return None
    last_read = reads[-1]
    return next((c for c in on_socket if c.name in WRITES and c.start > last_read.end), None)
