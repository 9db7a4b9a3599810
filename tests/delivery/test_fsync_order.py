"""Nothing is acknowledged before it is durable, proven from the system calls.

A kill -9 right after a `250` (tests/smtp/test_durability.py) cannot see a missing fsync: the
kernel keeps written pages when a process dies, only a power cut loses them. So these tests run
the real programs under `strace -f -yy` (tests/support/strace.py) and check, for every message,
that the message file's fsync, its rename into new/ or cur/, the directory's fsync and the
`dovecot-uidlist`'s fsync (for the queue: each spool file's fsync, rename and directory fsync)
all returned before the reply was written to the client's socket:

- MX delivery in `serve` (its SMTP worker processes take the sessions: `-f` follows them);
- `mailstack deliver` (an LDA acknowledges with its exit status 0);
- IMAP APPEND (the tagged OK carries APPENDUID);
- submission to a remote address (the outbound queue's spool; the reply is TLS-encrypted, so
  it is found by its place on the socket, see `reply_to`).

Remove any one of those fsyncs from mailstack and one of these tests fails.
"""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from tests.conftest import MAILSTACK, Cli
from tests.support.serve import ServeProcess
from tests.support.strace import (
    EXITED,
    RENAMES,
    SYNCS,
    UNLINKS,
    WRITES,
    Call,
    Placed,
    first_sync,
    parent,
    parse,
    placed_files,
    reply_to,
    strace_command,
)

pytestmark = pytest.mark.external  # strace

ALICE, PASSWORD = "alice@example.com", "fsync order"
MESSAGE = b"From: x@example.net\r\nTo: alice@example.com\r\nSubject: %d\r\n\r\nbody %d\r\n"


def _configure(root: Path, *changes: tuple[str, str]) -> None:
    config = root / "mailstack.toml"
    text = config.read_text()
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config.write_text(text)


