"""Inbound sender authentication: SPF, DKIM and DMARC, reported in one Authentication-Results.

Implements `smtp.verdict.Verifier` for mail arriving on port 25:

- SPF (RFC 7208) with pyspf, for the MAIL FROM identity (the HELO identity for the null
  sender, §2.4);
- DKIM (RFC 6376) with dkimpy, every DKIM-Signature (at most `MAX_SIGNATURES`, a bound on
  the work one message can make us do);
- DMARC (RFC 7489) in `smtp.dmarc`: policy at `_dmarc.<From domain>` or its organisational
  domain, relaxed/strict alignment, p=/sp=/pct=;
- one `Authentication-Results:` (RFC 8601) with `server.hostname` as authserv-id, after
  removing every incoming field that claims that authserv-id (RFC 8601 §5).

Outcome: DMARC p=reject failure -> `550 5.7.1` (or Junk with `smtp.dmarc_reject_to_junk`);
p=quarantine failure -> Junk; everything else is delivered with the header.

DNS: every lookup goes to the resolver in `[dns] resolver` (else the system's), with
`dns.timeout_s` per lookup. A lookup that fails (SERVFAIL, REFUSED, timeout) is not an answer:
when it could change the outcome the message is deferred with `451 4.4.3` rather than given a
verdict that may be wrong (RFC 7489 §6.6.2, RFC 7208 §2.6.6 temperror). pyspf and dkimpy are
blocking libraries; all of this runs in worker threads of a pool of its own (so slow DNS
cannot starve the default executor that Maildir delivery uses), never on the event loop,
and the whole evaluation is bounded by `EVALUATION_TIMEOUT_FACTOR * timeout_s`.

pyspf has no per-query resolver parameter: it calls its module-level `spf.DNSLookup`. We
replace that once with a dispatcher that uses the resolver of the evaluation running in the
current thread (a ContextVar), and pyspf's own lookup when none is set.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import logging
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import dkim
import dkim.util
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import spf
from mailstack.smtp import dmarc
from mailstack.smtp.authresults import (
    MethodResult,
    format_header,
    header_values,
    split_fields,
    strip_forged,
)
from mailstack.smtp.replies import Reply
from mailstack.smtp.verdict import (
    DELIVER,
    Disposition,
    EnvelopeInfo,
    SessionInfo,
    Verdict,
    Verifier,
    accept_all,
)

from mailstack.base.config import Config
from mailstack.base.dns import DnsClient, DnsTempError, make_resolver

log = logging.getLogger(__name__)

# dkimpy verifies one signature per call; a message may carry many. Verifying more than a few
# only lets a sender make us do DNS lookups and RSA work (RFC 6376 §6.1 allows a limit).
MAX_SIGNATURES = 5
# The whole evaluation (SPF may take up to 10 + 2 void lookups, RFC 7208 §4.6.4; DKIM one per
# signature; DMARC two) gets this many per-lookup timeouts before we defer the message.
EVALUATION_TIMEOUT_FACTOR = 6
# Messages checked at once; more wait their turn. Each check mostly waits on DNS, so this is
# about bounding sockets and memory, not CPU.
MAX_PARALLEL_CHECKS = 16
# dkimpy's default minimum RSA key size; RFC 8301 §3.2: verifiers MUST NOT accept < 1024.
DKIM_MIN_KEY_BITS = 1024

DMARC_REJECTED = Reply(550, "5.7.1", "Message rejected: it fails the DMARC policy of {domain}")
DNS_TEMPFAIL = Reply(451, "4.4.3", "DNS lookup failed while checking the sender; try again later")


# -- DNS -----------------------------------------------------------------------------------


class AuthDns(DnsClient):
    """The one DNS client (mailstack.base.dns) in the shapes pyspf and dkimpy call."""

    def spf_lookup(self, name: str, qtype: str) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's DNSLookup contract: [((name, qtype), value), ...]; TempError on failure."""
        try:
            records = self.lookup(name, qtype)
        except DnsTempError as exc:
            raise spf.TempError(f"DNS {exc}") from None
        out: list[tuple[tuple[str, str], Any]] = []
        for r in records:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), r.address))
            elif qtype == "MX":
                out.append(((name, qtype), (r.preference, r.exchange.to_text(omit_final_dot=True))))
            elif qtype == "PTR":
                out.append(((name, qtype), r.target.to_text(omit_final_dot=True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), tuple(r.strings)))
        return out

    def dkim_txt(self, name: bytes | str, timeout: float = 5) -> bytes | None:
        """dkimpy's dnsfunc contract: the key record's text, None if there is none."""
        text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
        records = self.txt(text.rstrip("."))
        return records[0] if records else None


