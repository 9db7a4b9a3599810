"""Running the playbook for real, and `serve` from the virtualenv the role made.

`ansible-playbook -i localhost, -c local` as root on this machine, as an admin would on the
server itself; the output is read the way a person reads it (the recap, the `changed:` lines).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from tests.support.serve import ServeProcess

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
PLAYBOOK = ANSIBLE_DIR / "playbook.yml"
ROLES = ANSIBLE_DIR / "roles"
BIN = Path(sys.executable).parent
SERVICES = ("smtp", "submission", "submissions", "imap", "imaps")
# The managed host's Python (python3-apt is there), not whatever a PATH lookup finds first.
HOST_PYTHON = "/usr/bin/python3"

_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?:mailstack : )?(.+?)\] \*+$")
_RECAP = re.compile(r"^localhost\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")


@dataclass
class PlaybookRun:
    returncode: int
    output: str
    changed: int
    failed: int
    changed_tasks: list[str]

    def explain(self) -> str:
        return f"exit {self.returncode}, changed tasks {self.changed_tasks}\n{self.output[-6000:]}"


def run_playbook(work: Path, variables: dict[str, object], *, name: str) -> PlaybookRun:
    """One `ansible-playbook -i localhost, -c local ansible/playbook.yml -e @vars`."""
    vars_file = work / f"{name}.vars.json"  # JSON is YAML: what -e @file reads
    vars_file.write_text(json.dumps(variables))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(work / ".ansible-local"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_CONFIG": str(work / "no-ansible.cfg"),  # never a stray ansible.cfg of the host
        "PYTHONWARNINGS": "ignore",  # ansible's own third-party deprecation noise
    }
    done = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(PLAYBOOK),
            "-e",
            f"@{vars_file}",
            "-e",
            f"ansible_python_interpreter={HOST_PYTHON}",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=600,
        check=False,
    )
    output = done.stdout + done.stderr
    (work / f"{name}.log").write_text(output)
    changed_tasks: list[str] = []
    task = ""
    changed = failed = -1
    for line in output.splitlines():
        if m := _TASK.match(line):
            task = m[1]
        elif line.startswith("changed: [localhost]"):
            changed_tasks.append(task)
        elif m := _RECAP.match(line):
            changed, failed = int(m[2]), int(m[4])
    return PlaybookRun(done.returncode, output, changed, failed, changed_tasks)


def free_ports(count: int, candidates: list[int] | None = None) -> list[int]:
    """`count` ports free on 127.0.0.1: from `candidates` in order, else any the kernel picks."""
    chosen: list[int] = []
    held: list[socket.socket] = []
    try:
        for port in [0] * count if candidates is None else candidates:
            if len(chosen) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            held.append(s)
            chosen.append(s.getsockname()[1])
    finally:
        for s in held:
            s.close()
    assert len(chosen) == count, f"not {count} free ports among {candidates}"
    return chosen


def open_path_to(path: Path) -> None:
    """Let other users (mailstack) traverse down to `path`: pytest's base temp is 0700."""
    for p in [path, *path.parents]:
        if p == Path(p.anchor) or p == Path("/tmp"):
            break
        mode = p.stat().st_mode
        if not mode & 0o001:
            os.chmod(p, (mode & 0o7777) | 0o011)  # noqa: S103 - traverse only, no listing


class ServeFrom(ServeProcess):
    """`serve` started with any argv (another virtualenv's mailstack, under setpriv, ...)."""

    def __init__(self, argv: list[str], root: Path, timeout_s: float = 60) -> None:
        super().__init__(root, timeout_s=timeout_s)
        self.argv = argv

    def start(self) -> ServeFrom:
        env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        threading.Thread(target=self._pump, daemon=True).start()
        self.wait_for("mailstack ready")
        return self

    def __enter__(self) -> ServeFrom:
        return self.start()


def proc_ids(pid: int) -> tuple[int, int, int]:
    """(real uid, effective uid, ambient capability mask) of a running process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    uids = fields["Uid"].split()
    return int(uids[0]), int(uids[1]), int(fields["CapAmb"].strip(), 16)


CAP_NET_BIND_SERVICE = 1 << 10
