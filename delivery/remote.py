"""One delivery attempt of one queued message to the recipients at one domain.

    deliver(config, domain, mail_from, rcpts, message) -> one RcptResult per recipient

Route (RFC 5321 §5.1): `[outbound] relay` when set (a smarthost, no MX lookup); otherwise the
domain's MX records through the configured resolver (`[dns] resolver`, each lookup limited to
`[dns] timeout_s`), ordered by `delivery.mx.order_hosts` (preference, equal ones shuffled);
no MX records means the domain itself is the host (implicit MX); a null MX (RFC 7505) and a
domain that does not exist fail permanently. Each host's addresses (A, then AAAA) are tried on
`[outbound] mx_port` until one completes a transaction; a refused connection, a greeting other
than 220 or a drop before MAIL FROM moves on to the next address/host.

Session (delivery/remote_session.py): EHLO, STARTTLS when offered, opportunistically and
unverified (RFC 7435); a failed handshake is retried once in plain text on the same host, as
RFC 7435 prefers delivery. Where the domain asks for more (MTA-STS, DANE), `delivery.security`
plans which hosts may be used and what TLS each must reach (`delivery.transport.TlsRequirement`):
required TLS is never retried in plain text. A domain in `[outbound] routes` goes to its relay
only, with verified STARTTLS and AUTH (`delivery.routes`). We send 8-bit bodies also to servers
without 8BITMIME (deviation from RFC 6152 §3, which asks to downgrade; nearly every MTA accepts
them, and downgrading would break the DKIM signature made at enqueue).

Line endings: every line we send ends in CRLF (RFC 5321 §2.3.8), whatever the queue file holds
(files written before BDAT chunks were checked may hold bare CR or LF): a bare <CR> passed on
unchanged let `hello<CR>.<CR>MAIL FROM:...` read as a second message at a lenient next hop
(SMTP smuggling). smtplib then dot-stuffs the normalised lines.

Connection reuse (RFC 5321 §3.3: a session may carry several transactions): `deliver_batch`
takes further messages for the same destination from its caller after each transaction and
sends them over the open connection, reporting each message's results as soon as its reply
came (the queue records them before the next one goes). A reused connection that is gone
before the next MAIL FROM hands that message back unattempted.

Classification per recipient (RFC 5321 §4.2.1, `remote_session.classify`): 2xx delivered, 4xx
temporary, 5xx permanent; connection and DNS trouble are temporary. Blocking (sockets, DNS):
the queue runs it in a thread. Uses stdlib smtplib.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import replace

import dns.exception
import dns.name
import dns.resolver
from mailstack.delivery.mx import MxLoopError, MxRecord, NullMxError, order_hosts
from mailstack.delivery.remote_session import (
    Abort,
    Done,
    NextHostError,
    Outgoing,
    RcptResult,
    Take,
    TlsFailedError,
    all_results,
    run_session,
)
from mailstack.delivery.routes import Route, RouteError, route_for
from mailstack.delivery.security import OutboundSecurity, Plan, Refusal
from mailstack.delivery.transport import OPPORTUNISTIC, TlsRequirement, verified

from mailstack.base.config import Config, parse_hostport
from mailstack.base.dns import make_resolver

log = logging.getLogger(__name__)


SUBMISSIONS_PORT = 465  # RFC 8314 §7.3: a route to this port uses implicit TLS, not STARTTLS


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
        done(first, all_results(rcpts, "temporary", f"451 4.3.5 {exc}"))
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
            done(first, all_results(rcpts, targets.kind, targets.reply))
            return
        planned = (security or default_security()).plan(config, domain, targets, resolver)
        if isinstance(planned, Refusal):
            log.info("remote: %s: %s", domain, planned.reply)
            done(first, all_results(rcpts, "temporary", planned.reply))
            return
        plan, port = planned, config.outbound.mx_port
    errors: list[str] = []
    for host, address, tls in plan.targets:
        if abort.is_set:
            errors.append("interrupted: shutting down")
            break
        attempt = functools.partial(
            run_session,
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
        except NextHostError as exc:
            log.info("remote: %s: %s; trying the next host", domain, exc)
            errors.append(str(exc))
            continue
        return
    reply = f"451 4.4.1 {domain}: no host accepted a connection: {'; '.join(errors[-3:])}"
    done(first, all_results(rcpts, "temporary", reply))


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
    except TlsFailedError as exc:
        failure = exc
    if tls.context is not OPPORTUNISTIC.context:
        log.info("remote: %s: %s; retrying with unverified TLS", domain, failure)
        try:
            return attempt(tls=OPPORTUNISTIC)
        except TlsFailedError as exc:
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
        run_session(
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
    except NextHostError as exc:
        log.info("remote: %s: route: %s", first.domain, exc)
        reply = f"451 4.4.1 {first.domain}: route to relay failed: {exc}"
        done(first, all_results(first.rcpts, "temporary", reply))
