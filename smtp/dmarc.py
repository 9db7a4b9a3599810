"""DMARC (RFC 7489): policy records, organisational domains, identifier alignment, the verdict.

Pure: no DNS, no I/O. `smtp.inbound_auth` fetches the TXT records and the SPF/DKIM results
and hands them here; this module decides.

- Policy discovery (§6.6.3): the record at `_dmarc.<From domain>`, else at
  `_dmarc.<organisational domain>` (where `sp=` then applies). Several `v=DMARC1` records at one
  name, or none, mean "no policy".
- Organisational domain (§3.2): the public suffix of the domain plus one label, using the
  Public Suffix List that publicsuffix2 ships (no network). Names under a TLD the list does not
  know fall back to the list's implicit `*` rule: the last label is the suffix.
- Alignment (§3.1): strict means the two domains are equal; relaxed means their
  organisational domains are equal. DMARC passes when an SPF pass or a DKIM pass is aligned
  with the RFC 5322.From domain (§4.2).
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass
from email.utils import getaddresses

from publicsuffix2 import PublicSuffixList  # type: ignore[import-untyped]

_DOMAIN = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]*[a-z0-9])?\.)+[a-z0-9-]+")
_TAG = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$", re.DOTALL)


class Policy(enum.Enum):
    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(enum.Enum):
    RELAXED = "r"
    STRICT = "s"


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of one DMARC record that a receiver acts on (RFC 7489 §6.3)."""

    policy: Policy
    subdomain_policy: Policy
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int = 100


class DmarcRecordError(ValueError):
    """The TXT record is not a usable DMARC record."""


def parse_record(text: str) -> DmarcRecord:
    """Parse one `v=DMARC1; p=...` record. Raises DmarcRecordError.

    RFC 7489 §6.4: dmarc-record = dmarc-version dmarc-sep [dmarc-request] ... ; tags separated
    by ";", the version first. Unknown tags are ignored (§6.3); a bad `p=` makes the record
    unusable unless `rua=` is present, in which case p=none applies (§6.6.3 step 6).
    """
    parts = text.split(";")
    tags: dict[str, str] = {}
    for i, part in enumerate(parts):
        if not part.strip():
            continue
        m = _TAG.match(part)
        if m is None:
            raise DmarcRecordError(f"malformed tag {part.strip()!r}")
        name, value = m[1].lower(), m[2]
        if i == 0 and (name != "v" or value != "DMARC1"):
            raise DmarcRecordError("record does not start with v=DMARC1")
        tags.setdefault(name, value)
    if "v" not in tags:
        raise DmarcRecordError("record does not start with v=DMARC1")
    try:
        policy = Policy(tags.get("p", "").lower())
    except ValueError:
        if "rua" in tags:
            policy = Policy.NONE
        else:
            raise DmarcRecordError(f"invalid or missing p= ({tags.get('p')!r})") from None
    try:
        subdomain_policy = Policy(tags["sp"].lower()) if "sp" in tags else policy
    except ValueError:
        subdomain_policy = policy  # an invalid sp= is ignored (§6.3: "sp" is optional)
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain_policy,
        adkim=_alignment(tags.get("adkim")),
        aspf=_alignment(tags.get("aspf")),
        pct=_pct(tags.get("pct")),
    )


def _alignment(value: str | None) -> Alignment:
    return Alignment.STRICT if value is not None and value.lower() == "s" else Alignment.RELAXED


def _pct(value: str | None) -> int:
    if value is None or not value.isdigit():
        return 100
    return min(int(value), 100)


def select_record(txt_records: list[str]) -> DmarcRecord | None:
    """The DMARC record among the TXT records at one name, or None (§6.6.3 steps 3-5)."""
    candidates = [t for t in txt_records if re.match(r"^v\s*=\s*DMARC1\s*(;|$)", t)]
    if len(candidates) != 1:
        return None
    try:
        return parse_record(candidates[0])
    except DmarcRecordError:
        return None


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # the list publicsuffix2 ships; parsing it takes ~0.2 s, once


def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the registrable domain under the public suffix of `domain`."""
    name = domain.rstrip(".").lower()
    if "." not in name:
        return name
    known: str | None = _psl().get_sld(name, strict=True)
    if known:
        return known
    # Unknown TLD: the PSL algorithm's implicit rule "*" makes the last label the suffix.
    return ".".join(name.split(".")[-2:])


def is_aligned(identifier: str, from_domain: str, mode: Alignment) -> bool:
    a, b = identifier.rstrip(".").lower(), from_domain.rstrip(".").lower()
    if not a or not b:
        return False
    if mode is Alignment.STRICT:
        return a == b
    return organizational_domain(a) == organizational_domain(b)


class Result(enum.Enum):
    PASS = "pass"  # noqa: S105 (a result name, not a password)
    FAIL = "fail"
    NONE = "none"  # no policy published
    TEMPERROR = "temperror"


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The DMARC outcome for one From domain and the policy to apply to it."""

    result: Result
    from_domain: str
    policy: Policy = Policy.NONE  # the policy published (p= or sp=), for the header
    applied: Policy = Policy.NONE  # what to do: NONE on pass, or after pct sampling
    reason: str = ""


def evaluate(
    *,
    from_domain: str,
    record: DmarcRecord | None,
    record_is_for_org_domain: bool,
    spf_pass_domain: str | None,
    dkim_pass_domains: list[str],
    has_temperror: bool,
    sample: float = 0.0,
) -> Evaluation:
    """Decide DMARC for `from_domain` (§6.6.2, §6.6.4).

    `spf_pass_domain` is the SPF-authenticated domain (None unless SPF passed);
    `dkim_pass_domains` the d= of every signature that verified. `has_temperror` says a check
    that could still have passed hit a DNS error: then a failure is not a verdict but a
    temperror (the caller defers, RFC 7489 §6.6.2 "temporary failure"). `sample` in [0, 1) is
    compared with pct= (§6.6.4): a message outside the sample gets the next milder policy.
    """
    if record is None:
        return Evaluation(Result.NONE, from_domain, reason="no DMARC policy")
    published = record.subdomain_policy if record_is_for_org_domain else record.policy
    if spf_pass_domain is not None and is_aligned(spf_pass_domain, from_domain, record.aspf):
        return Evaluation(Result.PASS, from_domain, published, reason="SPF aligned")
    for d in dkim_pass_domains:
        if is_aligned(d, from_domain, record.adkim):
            return Evaluation(Result.PASS, from_domain, published, reason="DKIM aligned")
    if has_temperror:
        return Evaluation(
            Result.TEMPERROR, from_domain, published, reason="SPF or DKIM lookup failed temporarily"
        )
    applied = published
    if sample * 100 >= record.pct:
        applied = {Policy.REJECT: Policy.QUARANTINE}.get(published, Policy.NONE)
    return Evaluation(
        Result.FAIL, from_domain, published, applied, reason="no aligned SPF or DKIM pass"
    )


def from_domains(from_values: list[str]) -> list[str] | None:
    """The distinct domains of the RFC5322.From addresses (§6.6.1), or None if unusable.

    `from_values` are the unfolded values of every From field. None means there is no
    usable author domain (no From field, or one without an address with a domain).
    """
    addresses = getaddresses(from_values)
    domains: list[str] = []
    for _name, addr in addresses:
        local, at, domain = addr.rpartition("@")
        domain = domain.strip().rstrip(".").lower()
        try:
            domain = domain.encode("idna").decode("ascii")  # compare in A-label form
        except UnicodeError:
            return None
        if not at or not local or not _DOMAIN.fullmatch(domain):
            return None
        if domain not in domains:
            domains.append(domain)
    return domains or None
