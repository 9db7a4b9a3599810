"""Dovecot's imap binary as a pre-authenticated session on a Maildir the test owns.

Compliance tests send the same bytes to mailstack and to Dovecot and compare the answers. This
runs `/usr/lib/dovecot/imap` (no login process, no listener) on pipes (it refuses a socket as
stdin: "must not be started from inetd"), so a `RawClient` on them talks to it as to a server:
several sessions can be open on the same Maildir at once (one stores a keyword, the other sees
it) and a Maildir outlives its sessions (the "next session" of RFC 3501 \\Recent).

Dovecot refuses mail access as root, so when the tests run as root the Maildir is handed to
`nobody` before each session starts (`chown` of the whole tree).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.imap.rawclient import RawClient

DOVECOT_IMAP = Path("/usr/lib/dovecot/imap")


class DovecotMaildir:
    """A Maildir (INBOX at `maildir`) that Dovecot sessions open one after another or at once."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.maildir = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            self.uid, self.gid, self.name = user.pw_uid, user.pw_gid, user.pw_name
        else:
            self.uid, self.gid = os.getuid(), os.getgid()
            self.name = pwd.getpwuid(self.uid).pw_name
        self.conf = base / "dovecot.conf"
        self.conf.write_text(
            f"log_path = {base}/dovecot.log\nssl = no\nmail_location = maildir:{self.maildir}\n"
            f"mail_uid = {self.uid}\nmail_gid = {self.gid}\n"
            "first_valid_uid = 0\nfirst_valid_gid = 0\n"
            f"base_dir = {base}/run\nimap_capability = +COMPRESS=DEFLATE\n"
        )

    @contextmanager
    def session(self) -> Iterator[RawClient]:
        """A logged-in (PREAUTH) session; `greeting` holds the PREAUTH line."""
        if os.geteuid() == 0:
            for path in [self.maildir, *self.maildir.rglob("*")]:
                os.chown(path, self.uid, self.gid)
        proc = subprocess.Popen(
            [str(DOVECOT_IMAP), "-c", str(self.conf)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env={"HOME": str(self.base), "USER": self.name, "TZ": "UTC", "PATH": "/usr/bin:/bin"},
        )
        client = RawClient.__new__(RawClient)
        client.sock, client.buf, client.n = _Pipes(proc), b"", 0  # type: ignore[assignment]
        try:
            client.greeting = client.line()
            yield client
        finally:
            client.close()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


class _Pipes:
    """The part of a socket RawClient uses, over a child's stdin and stdout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdin is not None and proc.stdout is not None
        self.stdin, self.stdout = proc.stdin, proc.stdout

    def recv(self, size: int) -> bytes:
        return os.read(self.stdout.fileno(), size)

    def sendall(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def close(self) -> None:
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


@pytest.fixture
def dovecot_maildir() -> Iterator[DovecotMaildir]:
    if not DOVECOT_IMAP.exists():
        pytest.fail(f"{DOVECOT_IMAP} is missing (Debian: dovecot-imapd); scripts/test installs it")
    # Not tmp_path: pytest's base temp dir is 0700, and Dovecot's imap may run as nobody.
    base = Path(tempfile.mkdtemp(prefix="mailstack-dovecot-"))
    base.chmod(0o711)
    try:
        yield DovecotMaildir(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
