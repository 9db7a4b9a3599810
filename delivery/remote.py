"""One delivery attempt of one queued message to the recipients at one domain.

    deliver(config, domain, mail_from, rcpts, message) -> one RcptResult per recipient

Route (RFC 5321 §5.1): `[outbound] relay` when set (a smarthost, no MX lookup); otherwise the
domain's MX records through the configured resolver (`[dns] resolver`, each lookup limited to
`[dns] timeout_s`), ordered by `delivery.mx.order_hosts` (preference, equal ones shuffled);
no MX records means the domain itself is the host (implicit MX); a null MX (RFC 7505) and a
domain that does not exist fail permanently. Each host's addresses (A, then AAAA) are tried on
`[outbound] mx_port` until one completes a transaction; a refused connection, a greeting other
than 220 or a drop before MAIL FROM moves on to the next address/host.

Session: EHLO with our hostname; STARTTLS when offered, opportunistically and without
verifying the certificate (RFC 7435 opportunistic security; RFC 3207 §4.1 leaves it to the
client; MTAs default to this, e.g. Postfix's `smtp_tls_security_level = may`); a failed
handshake is retried once in plain text on the same host, as RFC 7435 prefers delivery.
Where the domain asks for more (MTA-STS, DANE), `delivery.security` plans which hosts may be
used and what TLS each must reach (`delivery.transport.TlsRequirement`): required TLS is never
retried in plain text. A domain in `[outbound] routes` goes to its relay only, with verified
STARTTLS and AUTH (`delivery.routes`).
BODY=8BITMIME when the message has 8-bit bytes and the server offers it (RFC 6152); SMTPUTF8
when an address is not ASCII (RFC 6531), and a server without it is a permanent 5.6.7 for
those messages. We send 8-bit bodies also to servers without 8BITMIME (deviation from RFC
6152 §3, which asks to downgrade; nearly every MTA accepts them, and downgrading would break
the DKIM signature made at enqueue).

Line endings: every line we send ends in CRLF (RFC 5321 §2.3.8), whatever the queue file holds
(files written before BDAT chunks were checked may hold bare CR or LF): a bare <CR> passed on
unchanged let `hello<CR>.<CR>MAIL FROM:...` read as a second message at a lenient next hop
(SMTP smuggling). smtplib then dot-stuffs the normalised lines.

Connection reuse (RFC 5321 §3.3: a session may carry several transactions): `deliver_batch`
takes further messages for the same destination from its caller after each transaction and
sends them over the open connection, reporting each message's results as soon as its reply
came (the queue records them before the next one goes). A reused connection that is gone
before the next MAIL FROM hands that message back unattempted.

Classification per recipient (RFC 5321 §4.2.1): 2xx delivered, 4xx temporary, 5xx permanent;
connection and DNS trouble are temporary. Blocking (sockets, DNS): the queue runs it with
`asyncio.to_thread`. Uses stdlib smtplib.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import smtplib
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import dns.exception
import dns.name
import dns.resolver
from mailstack.delivery.mx import MxLoopError, MxRecord, NullMxError, order_hosts
from mailstack.delivery.routes import Route, RouteError, route_for
from mailstack.delivery.security import OutboundSecurity, Plan, Refusal
from mailstack.delivery.transport import OPPORTUNISTIC, TlsRequirement, peer_chain, verified

from mailstack.base.config import Config, parse_hostport
from mailstack.base.credentials import RouteCredentials
from mailstack.base.dns import make_resolver

log = logging.getLogger(__name__)

Kind = Literal["delivered", "temporary", "permanent"]

CONNECT_TIMEOUT_S = 30.0  # TCP connect and the 220 greeting (RFC 5321 §4.5.3.2.1 allows 5 min;
# a host that slow is better skipped for the next MX)
SESSION_TIMEOUT_S = 600.0  # per socket read after the greeting: RFC 5321 §4.5.3.2.6's longest
# wait (10 min for the reply to the final "." of DATA)


SUBMISSIONS_PORT = 465  # RFC 8314 §7.3: a route to this port uses implicit TLS, not STARTTLS


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


class _NextHostError(Exception):
    """This host failed before a transaction began: try the next address or MX."""


class _TlsFailedError(_NextHostError):
    """The STARTTLS handshake failed: opportunistic TLS retries this host in plain text."""


class _TlsRefusedError(_NextHostError):
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


def _all(rcpts: Sequence[str], kind: Kind, reply: str, mta: str = "") -> list[RcptResult]:
    return [RcptResult(r, kind, reply, mta) for r in rcpts]


def _addresses(resolver: dns.resolver.Resolver, host: str) -> tuple[list[str], bool]:
    """(addresses of host, whether a lookup failed temporarily)."""
    found: list[str] = []
    temporary = False
    for rdtype in ("A", "AAAA"):
        try:
            answer = resolver.resolve(host, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            continue
        except dns.exception.DNSException:
            temporary = True
            continue
        found.extend(str(r) for r in answer)
    return found, temporary


def route(
    config: Config, domain: str, resolver: dns.resolver.Resolver, rng: random.Random | None = None
) -> list[tuple[str, str]] | RcptResult:
    """[(host name, address)] to try in order, or a result that applies to every recipient."""
    try:
        answer = resolver.resolve(domain, "MX")
        records = [MxRecord(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
    except dns.resolver.NXDOMAIN:
        return RcptResult("", "permanent", f"550 5.1.2 {domain}: no such domain (NXDOMAIN)")
    except dns.resolver.NoAnswer:
        records = []  # RFC 5321 §5.1: no MX, so the domain itself is the host
    except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong) as exc:
        return RcptResult("", "permanent", f"553 5.1.3 {domain}: not a valid domain: {exc}")
    except dns.exception.DNSException as exc:
        return RcptResult("", "temporary", f"451 4.4.3 {domain}: MX lookup failed: {exc}")
    try:
        hosts = order_hosts(domain, records, rng, self_names=[config.server.hostname])
    except MxLoopError:
        # Postfix's words for the same case: "mail for X loops back to myself"
        return RcptResult(
            "",
            "permanent",
            f"554 5.4.6 {domain}: mail loops back to "
            f"{config.server.hostname} (we are its best MX but do not host it)",
        )
    except NullMxError:
        # RFC 7505 §4.2: 556 5.1.10 for a domain that declares it accepts no mail
        return RcptResult(
            "", "permanent", f"556 5.1.10 {domain}: the domain accepts no mail (null MX)"
        )
    targets: list[tuple[str, str]] = []
    lookup_failed = False
    for host in hosts:
        addresses, failed = _addresses(resolver, host)
        lookup_failed |= failed
        targets.extend((host, a) for a in addresses)
    if not targets:
        if not records and not lookup_failed:
            return RcptResult("", "permanent", f"550 5.1.2 {domain}: no MX and no address")
        return RcptResult(
            "", "temporary", f"451 4.4.4 {domain}: no address for any MX host ({', '.join(hosts)})"
        )
    return targets


def _session(
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
    `done`. _NextHostError when nothing was attempted on this host."""
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
                    raise _TlsFailedError(f"{where}: TLS handshake failed: {exc}") from None
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
            raise _NextHostError(f"{where}: {_describe(exc)}") from None
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
        raise _NextHostError(f"{where}: the relay offers neither AUTH PLAIN nor LOGIN")
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
        raise _NextHostError(
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
    if any(b > 0x7F for b in message) and smtp.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")  # RFC 6152
    if not all(a.isascii() for a in [mail_from, *rcpts]):
        if not smtp.has_extn("smtputf8"):
            # RFC 6531 §3.2: without SMTPUTF8 the message cannot be sent to this server
            reply = f"553 5.6.7 {host} does not support SMTPUTF8"
            return _all(rcpts, "permanent", reply, host), "open"
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
            return _all(rcpts, "temporary", _reply(code, text), host), "gone"
        if code != 250:
            return _all(rcpts, classify(code), _reply(code, text), host), "open"
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


def crlf_lines(message: bytes) -> bytes:
    """Every bare CR, bare LF and CRLF as CRLF; the message itself when it has no bare one."""
    crlf = message.count(b"\r\n")
    if message.count(b"\r") == crlf and message.count(b"\n") == crlf:
        return message  # the common case: counted in C, no copy
    return message.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


_default_security: OutboundSecurity | None = None


def default_security() -> OutboundSecurity:
    """In-memory MTA-STS cache and TLS-RPT counts for callers without a queue of their own."""
    global _default_security
    if _default_security is None:
        _default_security = OutboundSecurity(None)
    return _default_security


def deliver(
    config: Config,
    domain: str,
    mail_from: str,
    rcpts: Sequence[str],
    message: bytes,
    *,
    rng: random.Random | None = None,
    abort: Abort | None = None,
    security: OutboundSecurity | None = None,
) -> list[RcptResult]:
    """One attempt for `rcpts` (all at `domain`); one result per recipient, in order."""
    pending = [Outgoing(domain, mail_from, rcpts, message)]
    found: list[RcptResult] = []

    def done(_item: Outgoing, results: list[RcptResult] | None) -> None:
        found.extend(results or ())

    deliver_batch(
        config, lambda: pending.pop() if pending else None, done, rng=rng, abort=abort,
        security=security,
    )  # fmt: skip
    return found


def deliver_batch(
    config: Config,
    take: Take,
    done: Done,
    *,
    rng: random.Random | None = None,
    abort: Abort | None = None,
    security: OutboundSecurity | None = None,
) -> None:
    """Messages from `take` (all to one destination: one domain, or anything for one relay)
    over one connection where possible; each message's results go to `done` as they come.
    Returns when `take` has nothing more, or after the connection ended (what `take` still
    holds is the caller's to send again)."""
    abort = abort or Abort()
    raw = take()
    if raw is None:
        return
    first = _normalised(raw)

    def take_next() -> Outgoing | None:
        item = take()
        return None if item is None else _normalised(item)

    domain, rcpts = first.domain, first.rcpts
    try:
        routed = route_for(config, domain)
    except RouteError as exc:
        done(first, _all(rcpts, "temporary", f"451 4.3.5 {exc}"))
        return
    if routed is not None:
        _deliver_routed(config, routed, first, take_next, done, abort)
        return
    if config.outbound.relay:
        # A smarthost for everything: MTA-STS and DANE are the smarthost's business.
        relay_host, relay_port = parse_hostport(config.outbound.relay)
        plan = Plan([(relay_host, relay_host, OPPORTUNISTIC)], lambda *_: None)
        port = relay_port
    else:
        resolver = make_resolver(config.dns)
        targets = route(config, domain, resolver, rng)
        if isinstance(targets, RcptResult):
            log.info("remote: %s: %s", domain, targets.reply)
            done(first, _all(rcpts, targets.kind, targets.reply))
            return
        planned = (security or default_security()).plan(config, domain, targets, resolver)
        if isinstance(planned, Refusal):
            log.info("remote: %s: %s", domain, planned.reply)
            done(first, _all(rcpts, "temporary", planned.reply))
            return
        plan, port = planned, config.outbound.mx_port
    errors: list[str] = []
    for host, address, tls in plan.targets:
        if abort.is_set:
            errors.append("interrupted: shutting down")
            break
        attempt = functools.partial(
            _session,
            host,
            address,
            port,
            ehlo_name=config.server.hostname,
            first=first,
            take=take_next,
            done=_logged(done, host, ""),
            abort=abort,
        )
        try:
            _with_fallback(attempt, domain, tls, plan)
        except _NextHostError as exc:
            log.info("remote: %s: %s; trying the next host", domain, exc)
            errors.append(str(exc))
            continue
        return
    reply = f"451 4.4.1 {domain}: no host accepted a connection: {'; '.join(errors[-3:])}"
    done(first, _all(rcpts, "temporary", reply))


def _normalised(item: Outgoing) -> Outgoing:
    message = crlf_lines(item.message)
    return item if message is item.message else replace(item, message=message)


def _logged(done: Done, host: str, how: str) -> Done:
    def logged(item: Outgoing, results: list[RcptResult] | None) -> None:
        for r in results or ():
            log.info("remote: %s -> %s%s: %s", r.address, host, how, r.reply)
        done(item, results)

    return logged


def _with_fallback(
    attempt: Callable[..., None], domain: str, tls: TlsRequirement, plan: Plan
) -> None:
    """One host: with the TLS it must reach; when that is not required and fails, again with
    opportunistic TLS (after a verifying try, MTA-STS testing), then in plain text."""
    try:
        return attempt(tls=tls, on_tls=functools.partial(plan.report, tls))
    except _TlsFailedError as exc:
        failure = exc
    if tls.context is not OPPORTUNISTIC.context:
        log.info("remote: %s: %s; retrying with unverified TLS", domain, failure)
        try:
            return attempt(tls=OPPORTUNISTIC)
        except _TlsFailedError as exc:
            failure = exc
    # RFC 7435 §1: opportunistic security falls back to cleartext rather than not
    # delivering; Postfix's "may" level does the same.
    log.info("remote: %s: %s; retrying without TLS", domain, failure)
    return attempt(use_tls=False)


def _deliver_routed(
    config: Config, routed: Route, first: Outgoing, take: Take, done: Done, abort: Abort
) -> None:
    """A routed domain: its relay only, verified STARTTLS, AUTH when configured."""
    try:
        _session(
            routed.host,
            routed.host,
            routed.port,
            ehlo_name=config.server.hostname,
            first=first,
            take=take,
            done=_logged(done, routed.host, " (route)"),
            abort=abort,
            tls=verified("route", config.outbound.ca_file),
            credentials=routed.credentials,
            implicit_tls=routed.port == SUBMISSIONS_PORT,
        )
    except _NextHostError as exc:
        log.info("remote: %s: route: %s", first.domain, exc)
        reply = f"451 4.4.1 {first.domain}: route to relay failed: {exc}"
        done(first, _all(first.rcpts, "temporary", reply))
