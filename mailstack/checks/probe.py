"""The probe mailbox, the IMAP login check and the end-to-end delivery check.

`check` needs no password: `probe_mailbox` creates a temporary account with a random name
(`mailstack-check-<hex>@<first domain>`) and a random password in users.sqlite3 and its
Maildir, which a running serve sees at once (INTERFACE.md), and removes both afterwards, even
when a check fails or the run is interrupted (Ctrl-C, and SIGTERM, which unwinds as
SystemExit while the probe exists). A probe left behind by a run killed outright (SIGKILL)
is removed by the next run once it is older than `STALE_PROBE_S`.

`e2e.delivery` sends a message over SMTP (the MX listener, STARTTLS when offered, as a
sending MTA would) to the probe, waits until it shows up over IMAP (IMAPS if configured, else
IMAP with STARTTLS), and deletes it there (STORE \\Deleted, EXPUNGE: RFC 9051 §6.4.6, §6.4.3).
"""

from __future__ import annotations

import contextlib
import imaplib
import ipaddress
import os
import secrets
import shutil
import signal
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from mailstack.base.config import format_hostport
from mailstack.base.errors import NotFoundError
from mailstack.checks import Finding, Status, failed, passed, skipped, warned
from mailstack.checks.listeners import EHLO_NAME, client_tls, connect_host, unknown_port
from mailstack.delivery.store import UnknownUserError
from mailstack.deployment import Deployment

PROBE_PREFIX = "mailstack-check-"
STALE_PROBE_S = 3600.0  # no check runs this long: an older probe was left by a killed run
PROBE_QUOTA_BYTES = 10 * 1024**2


@dataclass(frozen=True, slots=True)
class Probe:
    address: str
    password: str


def _remove(dep: Deployment, address: str, created_domain_dir: bool) -> None:
    with contextlib.suppress(NotFoundError):
        dep.accounts.delete_user(address)
    with contextlib.suppress(UnknownUserError):
        dep.store.delete_account(address)
    root = dep.paths.maildir(address)
    if root.exists():  # half-created (no cur/): the store does not know it as a mailbox
        shutil.rmtree(root, ignore_errors=True)
    if created_domain_dir:
        with contextlib.suppress(OSError):  # not empty: a real account arrived meanwhile
            root.parent.rmdir()


def remove_stale_probes(dep: Deployment, now: float | None = None) -> list[str]:
    now = time.time() if now is None else now
    removed = []
    for user in dep.accounts.users():
        if user.address.startswith(PROBE_PREFIX) and now - user.created > STALE_PROBE_S:
            _remove(dep, user.address, created_domain_dir=False)
            removed.append(user.address)
    return removed


def _match_owner(dep: Deployment, top: Path) -> None:
    """`sudo mailstack check` on a deployment owned by the service user: give the probe's
    Maildir to that user, or serve could not deliver into it."""
    owner = dep.paths.root.stat()
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    for path in [top, *top.rglob("*")]:
        os.lchown(path, owner.st_uid, owner.st_gid)


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the probe exists, SIGTERM (a timeout in a script, systemd) raises SystemExit,
    so the `finally` below still removes the probe; the process then exits 143 as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def probe_mailbox(dep: Deployment, domain: str) -> Iterator[Probe]:
    with _sigterm_unwinds():
        yield from _probe(dep, domain)


def _probe(dep: Deployment, domain: str) -> Iterator[Probe]:
    remove_stale_probes(dep)
    address = f"{PROBE_PREFIX}{secrets.token_hex(6)}@{domain}"
    password = secrets.token_urlsafe(24)
    domain_dir = dep.paths.maildir(address).parent
    created_domain_dir = not domain_dir.exists()
    dep.accounts.add_user(address, password, quota_bytes=PROBE_QUOTA_BYTES)
    try:
        dep.store.create_account(address)
        _match_owner(dep, domain_dir if created_domain_dir else dep.paths.maildir(address))
        yield Probe(address, password)
    finally:
        _remove(dep, address, created_domain_dir)


