#!/usr/bin/env python3
"""IMAP stress benchmark: many clients on one account, mailstack vs an isolated Dovecot.

Not a test (pytest does not collect bench/). Run from the repository root, as root (Dovecot's
imap is given the Maildir as `nobody`, tests/support/dovecot.py):

    python bench/imap_stress.py --messages 2000 --seconds 20 --write docs/benchmarks.md

One generated Maildir (bench/imap_bench.py's generator) is copied once per server. Each
client is a process of its own (so the client side is not one GIL) looping, for `--seconds`:

    [connect + LOGIN]  SELECT INBOX  FETCH a:a+9 (FLAGS ENVELOPE BODY.PEEK[])
    STORE n +FLAGS/-FLAGS (random flags)
    one time in ten:   STORE n +FLAGS (\\Deleted)  EXPUNGE
    one time in ten:   APPEND INBOX (4 KB)
    [LOGOUT]

with the bracketed commands ("per-loop logins") or without them (one login per client).
Every combination of 10 and 50 clients, with and without per-loop logins, runs against both
servers. Reported: commands per second over all clients, and p50/p99 latency per command
(client-side wall clock, from sending the command to its tagged completion). The window
starts when every client is ready (without per-loop logins: logged in), so a slow first
LOGIN is in LOGIN's latency but not in commands per second. NO/BAD answers (a message
another client expunged meanwhile) are counted per command, not retried; a LOGIN refused
(NO [UNAVAILABLE]: a server shedding login load) is retried.

The servers: mailstack as bench/imap_bench.py starts it (a subprocess, one deployment, an
argon2id password hash, INFO logging), with the per-account and per-address connection caps
raised above the client count; Dovecot with a real ARGON2ID hash (`doveadm pw`) in its
passwd-file, not {PLAIN}, and its auth cache on (mailstack caches logins too: [auth]
cache_s), `mail_max_userip_connections` raised likewise. mailstack's login throttle is
loosened unless `--default-throttle` is given: before 2026-12-06 (night) it counted each login
still being verified as a failure and delayed a burst of concurrent logins to one account by
up to 30 s; now parallel logins with one password are one attempt, and runs use the default.
Only 127.0.0.1 is contacted; every server started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.append(str(REPO))  # last: the installed mailstack wins over the checkout's folders

from bench.imap_bench import Server, dovecot_version, machine_notes, make_maildir  # noqa: E402
from tests.support.dovecot import start_dovecot  # noqa: E402
from tests.support.imapserver import PASSWORD, USER  # noqa: E402

FLAGS = ("\\Seen", "\\Flagged", "\\Answered", "$Label1")
APPEND_BODY = (
    b"From: stress@example.org\r\nTo: alice@example.com\r\nSubject: stress\r\n\r\n"
    + b"0123456789abcdef" * 256
    + b"\r\n"
)
COMMANDS = ("LOGIN", "SELECT", "FETCH", "STORE", "EXPUNGE", "APPEND", "LOGOUT")
SECTION = "## IMAP stress: many clients on one account"


# -- the servers -----------------------------------------------------------------------------


def serve_mailstack(state: Path, maildir: Path) -> None:
    """Subprocess mode: serve `maildir` as alice's INBOX; print the port; run until stdin
    closes."""
    import logging

    from mailstack.app import limit_malloc_arenas
    from tests.support.imapserver import ImapServerThread, make_deployment

    # The process as `serve` sets it up (its malloc arena limit: without it 8 sessions' threads
    # kept about 30 MB more resident in bench/imap_big_folder.py).
    limit_malloc_arenas()
    logging.basicConfig(filename=state.parent / "mailstack.log", level=logging.INFO)
    shutil.rmtree(state, ignore_errors=True)
    dep = make_deployment(
        state,
        allow_plaintext_auth=True,
        max_connections=5000,
        max_connections_per_ip=5000,
        max_connections_per_network=0,
        max_connections_per_user=1000,
    )
    if os.environ.get("STRESS_THROTTLE") != "default":
        # The login throttle counts a login in flight as a failure until it is decided, so N
        # concurrent logins of one account from one network are delayed (1 s doubling) from
        # the 4th and refused from the 20th (see the report). Not what this run measures.
        from mailstack.base.throttle import LoginThrottle

        dep.throttle = LoginThrottle(
            free_failures=100_000,
            lockout_failures=100_000,
            network_free_failures=100_000,
            network_lockout_failures=100_000,
        )
    target = dep.paths.maildir(USER)
    shutil.rmtree(target)
    os.rename(maildir, target)
    server = ImapServerThread(dep).start()
    try:
        print(server.imap_port, flush=True)
        sys.stdin.read()
    finally:
        server.stop()


@contextlib.contextmanager
def mailstack_server(work: Path, maildir: Path) -> Iterator[Server]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-mailstack", str(work / "ms-state"), str(maildir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        yield Server("mailstack", int(proc.stdout.readline()), lambda: None)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def argon2_hash(password: str) -> str:
    """Dovecot's own ARGON2ID hash of `password` (libsodium's interactive limits)."""
    out = subprocess.run(
        ["doveadm", "pw", "-s", "ARGON2ID", "-p", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout.strip()


DOVECOT_LIMITS = """
protocol imap {
  mail_max_userip_connections = 1000
}
default_process_limit = 2000
default_client_limit = 20000
# Remember successful logins, as mailstack does ([auth] cache_s): without it every LOGIN
# pays the argon2id hash.
auth_cache_size = 10M
auth_cache_ttl = 5 mins
"""


@contextlib.contextmanager
def dovecot_server(work: Path, maildir: Path) -> Iterator[Server]:
    dovecot = start_dovecot(work / "dovecot", {USER: (PASSWORD, maildir)}, DOVECOT_LIMITS)
    try:
        # A real hash scheme: passwd-file is re-read when it changes.
        passwd = dovecot.base / "passwd"
        line = passwd.read_text().replace("{PLAIN}" + PASSWORD, argon2_hash(PASSWORD), 1)
        passwd.write_text(line)
        client = imaplib.IMAP4("127.0.0.1", dovecot.port)
        client.login(USER, PASSWORD)  # the hash is in effect
        client.logout()
        yield Server("dovecot", dovecot.port, lambda: None)
    finally:
        dovecot.stop()


# -- the clients -------------------------------------------------------------------------------


def client_loop(
    port: int, per_loop_login: bool, seconds: float, seed: int, barrier: Any, out: Any
) -> None:
    """One client process: (log in,) wait for all the others, then loop for `seconds`; put
    ({command: [ms, ...]}, {command: errors}, commands in the window, when it ended)."""
    rng = random.Random(seed)
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    errors: dict[str, int] = {c: 0 for c in COMMANDS}
    client: imaplib.IMAP4 | None = None
    counted = 0

    def run(name: str, call: Any, *args: Any) -> Any:
        nonlocal counted
        start = time.perf_counter()
        try:
            typ, data = call(*args)
        except imaplib.IMAP4.error:  # BAD (e.g. a number beyond a shrunken mailbox), NO LOGIN
            typ, data = "BAD", None
        times[name].append((time.perf_counter() - start) * 1000)
        counted += 1
        if typ != ("BYE" if name == "LOGOUT" else "OK"):
            errors[name] += 1
            return None
        return data

    def login() -> imaplib.IMAP4:
        """Connect and LOGIN until it succeeds (a server shedding load says NO [UNAVAILABLE])."""
        while True:
            conn = imaplib.IMAP4("127.0.0.1", port, timeout=300)
            if run("LOGIN", conn.login, USER, PASSWORD) is not None:
                return conn
            conn.shutdown()
            time.sleep(0.1)

    if not per_loop_login:
        client = login()
    barrier.wait()  # every client ready: the measured window starts
    counted = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if per_loop_login:
                client = login()
            assert client is not None
            data = run("SELECT", client.select, "INBOX")
            exists = int(data[0]) if data and data[0] else 0
            if exists:
                first = rng.randint(1, exists)
                last = min(exists, first + 9)
                run("FETCH", client.fetch, f"{first}:{last}", "(FLAGS ENVELOPE BODY.PEEK[])")
                n = rng.randint(1, exists)
                flags = " ".join(rng.sample(FLAGS, rng.randint(1, 2)))
                mode = rng.choice(("+FLAGS", "-FLAGS"))
                run("STORE", client.store, str(n), mode, f"({flags})")
            r = rng.random()
            if r < 0.1 and exists:
                n = rng.randint(1, exists)
                run("STORE", client.store, str(n), "+FLAGS", "(\\Deleted)")
                run("EXPUNGE", client.expunge)
            elif r < 0.2:
                date = imaplib.Time2Internaldate(time.time())
                run("APPEND", client.append, "INBOX", "", date, APPEND_BODY)
            if per_loop_login:
                run("LOGOUT", client.logout)
                client = None
        ended = time.monotonic()
        if client is not None:
            client.logout()
    except (OSError, imaplib.IMAP4.abort) as exc:
        ended = time.monotonic()
        errors["LOGOUT"] += 1
        print(f"client {seed}: {exc}", file=sys.stderr)
    out.put((times, errors, counted, ended))


def stress(port: int, clients: int, per_loop_login: bool, seconds: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    barrier = ctx.Barrier(clients + 1)
    procs = [
        ctx.Process(target=client_loop, args=(port, per_loop_login, seconds, i, barrier, queue))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    barrier.wait(timeout=900)  # logins without per-loop LOGIN happen before this
    start = time.monotonic()
    results = [queue.get(timeout=seconds + 600) for _ in procs]
    elapsed = max(r[3] for r in results) - start
    for p in procs:
        p.join(60)
    times: dict[str, list[float]] = {c: [] for c in COMMANDS}
    errors = {c: 0 for c in COMMANDS}
    for t, e, _, _ in results:
        for c in COMMANDS:
            times[c] += t[c]
            errors[c] += e[c]
    total = sum(r[2] for r in results)  # commands in the window (not the initial logins)
    per_command = {
        c: {
            "n": len(v),
            "p50": round(statistics.median(v), 1),
            "p99": round(sorted(v)[min(len(v) - 1, int(len(v) * 0.99))], 1),
            "errors": errors[c],
        }
        for c, v in times.items()
        if v
    }
    return {"commands_per_s": round(total / elapsed, 1), "commands": per_command}


# -- the report ----------------------------------------------------------------------------------


def render(results: list[dict[str, Any]], messages: int, seconds: float, command: str) -> str:
    by = {(r["server"], r["clients"], r["logins"]): r for r in results}
    lines = [
        SECTION,
        "",
        f"Method: `bench/imap_stress.py` (its docstring has the loop); `{command}`, one run, "
        f"{seconds:g} s per case, INBOX of {messages} generated messages, Dovecot "
        f"{dovecot_version()} with an ARGON2ID password hash (mailstack: argon2id). "
        + machine_notes(),
        "",
        "| clients | per-loop LOGIN | mailstack cmd/s | Dovecot cmd/s | ratio mailstack/Dovecot |",
        "|---|---|---|---|---|",
    ]
    for clients in sorted({r["clients"] for r in results}):
        for logins in (True, False):
            ms, dc = by.get(("mailstack", clients, logins)), by.get(("dovecot", clients, logins))
            if ms is None and dc is None:
                continue
            a = ms["commands_per_s"] if ms else None
            b = dc["commands_per_s"] if dc else None
            ratio = f"{a / b:.2f}" if a and b else "-"
            lines.append(
                f"| {clients} | {'yes' if logins else 'no'} | {a or '-'} | {b or '-'} | {ratio} |"
            )
    lines += [
        "",
        "Latency per command, p50 / p99 in ms (errors: NO/BAD answers, e.g. a message "
        "another client had expunged):",
        "",
        "| clients | per-loop LOGIN | server | " + " | ".join(COMMANDS) + " |",
        "|---|---|---|" + "---|" * len(COMMANDS),
    ]
    for r in results:
        cells = []
        for c in COMMANDS:
            s = r["commands"].get(c)
            cells.append(
                "-"
                if s is None
                else f"{s['p50']} / {s['p99']}" + (f" ({s['errors']} err)" if s["errors"] else "")
            )
        lines.append(
            f"| {r['clients']} | {'yes' if r['logins'] else 'no'} | {r['server']} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines + NOTES) + "\n"


NOTES = [
    "",
    "What the numbers say (2026-12-07, 02:37 run, quiet machine, main at 75b7db3; rewrite these "
    "notes after a new run):",
    "",
    "- Commands per second: 1.21x (10 clients) and 1.14x (50) Dovecot without per-loop "
    "logins, 16.2x and 13.2x with them. Issue 11 asks for at least 0.5x: met in all four cases.",
    "- p99 at 10 clients, the issue's <= 50 ms: every command of the loop is under it (SELECT "
    "19-22, FETCH 32-34, STORE 33, EXPUNGE 33-35, APPEND 37-39 ms; LOGIN 21 ms with a login "
    "per loop). The exception is the first LOGIN without per-loop logins: the ten clients log "
    "in at once and share one argon2id verification (t=3, 64 MiB, p=4: 115-130 ms alone on this "
    "machine), 139 / 170 ms over those 10 samples. Issue 11 keeps argon2id, and a first login "
    "cannot cost less than its hash; Dovecot's first logins took about 1 s here.",
    "- Since the 00:05 run (p99 EXPUNGE 55-76, APPEND 64-80 ms): fewer trips to worker threads "
    "per command (what changed is read from a current index on the event loop; STORE, EXPUNGE "
    'and APPEND report their own change in the same trip), no tasks per read, a literal\'s "+" '
    "sent from the read callback, and max(2, cores) threads for the short store calls (with 6 "
    "they took turns at the GIL). Server CPU per command: 1.9-2.0 -> 1.3-1.6 ms.",
    "- Dovecot answers a single command faster at p50 (FETCH 1.4-7 ms against our 20-22 ms), "
    "one process per client; its tail is what costs it throughput: p99 of 0.3-0.5 s for "
    "SELECT, STORE, EXPUNGE and APPEND at 10 clients without logins and 1.7-3 s at 50 "
    "(`mail_fsync = always`: every flag change fsynced too; mailstack fsyncs deliveries, "
    "APPEND and EXPUNGE, not flag changes, as Dovecot's default `optimized`).",
    "- At 50 clients every session waits behind the others on one process: p99 150-300 ms "
    "(the issue's latency bound is for 10).",
    "- With a LOGIN per loop Dovecot computes argon2id again for every login (its auth cache "
    "keeps the hash, not the verdict), where mailstack remembers a verified login for "
    "`[auth] cache_s`. The run uses mailstack's default login throttle (`--default-throttle`): "
    "parallel logins of one account with one password are one attempt, not many guesses.",
    "- Errors are NO answers for a message another client expunged meanwhile (FETCH/STORE of "
    "a stale sequence number), not failures.",
]


def write_section(doc: Path, heading: str, section: str) -> None:
    """Replace the section under `heading` (up to the next "## "), or insert it before
    "## IMAP" (which bench/imap_bench.py rewrites to the end of the file), or append."""
    text = doc.read_text() if doc.exists() else ""
    start = text.find("\n" + heading + "\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[: start + 1] + section + ("\n" + text[end + 1 :] if end >= 0 else "")
    elif "\n## IMAP\n" in text:
        at = text.index("\n## IMAP\n")
        text = text[: at + 1] + section + "\n" + text[at + 1 :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--only", choices=("mailstack", "dovecot"))
    parser.add_argument("--write", type=Path, help="replace this section of the file")
    parser.add_argument(
        "--default-throttle",
        action="store_true",
        help="keep mailstack's login throttle as configured by default (see the docstring)",
    )
    parser.add_argument("--serve-mailstack", nargs=2, type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--from-results", nargs=4, metavar=("JSON", "MESSAGES", "SECONDS", "COMMAND"),
        help="re-render a saved bench/results/imap-stress-*.json instead of running",
    )  # fmt: skip
    args = parser.parse_args()
    if args.from_results:
        path, messages, seconds, command = args.from_results
        section = render(json.loads(Path(path).read_text()), int(messages), float(seconds), command)
        print(section)
        if args.write:
            write_section(args.write, SECTION, section)
        return 0
    if args.serve_mailstack:
        serve_mailstack(*args.serve_mailstack)
        return 0
    if os.geteuid() != 0:
        print("run as root: Dovecot is given the Maildir as `nobody`", file=sys.stderr)
        return 2
    if args.default_throttle:
        os.environ["STRESS_THROTTLE"] = "default"
    work = Path(tempfile.mkdtemp(prefix="imap-stress-"))
    work.chmod(0o711)
    results: list[dict[str, Any]] = []
    try:
        template = work / "template"
        make_maildir(template, args.messages)
        for name, start in (("mailstack", mailstack_server), ("dovecot", dovecot_server)):
            if args.only and name != args.only:
                continue
            for clients in args.clients:
                for logins in (True, False):
                    maildir = work / f"{name}-maildir"
                    shutil.rmtree(maildir, ignore_errors=True)
                    shutil.copytree(template, maildir)
                    with start(work, maildir) as server:
                        found = stress(server.port, clients, logins, args.seconds)
                    found.update(server=name, clients=clients, logins=logins)
                    print(json.dumps(found), flush=True)
                    results.append(found)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = ("python bench/imap_stress.py " + " ".join(sys.argv[1:])).strip()
    section = render(results, args.messages, args.seconds, command)
    print(section)
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    (out_dir / f"imap-stress-{stamp}.json").write_text(json.dumps(results, indent=1))
    if args.write:
        write_section(args.write, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