_spf_client: contextvars.ContextVar[AuthDns | None] = contextvars.ContextVar(
    "mailstack_spf_client", default=None
)
_pyspf_lookup: Callable[..., Any] = spf.DNSLookup


def _spf_dispatch(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> Any:
    client = _spf_client.get()
    if client is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return client.spf_lookup(name, qtype)


spf.DNSLookup = _spf_dispatch


# -- the checks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    result: str  # pass fail softfail neutral none permerror temperror (RFC 7208 §2.6)
    identity: str  # "mailfrom" or "helo"
    domain: str  # the domain that was checked
    sender: str  # the identity as reported: the MAIL FROM address, or the HELO name
    explanation: str = ""


@dataclass(frozen=True, slots=True)
class DkimOutcome:
    result: str  # pass fail neutral permerror temperror (RFC 8601 §2.7.1)
    domain: str = ""
    selector: str = ""
    b_prefix: str = ""  # header.b: the first characters, to tell signatures apart (RFC 6008)
    reason: str = ""


@dataclass
class Evaluation:
    spf: SpfOutcome
    dkim: list[DkimOutcome] = field(default_factory=list)
    dmarc: list[dmarc.Evaluation] = field(default_factory=list)
    dmarc_comment: str = ""
    dmarc_temperror: bool = False


def check_spf(client: AuthDns, ip: str, mail_from: str, helo: str) -> SpfOutcome:
    """RFC 7208 check_host() for MAIL FROM, or for the HELO identity when MAIL FROM is <>."""
    identity = "mailfrom" if mail_from else "helo"
    local_at_domain = mail_from.rpartition("@")
    domain = (local_at_domain[2] if local_at_domain[1] else "") if mail_from else helo
    domain = domain.strip().rstrip(".").lower()
    sender = mail_from or helo
    try:
        ipaddress.ip_address(ip)
    except ValueError:
        return SpfOutcome("none", identity, domain, sender, "client address is not an IP")
    if not domain:
        return SpfOutcome("none", identity, domain, sender, "no domain to check")
    token = _spf_client.set(client)
    try:
        query = spf.query(i=ip, s=mail_from, h=helo, timeout=client.resolver.lifetime)
        result, _code, explanation = query.check()
    except spf.TempError as exc:
        result, explanation = "temperror", str(exc)
    except Exception as exc:  # pyspf on input it does not expect: a permanent error, logged
        log.warning("SPF evaluation failed for %s from %s: %r", sender, ip, exc)
        result, explanation = "permerror", "SPF evaluation error"
    finally:
        _spf_client.reset(token)
    # pyspf says "ambiguous" only in harsh mode, which we do not use; anything unexpected is
    # reported as permerror rather than passed through into the header.
    if result not in {"pass", "fail", "softfail", "neutral", "none", "permerror", "temperror"}:
        result = "permerror"
    return SpfOutcome(result, identity, domain, sender, str(explanation))


def _signature_tags(value: bytes) -> dict[bytes, bytes]:
    try:
        tags: dict[bytes, bytes] = dkim.util.parse_tag_value(b"".join(value.split()))
    except Exception:  # dkimpy raises its own InvalidTagValueList and assorted errors
        return {}
    return tags


def check_dkim(client: AuthDns, message: bytes) -> list[DkimOutcome]:
    """Verify up to MAX_SIGNATURES DKIM-Signature fields; [] when there are none."""
    fields, _ = split_fields(message)
    if not header_values(fields, "DKIM-Signature"):
        return []  # unsigned: nothing for dkimpy to parse (or to choke on)
    try:
        verifier = dkim.DKIM(message, minkey=DKIM_MIN_KEY_BITS, timeout=client.resolver.lifetime)
    except dkim.DKIMException as exc:
        return [DkimOutcome("permerror", reason=f"unparseable message: {exc}")]
    signatures = [v for k, v in verifier.headers if k.lower() == b"dkim-signature"]
    outcomes: list[DkimOutcome] = []
    for idx, value in enumerate(signatures[:MAX_SIGNATURES]):
        tags = _signature_tags(value)
        domain = tags.get(b"d", b"").decode("ascii", "replace").lower()
        selector = tags.get(b"s", b"").decode("ascii", "replace")
        b_prefix = tags.get(b"b", b"").decode("ascii", "replace")[:8]
        key_found: list[bool] = []

        def dnsfunc(
            name: bytes | str, timeout: float = 5, _found: list[bool] = key_found
        ) -> bytes | None:
            record = client.dkim_txt(name, timeout)
            _found.append(record is not None)
            return record

        try:
            ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
        except DnsTempError as exc:
            outcomes.append(DkimOutcome("temperror", domain, selector, b_prefix, str(exc)))
            continue
        except (dkim.ValidationError, dkim.MessageFormatError) as exc:
            # The body hash not matching is a failed signature (RFC 6376 §6.1.3); dkimpy raises
            # the same classes for malformed tags, which RFC 8601 §2.7.1 calls "neutral".
            bad_body = "body hash mismatch" in str(exc)
            outcomes.append(
                DkimOutcome(
                    "fail" if bad_body else "neutral",
                    domain,
                    selector,
                    b_prefix,
                    "body hash mismatch" if bad_body else str(exc),
                )
            )
            continue
        except dkim.DKIMException as exc:  # key unusable, unknown key type, bad canonicalisation
            outcomes.append(DkimOutcome("permerror", domain, selector, b_prefix, str(exc)))
            continue
        if ok:
            outcomes.append(DkimOutcome("pass", domain, selector, b_prefix))
        elif key_found == [False]:
            outcomes.append(DkimOutcome("permerror", domain, selector, b_prefix, "no key in DNS"))
        else:
            outcomes.append(
                DkimOutcome("fail", domain, selector, b_prefix, "signature did not verify")
            )
    return outcomes


def _dmarc_record(client: DnsClient, domain: str) -> tuple[dmarc.DmarcRecord | None, bool]:
    """RFC 7489 §6.6.3: (record, found at the organisational domain). DnsTempError passes up."""
    texts = [t.decode("utf-8", "replace") for t in client.txt(f"_dmarc.{domain}")]
    record = dmarc.select_record(texts)
    if record is not None:
        return record, False
    org = dmarc.organizational_domain(domain)
    if org == domain:
        return None, False
    texts = [t.decode("utf-8", "replace") for t in client.txt(f"_dmarc.{org}")]
    return dmarc.select_record(texts), True


def evaluate(
    client: AuthDns,
    session: SessionInfo,
    envelope: EnvelopeInfo,
    message: bytes,
    *,
    sample: float,
) -> Evaluation:
    """Run SPF, DKIM and DMARC (blocking: call it in a thread)."""
    result = Evaluation(spf=check_spf(client, session.peer_ip, envelope.mail_from, session.helo))
    result.dkim = check_dkim(client, message)
    fields, _ = split_fields(message)
    domains = dmarc.from_domains(header_values(fields, "From"))
    if domains is None:
        result.dmarc_comment = "no usable From address"
        return result
    spf_pass_domain = result.spf.domain if result.spf.result == "pass" else None
    dkim_pass = [d.domain for d in result.dkim if d.result == "pass"]
    temperror = result.spf.result == "temperror" or any(
        d.result == "temperror" for d in result.dkim
    )
    for domain in domains:
        try:
            record, at_org = _dmarc_record(client, domain)
        except DnsTempError as exc:
            result.dmarc_temperror = True
            result.dmarc.append(dmarc.Evaluation(dmarc.Result.TEMPERROR, domain, reason=str(exc)))
            continue
        result.dmarc.append(
            dmarc.evaluate(
                from_domain=domain,
                record=record,
                record_is_for_org_domain=at_org,
                spf_pass_domain=spf_pass_domain,
                dkim_pass_domains=dkim_pass,
                has_temperror=temperror,
                sample=sample,
            )
        )
    return result


def strip_and_evaluate(
    client: AuthDns,
    authserv_id: str,
    session: SessionInfo,
    envelope: EnvelopeInfo,
    message: bytes,
    *,
    sample: float,
) -> tuple[bytes, int, Evaluation]:
    """Remove forged results, then evaluate (blocking; copies up to a whole message)."""
    stripped, removed = strip_forged(message, authserv_id)
    return stripped, removed, evaluate(client, session, envelope, stripped, sample=sample)


def results_for_header(ev: Evaluation) -> list[MethodResult]:
    # RFC 8601 §2.7.2: smtp.mailfrom carries the MAIL FROM address, smtp.helo the HELO name.
    spf_prop = "smtp.mailfrom" if ev.spf.identity == "mailfrom" else "smtp.helo"
    out = [
        MethodResult("spf", ev.spf.result, ((spf_prop, ev.spf.sender),) if ev.spf.sender else ())
    ]
    if not ev.dkim:
        out.append(MethodResult("dkim", "none"))
    for d in ev.dkim:
        props = tuple(
            (k, v)
            for k, v in (("header.d", d.domain), ("header.s", d.selector), ("header.b", d.b_prefix))
            if v
        )
        out.append(MethodResult("dkim", d.result, props, d.reason))
    if not ev.dmarc:
        out.append(MethodResult("dmarc", "none", (), ev.dmarc_comment))
    for m in ev.dmarc:
        comment = f"p={m.policy.value}" if m.result is not dmarc.Result.NONE else ""
        if m.result is dmarc.Result.FAIL and m.applied is not m.policy:
            comment += f" applied={m.applied.value} (pct)"
        out.append(
            MethodResult("dmarc", m.result.value, (("header.from", m.from_domain),), comment)
        )
    return out


def decide(ev: Evaluation, *, reject_to_junk: bool) -> tuple[Disposition, Reply | None]:
    """The disposition from DMARC (the strictest over all From domains)."""
    if ev.dmarc_temperror or any(m.result is dmarc.Result.TEMPERROR for m in ev.dmarc):
        return Disposition.TEMPFAIL, DNS_TEMPFAIL
    failed = [m for m in ev.dmarc if m.result is dmarc.Result.FAIL]
    for m in failed:
        if m.applied is dmarc.Policy.REJECT:
            if reject_to_junk:
                return Disposition.JUNK, None
            return Disposition.REJECT, DMARC_REJECTED.with_text(
                DMARC_REJECTED.text.format(domain=m.from_domain)
            )
    if any(m.applied is dmarc.Policy.QUARANTINE for m in failed):
        return Disposition.JUNK, None
    return Disposition.DELIVER, None


# -- the Verifier --------------------------------------------------------------------------


class InboundVerifier:
    """`smtp.verdict.Verifier`: SPF + DKIM + DMARC, Authentication-Results, disposition."""

    def __init__(
        self,
        config: Config,
        *,
        resolver: dns.resolver.Resolver | None = None,
        sample: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.authserv_id = config.server.hostname
        self.client = AuthDns(resolver or make_resolver(config.dns))
        self.timeout_s = config.dns.timeout_s * EVALUATION_TIMEOUT_FACTOR
        # pct= sampling (RFC 7489 §6.6.4) is a random draw; not for security, so `random`.
        self._sample = sample or random.random
        self._executor = ThreadPoolExecutor(MAX_PARALLEL_CHECKS, thread_name_prefix="inbound-auth")

    def close(self) -> None:
        """Let the worker threads go (checks still running finish on their own)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def __call__(
        self, session: SessionInfo, envelope: EnvelopeInfo, message: bytes
    ) -> Verdict:
        if session.authenticated_as or not self.config.smtp.verify_inbound:
            return DELIVER  # our own users' submissions are not inbound mail
        try:
            stripped, removed, ev = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(
                    self._executor,
                    functools.partial(
                        strip_and_evaluate,
                        self.client,
                        self.authserv_id,
                        session,
                        envelope,
                        message,
                        sample=self._sample(),
                    ),
                ),
                self.timeout_s,
            )
        except TimeoutError:
            log.warning(
                "%s: sender checks took over %.0fs; deferring",
                session.connection_id,
                self.timeout_s,
            )
            return Verdict(Disposition.TEMPFAIL, reply=DNS_TEMPFAIL)
        if removed:
            log.info(
                "%s: removed %d forged Authentication-Results claiming %s",
                session.connection_id,
                removed,
                self.authserv_id,
            )
        disposition, reply = decide(ev, reject_to_junk=self.config.smtp.dmarc_reject_to_junk)
        header = format_header(self.authserv_id, results_for_header(ev))
        log.info(
            "%s: spf=%s dkim=%s dmarc=%s -> %s",
            session.connection_id,
            ev.spf.result,
            ",".join(d.result for d in ev.dkim) or "none",
            ",".join(m.result.value for m in ev.dmarc) or "none",
            disposition.value,
        )
        if disposition in (Disposition.REJECT, Disposition.TEMPFAIL):
            return Verdict(disposition, reply=reply)
        return Verdict(disposition, header_lines=(header,), message=stripped if removed else None)


def verifier_for(config: Config) -> Verifier:
    """The inbound verifier `serve` should hand to `smtp.server.start_smtp` for port 25."""
    if not config.smtp.verify_inbound:
        return accept_all
    return InboundVerifier(config)