# -- IMAP login -----------------------------------------------------------------------------


def imap_login(dep: Deployment, probe: Probe, timeout_s: float) -> imaplib.IMAP4:
    """A logged-in IMAP session for the probe over TLS; raises OSError/IMAP4.error/SSLError."""
    cfg = dep.config
    if cfg.listeners("imaps"):
        host, port = cfg.listeners("imaps")[0]
        imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(
            connect_host(host), port, ssl_context=client_tls(), timeout=timeout_s
        )
    else:
        host, port = cfg.listeners("imap")[0]
        imap = imaplib.IMAP4(connect_host(host), port, timeout=timeout_s)
        imap.starttls(ssl_context=client_tls())
    try:
        imap.login(probe.address, probe.password)
    except BaseException:
        with contextlib.suppress(OSError):
            imap.shutdown()
        raise
    return imap


def imap_where(dep: Deployment) -> str:
    cfg = dep.config
    service = "imaps" if cfg.listeners("imaps") else "imap"
    host, port = cfg.listeners(service)[0]
    return format_hostport(connect_host(host), port)


def check_login(dep: Deployment, probe: Probe, timeout_s: float) -> Finding:
    if not (dep.config.listeners("imaps") or dep.config.listeners("imap")):
        return skipped("imap.login", "listen.imap and listen.imaps are empty")
    where = imap_where(dep)
    if where.endswith(":0"):
        return unknown_port("imap", where, ("imap.login",))[0]
    try:
        imap = imap_login(dep, probe, timeout_s)
    except imaplib.IMAP4.error as exc:
        return failed(
            "imap.login",
            f"{where}: the probe account could not log in: {exc}",
            "serve must read accounts from this deployment's users.sqlite3: is it "
            "running with the same --dir? read its log",
        )
    except (OSError, ssl.SSLError) as exc:
        return failed(
            "imap.login",
            f"{where}: cannot connect for the login: {exc}",
            "start serve (`systemctl start mailstack`) and read its log",
        )
    with contextlib.suppress(OSError, imaplib.IMAP4.error):
        imap.logout()
    return passed("imap.login", f"{where}: a new account can log in at once over TLS")


# -- end to end ---------------------------------------------------------------------------


def _message(probe: Probe, token: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"mailstack check <{probe.address}>"
    msg["To"] = probe.address
    msg["Subject"] = f"mailstack check {token}"
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain=probe.address.rpartition("@")[2])
    msg["X-Mailstack-Check"] = token
    msg.set_content("This message tests delivery; `mailstack check` deletes it at once.\n")
    return msg


def source_address(dep: Deployment, target: str) -> str | None:
    """Our public address (server.ipv4/ipv6), if it is assigned to this host.

    The probe message is sent from it, so that the server's SPF/DMARC verdict is the one
    the world gets (sent from 127.0.0.1 it would fail SPF and land in Junk). Behind NAT the
    address is not local: None, and the message comes from loopback.
    """
    try:
        family = ipaddress.ip_address(target).version
    except ValueError:  # a listener given by name: let the system choose
        return None
    wanted = dep.config.server.ipv4 if family == 4 else dep.config.server.ipv6
    if not wanted:
        return None
    with socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6) as s:
        try:
            s.bind((wanted, 0))
        except OSError:
            return None
    return wanted


def _send(dep: Deployment, probe: Probe, token: str, timeout_s: float) -> None:
    host, port = dep.config.listeners("smtp")[0]
    target = connect_host(host)
    source = source_address(dep, target)
    # EHLO with the address literal we connect from (RFC 5321 §4.1.3).
    ehlo = EHLO_NAME if not source else f"[IPv6:{source}]" if ":" in source else f"[{source}]"
    with smtplib.SMTP(
        target,
        port,
        timeout=timeout_s,
        local_hostname=ehlo,
        source_address=(source, 0) if source else None,
    ) as smtp:
        smtp.ehlo()
        if smtp.has_extn("starttls"):
            smtp.starttls(context=client_tls())
            smtp.ehlo()
        smtp.send_message(_message(probe, token), from_addr=probe.address, to_addrs=[probe.address])