@pytest.fixture
def deployment(cli: Cli, deployment_dir: Path) -> Path:
    _configure(
        deployment_dir,
        # SPF/DKIM/DMARC would query the system resolver; these tests are about the store.
        ("verify_inbound = true", "verify_inbound = false"),
        # APPEND over plain IMAP, so the trace shows the tagged OK in clear.
        ("allow_plaintext_auth = false", "allow_plaintext_auth = true"),
        # The queue runner's attempts go to a closed loopback port, not to the Internet.
        ('relay = ""', 'relay = "127.0.0.1:9"'),
    )
    added = cli("user", "add", ALICE, "--password-stdin", input=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    return deployment_dir


def traced_serve(root: Path, trace: Path) -> ServeProcess:
    return ServeProcess(root, timeout_s=120, wrapper=strace_command(trace))


def maildir_writes(calls: list[Call], folder: Path) -> list[Placed]:
    """Message files renamed into `folder`'s new/ or cur/, in the order they were created."""
    found = [p for p in placed_files(calls, str(folder)) if parent(p.final) in _subdirs(folder)]
    return sorted(found, key=lambda p: p.created.start)


def _subdirs(folder: Path) -> set[str]:
    return {str(folder / "new"), str(folder / "cur")}


def assert_durable_before(ack: Call | None, what: str, steps: dict[str, Call | None]) -> None:
    """Each step happened, and returned before `ack` (the reply write, or the exit) started."""
    assert ack is not None, f"{what}: no reply found in the trace"
    missing = [name for name, call in steps.items() if call is None]
    assert not missing, f"{what}: no {', '.join(missing)} before the reply"
    late = [
        f"{name} (line {call.end + 1})"
        for name, call in steps.items()
        if call is not None and call.end >= ack.start
    ]
    assert not late, f"{what}: reply at line {ack.start + 1} came before {', '.join(late)}"


def maildir_steps(calls: list[Call], placed: Placed) -> dict[str, Call | None]:
    folder = parent(parent(placed.final))
    return {
        "message fsync": placed.file_sync,
        "rename": placed.rename,
        "directory fsync": placed.dir_sync,
        "dovecot-uidlist fsync": first_sync(calls, f"{folder}/dovecot-uidlist", placed.rename),
    }


def test_mx_250_comes_after_every_fsync(deployment: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    serve = traced_serve(deployment, trace)
    ports = []  # client port of each message, in the order sent
    with serve:
        main_pid = serve.pid
        for n in range(2):  # two sessions of two messages each
            with smtplib.SMTP("127.0.0.1", serve.port("smtp"), timeout=60) as client:
                for i in range(2):
                    ports.append(client.sock.getsockname()[1])
                    refused = client.sendmail("x@example.net", [ALICE], MESSAGE % (n, i))
                    assert refused == {}
    calls = parse(trace.read_text())
    writes = maildir_writes(calls, deployment / "mail/example.com/alice")
    # The order first (its message says more than a count), then that every message was seen.
    for port, placed in zip(ports, writes, strict=False):
        reply = reply_to(calls, port, placed.created)
        assert reply is not None
        assert_durable_before(reply, placed.final, maildir_steps(calls, placed))
        assert reply.strings[0].startswith(b"250 2.0.0"), reply
        # The sessions live in SMTP worker processes: the trace followed them there.
        assert reply.pid != main_pid
    assert len(writes) == len(ports) == 4


def test_lda_exits_0_only_after_every_fsync(deployment: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    for n in range(2):
        command = [MAILSTACK, "--dir", str(deployment), "deliver", ALICE, "--from", "x@example.net"]
        done = subprocess.run(
            [*strace_command(Path(f"{trace}{n}")), *command],
            input=MESSAGE % (n, n),
            capture_output=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        calls = parse(Path(f"{trace}{n}").read_text())
        (placed,) = maildir_writes(calls, deployment / "mail/example.com/alice")
        # An LDA's acknowledgement is its exit status: the exit of the process strace started.
        exits = [c for c in calls if c.name == EXITED and c.pid == calls[0].pid]
        assert [c.result for c in exits] == ["0"]
        assert_durable_before(exits[0], placed.final, maildir_steps(calls, placed))


def test_appenduid_comes_after_every_fsync(deployment: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    ports = []
    with (
        traced_serve(deployment, trace) as serve,
        imaplib.IMAP4("127.0.0.1", serve.port("imap"), timeout=60) as imap,
    ):
        imap.login(ALICE, PASSWORD)
        for flags in (None, r"(\Seen)"):  # into new/, then into cur/
            ports.append(imap.sock.getsockname()[1])
            typ, data = imap.append("INBOX", flags, None, MESSAGE % (1, 1))
            assert typ == "OK", data
            assert b"APPENDUID" in data[0]
    calls = parse(trace.read_text())
    writes = maildir_writes(calls, deployment / "mail/example.com/alice")
    assert [parent(p.final).rsplit("/", 1)[1] for p in writes] == ["new", "cur"]
    for port, placed in zip(ports, writes, strict=True):
        reply = reply_to(calls, port, placed.created)
        assert reply is not None
        assert b"OK [APPENDUID " in reply.strings[0], reply
        assert_durable_before(reply, placed.final, maildir_steps(calls, placed))


def test_queued_250_comes_after_the_spool_is_durable(deployment: Path, tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    tls = ssl.create_default_context(cafile=str(deployment / "tls/ca.pem"))
    tls.check_hostname = False  # we connect to 127.0.0.1; the chain is still verified
    ports = []
    message = b"From: %s\r\nTo: bob@elsewhere.test\r\n\r\nbody %d\r\n"
    with (
        traced_serve(deployment, trace) as serve,
        smtplib.SMTP("127.0.0.1", serve.port("submission"), timeout=60) as client,
    ):
        client.starttls(context=tls)
        client.login(ALICE, PASSWORD)
        for i in range(2):
            ports.append(client.sock.getsockname()[1])
            refused = client.sendmail(ALICE, ["bob@elsewhere.test"], message % (ALICE.encode(), i))
            assert refused == {}
    calls = parse(trace.read_text())
    # The reply is encrypted: reply_to finds it as the first write after the end of DATA.
    for reply, _spooled in spool_writes(calls, deployment / "queue", ports):
        assert reply is not None


def test_forwarded_250_comes_after_the_spool_is_durable(
    cli: Cli, deployment: Path, tmp_path: Path
) -> None:
    """The MX hands an alias's outside target to the queue; here the 250 is in clear text."""
    added = cli("alias", "add", "--external", "fwd@example.com", "friend@elsewhere.test")
    assert added.returncode == 0, added.stderr
    trace = tmp_path / "trace"
    ports = []
    with (
        traced_serve(deployment, trace) as serve,
        smtplib.SMTP("127.0.0.1", serve.port("smtp"), timeout=60) as client,
    ):
        for i in range(2):
            ports.append(client.sock.getsockname()[1])
            assert client.sendmail("x@example.net", ["fwd@example.com"], MESSAGE % (i, i)) == {}
    calls = parse(trace.read_text())
    for reply, _spooled in spool_writes(calls, deployment / "queue", ports):
        assert reply is not None
        assert reply.strings[0].startswith(b"250 2.0.0"), reply


def spool_writes(
    calls: list[Call], spool: Path, ports: list[int]
) -> list[tuple[Call | None, Placed]]:
    """Per message sent (client port of each, in order): the reply, and the message's spool
    file, after checking that msg/<id> and state/<id>.json were durable before the reply."""
    msgs = sorted(placed_files(calls, str(spool / "msg")), key=lambda p: p.created.start)
    assert len(msgs) == len(ports), "spool files not written as tmp file, fsync, rename"
    states: dict[str, Placed] = {}  # the first state file of each message (the runner's later)
    for p in sorted(placed_files(calls, str(spool / "state")), key=lambda p: p.created.start):
        states.setdefault(Path(p.final).name.removesuffix(".json"), p)
    out: list[tuple[Call | None, Placed]] = []
    for port, msg in zip(ports, msgs, strict=True):
        state = states[Path(msg.final).name]  # written after the message: "now it exists"
        reply = reply_to(calls, port, msg.created)
        steps = {
            "message fsync": msg.file_sync,
            "message rename": msg.rename,
            "msg/ fsync": msg.dir_sync,
            "state fsync": state.file_sync,
            "state rename": state.rename,
            "state/ fsync": state.dir_sync,
        }
        assert_durable_before(reply, msg.final, steps)
        out.append((reply, msg))
    return out


def test_expunge_is_durable_before_its_ok_and_flag_changes_are_not_fsynced(
    deployment: Path, tmp_path: Path
) -> None:
    # What README promises beyond APPEND: an EXPUNGE's unlink reaches the disk (its directory
    # fsynced) before the tagged OK, so a message a client was told is gone (VANISHED, RFC
    # 7162) does not come back with its UID after a power cut. A flag change (a rename
    # within cur/) is not fsynced, as with Dovecot's default `mail_fsync = optimized`.
    trace = tmp_path / "trace"
    with (
        traced_serve(deployment, trace) as serve,
        imaplib.IMAP4("127.0.0.1", serve.port("imap"), timeout=60) as imap,
    ):
        imap.login(ALICE, PASSWORD)
        assert imap.append("INBOX", r"(\Seen)", None, MESSAGE % (1, 1))[0] == "OK"
        imap.select("INBOX")
        port = imap.sock.getsockname()[1]
        assert imap.store("1", "+FLAGS", r"(\Flagged)")[0] == "OK"
        assert imap.store("1", "+FLAGS", r"(\Deleted)")[0] == "OK"
        typ, data = imap.expunge()
        assert typ == "OK" and data == [b"1"], data
    calls = parse(trace.read_text())
    cur = str(deployment / "mail/example.com/alice/cur")
    unlink = next(
        c for c in calls if c.name in UNLINKS and c.ok and any(cur in s.decode() for s in c.strings)
    )
    reply = tagged_after(calls, port, unlink)
    assert b"EXPUNGE completed" in reply.strings[0], reply
    assert_durable_before(reply, "expunge", {"directory fsync": first_sync(calls, cur, unlink)})
    flagged = next(
        c for c in calls if c.name in RENAMES and c.ok and c.strings[-1].decode().endswith(",FS")
    )
    stored = tagged_after(calls, port, flagged)
    assert b"STORE completed" in stored.strings[0], stored
    synced = [c for c in calls if c.name in SYNCS and flagged.end < c.start < stored.start]
    assert synced == [], synced


def tagged_after(calls: list[Call], port: int, work: Call) -> Call:
    """The first write to client port `port` after `work` holding a tagged line."""
    return next(
        c
        for c in calls
        if c.peer_port == port
        and c.name in WRITES
        and c.start > work.end
        and any(b" OK " in s or b" NO " in s for s in c.strings)
    )
