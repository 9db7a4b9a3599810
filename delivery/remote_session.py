"""One SMTP client session to one host: connect, EHLO, TLS, AUTH, then transactions.

    run_session(host, address, port, first=..., take=..., done=..., ...) -> None

delivery/remote.py decides where to go (MX, relay, route) and what TLS each host must reach;
this module speaks to one of them. EHLO with our hostname; STARTTLS when offered,
opportunistically and without verifying the certificate (RFC 7435 opportunistic security;
RFC 3207 §4.1 leaves it to the client; MTAs default to this, e.g. Postfix's
`smtp_tls_security_level = may`) unless the `TlsRequirement` asks for more; a route's relay on
465 speaks TLS from the first byte (RFC 8314 §3). `NextHostError` means nothing was attempted
on this host (the caller tries the next one); `TlsFailedError` that an opportunistic handshake
failed (the caller may retry in plain text).

BODY=8BITMIME when the message has 8-bit bytes and the server offers it (RFC 6152); SMTPUTF8
when an address is not ASCII (RFC 6531), and a server without it is a permanent 5.6.7 for
those messages. Classification per recipient (RFC 5321 §4.2.1): 2xx delivered, 4xx
temporary, 5xx permanent; connection trouble is temporary. Blocking (sockets); stdlib smtplib.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mailstack.delivery.transport import OPPORTUNISTIC, TlsRequirement, peer_chain

from mailstack.base.credentials import RouteCredentials

Kind = Literal["delivered", "temporary", "permanent"]

CONNECT_TIMEOUT_S = 30.0  # TCP connect and the 220 greeting (RFC 5321 §4.5.3.2.1 allows 5 min;
# a host that slow is better skipped for the next MX)
SESSION_TIMEOUT_S = 600.0  # per socket read after the greeting: RFC 5321 §4.5.3.2.6's longest
# wait (10 min for the reply to the final "." of DATA)


@dataclass(frozen=True, slots=True)
class RcptResult:
    address: str
    kind: Kind
    reply: str  # the remote reply ("550 5.1.1 no such user") or our own description
    remote_mta: str = ""  # the host name that answered, "" when none did


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message for one destination: what a transaction sends."""

    domain: str
    mail_from: str
    rcpts: Sequence[str]
    message: bytes


Take = Callable[[], Outgoing | None]  # the next message for this destination, or None: QUIT
# A message's results (one per recipient, in order), or None: not attempted, give it back
Done = Callable[[Outgoing, list[RcptResult] | None], None]


class Abort:
    """Lets another thread end attempts in flight (serve shutting down): their sockets are
    shut down, so a read blocked for up to SESSION_TIMEOUT_S returns at once and the
    recipients are recorded as temporary failures. The TCP connect itself is bounded by
    CONNECT_TIMEOUT_S only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.is_set = False

    def watch(self, sock: socket.socket | None) -> None:
        if sock is None:
            return
        with self._lock:
            self._socks.add(sock)
            if self.is_set:
                _shut(sock)

    def forget(self, sock: socket.socket | None) -> None:
        with self._lock:
            if sock is not None:
                self._socks.discard(sock)

    def set(self) -> None:
        with self._lock:
            self.is_set = True
            for sock in self._socks:
                _shut(sock)


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket's override, which would clear the TLS object that
    # the reading thread is using.
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class NextHostError(Exception):
    """This host failed before a transaction began: try the next address or MX."""


class TlsFailedError(NextHostError):
    """The STARTTLS handshake failed: opportunistic TLS retries this host in plain text."""


class _TlsRefusedError(NextHostError):
    """TLS was required (route, MTA-STS, DANE) and not achieved: next host, no plain text.
    `result_type` is RFC 8460 §4.3's name for the failure, for TLS-RPT."""

    def __init__(self, message: str, result_type: str) -> None:
        super().__init__(message)
        self.result_type = result_type


# TLS-RPT (RFC 8460): called once per session with None (TLS as required) or a result type
TlsOutcome = Callable[[str, str, str | None], None]  # (host, address, result type or None)