def _find(imap: imaplib.IMAP4, folder: str, token: str) -> list[bytes]:
    typ, _ = imap.select(folder)
    if typ != "OK":
        return []
    typ, data = imap.uid("SEARCH", "HEADER", "X-Mailstack-Check", token)
    if typ != "OK" or not data or not data[0]:
        return []
    found: bytes = data[0]
    return found.split()


def check_e2e(dep: Deployment, probe: Probe, timeout_s: float, io_timeout_s: float) -> Finding:
    cfg = dep.config
    if not cfg.listeners("smtp"):
        return skipped("e2e.delivery", "listen.smtp is empty: nothing receives mail")
    if not (cfg.listeners("imaps") or cfg.listeners("imap")):
        return skipped("e2e.delivery", "listen.imap and listen.imaps are empty")
    for service in ("smtp", "imaps" if cfg.listeners("imaps") else "imap"):
        host, port = cfg.listeners(service)[0]
        if port == 0:
            return unknown_port(
                service, format_hostport(connect_host(host), port), ("e2e.delivery",)
            )[0]
    token = secrets.token_hex(8)
    started = time.monotonic()
    try:
        _send(dep, probe, token, io_timeout_s)
    except smtplib.SMTPException as exc:
        return failed(
            "e2e.delivery",
            f"SMTP refused the probe message to {probe.address}: {exc}",
            "read serve's log for the refusal (and smtp.* above)",
        )
    except (OSError, ssl.SSLError) as exc:
        return failed("e2e.delivery", f"cannot send over SMTP: {exc}", "see smtp.banner")
    try:
        imap = imap_login(dep, probe, io_timeout_s)
    except (OSError, ssl.SSLError, imaplib.IMAP4.error) as exc:
        return failed(
            "e2e.delivery",
            f"the probe message was accepted, but IMAP login failed: {exc}",
            "see imap.login",
        )
    try:
        finding = _await(imap, token, started, timeout_s)
    except (OSError, ssl.SSLError, imaplib.IMAP4.error) as exc:
        return failed(
            "e2e.delivery", f"IMAP failed while looking for the message: {exc}", "read serve's log"
        )
    finally:
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            imap.logout()
    if (
        finding.status is Status.WARN
        and source_address(dep, connect_host(cfg.listeners("smtp")[0][0])) is None
    ):
        return replace(
            finding,
            message=finding.message + "; this host does not hold "
            "server.ipv4/ipv6 (NAT?), so the message came from loopback, which "
            "SPF does not list: mail from outside is judged on its own",
        )
    return finding


def _await(imap: imaplib.IMAP4, token: str, started: float, timeout_s: float) -> Finding:
    # SMTP answers 250 only once the message is on disk, so it is normally there on the
    # first look; the loop covers a server that delivers from a queue after accepting.
    deadline = started + timeout_s
    while True:
        uids = _find(imap, "INBOX", token)
        if uids or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    if not uids:
        if _find(imap, "Junk", token):
            return warned(
                "e2e.delivery",
                "the probe message arrived in Junk, not INBOX: the "
                "server's SPF/DKIM/DMARC verdict on mail from this host is negative",
                "see dns.spf and dns.dmarc: this host's address must pass SPF for the domain",
            )
        return failed(
            "e2e.delivery",
            f"SMTP accepted the probe message, but it did not show "
            f"up over IMAP within {timeout_s:.0f}s",
            "read serve's log: delivery to the Maildir failed or is slow",
        )
    imap.uid("STORE", b",".join(uids).decode(), "+FLAGS.SILENT", r"(\Deleted)")
    imap.expunge()
    return passed(
        "e2e.delivery",
        f"a message sent over SMTP showed up over IMAP after {elapsed:.1f}s, and was deleted",
    )