def _verify_failure(exc: ssl.SSLError) -> str:
    """RFC 8460 §4.3 result type of a failed verifying handshake."""
    text = str(exc).lower()
    if "hostname mismatch" in text or "ip address mismatch" in text:
        return "certificate-host-mismatch"
    if "expired" in text:
        return "certificate-expired"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "certificate-not-trusted"
    return "validation-failure"


def classify(code: int) -> Kind:
    if 200 <= code < 300:
        return "delivered"
    if 500 <= code < 600:
        return "permanent"
    return "temporary"  # 4xx, and anything unexpected: retrying is the safe side


def all_results(rcpts: Sequence[str], kind: Kind, reply: str, mta: str = "") -> list[RcptResult]:
    return [RcptResult(r, kind, reply, mta) for r in rcpts]


def run_session(
    host: str,
    address: str,
    port: int,
    *,
    ehlo_name: str,
    first: Outgoing,
    take: Take,
    done: Done,
    abort: Abort,
    use_tls: bool = True,
    tls: TlsRequirement = OPPORTUNISTIC,
    credentials: RouteCredentials | None = None,
    on_tls: TlsOutcome | None = None,
    implicit_tls: bool = False,
) -> None:
    """`first`, then what `take` gives, over one connection; each message's results go to
    `done`. NextHostError when nothing was attempted on this host."""
    report = on_tls or (lambda _host, _address, _result: None)
    smtp = (
        # RFC 8314 §3: a route relay on 465 speaks TLS from the first byte
        smtplib.SMTP_SSL(local_hostname=ehlo_name, timeout=CONNECT_TIMEOUT_S, context=tls.context)
        if implicit_tls
        else smtplib.SMTP(local_hostname=ehlo_name, timeout=CONNECT_TIMEOUT_S)
    )
    # smtplib takes the TLS server name (SNI) from the host given to its constructor, which
    # would also connect; we connect to one address of the MX, and name the MX in SNI.
    smtp._host = host  # type: ignore[attr-defined]
    where = f"{host}[{address}]:{port}"
    socks: list[socket.socket | None] = []
    try:
        try:
            smtp.connect(address, port)
            socks.append(smtp.sock)
            abort.watch(smtp.sock)
            if smtp.sock is not None:
                smtp.sock.settimeout(SESSION_TIMEOUT_S)
            code, _ = smtp.ehlo()
            if code != 250:
                smtp.helo()
            if implicit_tls:
                report(host, address, None)
            elif use_tls and smtp.has_extn("starttls"):
                try:
                    smtp.starttls(context=tls.context)
                except ssl.SSLError as exc:
                    report(host, address, _verify_failure(exc))
                    if tls.required:
                        raise _TlsRefusedError(
                            f"{where}: TLS required ({tls.policy}) but failed: {exc}",
                            _verify_failure(exc),
                        ) from None
                    raise TlsFailedError(f"{where}: TLS handshake failed: {exc}") from None
                socks.append(smtp.sock)
                abort.watch(smtp.sock)
                problem = _check_chain(tls, smtp.sock)
                if problem is not None:
                    report(host, address, "validation-failure")
                    raise _TlsRefusedError(f"{where}: {problem}", "validation-failure")
                report(host, address, None)
                smtp.ehlo()
            elif use_tls:
                report(host, address, "starttls-not-supported")
                if tls.required:
                    raise _TlsRefusedError(
                        f"{where}: STARTTLS not offered, but TLS is required ({tls.policy})",
                        "starttls-not-supported",
                    )
            if credentials is not None:
                _login(smtp, where, credentials)
        except (OSError, smtplib.SMTPException) as exc:
            raise NextHostError(f"{where}: {_describe(exc)}") from None
        results, state = _transaction(smtp, host, first)
        done(first, results)
        while state == "open" and not abort.is_set and (item := take()) is not None:
            results, state = _transaction(smtp, host, item)
            # Gone before MAIL FROM (the server closed an idle or busy connection): the
            # message was not attempted, so it goes back to the queue, unrecorded.
            done(item, None if state == "gone" else results)
    finally:
        try:
            smtp.quit()
        except (OSError, smtplib.SMTPException):
            smtp.close()
        for sock in socks:
            abort.forget(sock)


def _check_chain(tls: TlsRequirement, sock: socket.socket | None) -> str | None:
    if tls.check is None or not isinstance(sock, ssl.SSLSocket):
        return None
    return tls.check(peer_chain(sock))


def _login(smtp: smtplib.SMTP, where: str, credentials: RouteCredentials) -> None:
    """AUTH at a route relay (RFC 4954), only ever inside verified TLS."""
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN") if m in offered), None)
    if mechanism is None:
        raise NextHostError(f"{where}: the relay offers neither AUTH PLAIN nor LOGIN")
    # One mechanism, one try: smtplib's login() would try each offered one after a refusal,
    # counting against the relay's failed-login limits several times per attempt.
    smtp.user, smtp.password = credentials.username, credentials.password
    authobject = smtp.auth_plain if mechanism == "PLAIN" else smtp.auth_login
    try:
        code, text = smtp.auth(mechanism, authobject)
        if code != 235:
            raise smtplib.SMTPAuthenticationError(code, text)
    except smtplib.SMTPAuthenticationError as exc:
        # Deviation from RFC 4954 §6's 535 being permanent: the relay refusing our account
        # is the admin's to fix, so the mail waits (and bounces after the queue's lifetime).
        raise NextHostError(
            f"{where}: AUTH as {credentials.username} refused: {_describe(exc)}"
        ) from None


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "replace")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, smtplib.SMTPResponseException):
        return _reply(exc.smtp_code, _as_bytes(exc.smtp_error))
    return f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)


def _reply(code: int, text: bytes) -> str:
    return f"{code} {' '.join(text.decode('utf-8', 'replace').split())}"


_State = Literal["open", "lost", "gone"]  # after a transaction: reusable, dropped, dropped early


def _transaction(smtp: smtplib.SMTP, host: str, item: Outgoing) -> tuple[list[RcptResult], _State]:
    mail_from, rcpts, message = item.mail_from, item.rcpts, item.message
    options: list[str] = []
    if not message.isascii() and smtp.has_extn("8bitmime"):  # isascii: one pass in C
        options.append("BODY=8BITMIME")  # RFC 6152
    if not all(a.isascii() for a in [mail_from, *rcpts]):
        if not smtp.has_extn("smtputf8"):
            # RFC 6531 §3.2: without SMTPUTF8 the message cannot be sent to this server
            reply = f"553 5.6.7 {host} does not support SMTPUTF8"
            return all_results(rcpts, "permanent", reply, host), "open"
        options.append("SMTPUTF8")
    if smtp.has_extn("size"):
        options.append(f"SIZE={len(message)}")  # RFC 1870: the server may refuse early
    results: dict[str, RcptResult] = {}
    accepted: list[str] = []
    mail_sent = False
    try:
        code, text = smtp.mail(mail_from, options)
        mail_sent = True
        if code == 421:  # RFC 5321 §3.8: the server is closing the connection; nothing sent
            return all_results(rcpts, "temporary", _reply(code, text), host), "gone"
        if code != 250:
            return all_results(rcpts, classify(code), _reply(code, text), host), "open"
        for rcpt in rcpts:
            code, text = smtp.rcpt(rcpt)
            if code in (250, 251):
                accepted.append(rcpt)
            else:
                results[rcpt] = RcptResult(rcpt, classify(code), _reply(code, text), host)
        if accepted:
            try:
                code, text = smtp.data(message)
            except smtplib.SMTPDataError as exc:  # no 354
                code, text = exc.smtp_code, _as_bytes(exc.smtp_error)
            for rcpt in accepted:
                results[rcpt] = RcptResult(rcpt, classify(code), _reply(code, text), host)
        else:
            smtp.rset()
    except (OSError, smtplib.SMTPException) as exc:
        # Mid-transaction: what is not known delivered is retried (at-least-once: a drop after
        # our final "." but before the reply can mean a duplicate, RFC 5321 §6.1 accepts this).
        reply = f"451 4.4.2 {host}: connection lost: {_describe(exc)}"
        lost = [results.get(r) or RcptResult(r, "temporary", reply, host) for r in rcpts]
        return lost, "lost" if mail_sent else "gone"
    return [results[r] for r in rcpts], "open"
