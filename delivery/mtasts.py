"""MTA-STS (RFC 8461), the pure part: the TXT record, the policy file, MX patterns, caching.

    parse_sts_record(txt_strings) -> StsRecord(id)     RFC 8461 §3.1, raises StsError
    parse_policy(body) -> Policy(mode, mx, max_age)    RFC 8461 §3.2, raises StsError
    mx_matches(pattern, host) -> bool                  RFC 8461 §4.1
    needs_fetch(cached, record_id, now) -> bool        RFC 8461 §5.1

No I/O: `delivery.mtasts_fetch` looks up the TXT record, fetches the policy over HTTPS and
keeps the cache; `delivery.security` applies the policy to one delivery attempt.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Mode = Literal["enforce", "testing", "none"]

MAX_AGE_LIMIT_S = 31557600  # RFC 8461 §3.2: "maximum value of 31557600" (one year)
MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3: senders may limit the body to 64 KiB

# RFC 8461 §3.1:
#   sts-text-record = sts-version 1*(sts-sep sts-field) [sts-sep]
#   sts-version     = %s"v=STSv1"
#   sts-id          = %s"id=" 1*32(ALPHA / DIGIT)
#   sts-sep         = *WSP %x3B *WSP                   ; ";"
#   sts-ext-name    = (ALPHA / DIGIT) *31(ALPHA / DIGIT / "_" / "-" / ".")
#   sts-ext-value   = 1*(%x21-3A / %x3C / %x3E-7E)     ; chars excluding "=", ";", SP, controls
_SEP = re.compile(r"[ \t]*;[ \t]*")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_EXT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+")
# RFC 8461 §3.2: sts-policy-mx-value = ["*."] Domain; a label: 1*63 letters, digits, hyphens
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class StsError(ValueError):
    """A TXT record or policy that RFC 8461 says to treat as absent (or invalid)."""


@dataclass(frozen=True, slots=True)
class StsRecord:
    id: str


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    mx: tuple[str, ...]  # patterns, lower case, without a trailing dot
    max_age_s: int

    def allows(self, host: str) -> bool:
        return any(mx_matches(p, host) for p in self.mx)


def parse_sts_record(records: Iterable[bytes]) -> StsRecord:
    """The one `_mta-sts` TXT record (each record's strings already joined).

    RFC 8461 §3.1: records not starting with "v=STSv1;" are discarded; if not exactly one is
    left, or it does not parse, the domain has no available policy.
    """
    candidates = [r for r in records if r.startswith(b"v=STSv1;")]
    if len(candidates) != 1:
        raise StsError(f"{len(candidates)} STSv1 TXT records, need exactly one")
    try:
        text = candidates[0].decode("ascii")
    except UnicodeDecodeError:
        raise StsError("the TXT record is not ASCII") from None
    fields = _SEP.split(text)
    if fields and fields[-1] == "":
        fields.pop()  # the optional trailing separator
    record_id: str | None = None
    for field in fields[1:]:
        if field.startswith("id="):
            if record_id is not None or not _ID.fullmatch(field[3:]):
                raise StsError(f"bad id field {field!r}")
            record_id = field[3:]
        elif not _EXT.fullmatch(field):
            raise StsError(f"bad field {field!r}")
    if record_id is None:
        raise StsError("no id field")
    return StsRecord(record_id)


def parse_policy(body: bytes) -> Policy:
    """The policy file (RFC 8461 §3.2); StsError when it is not a valid STSv1 policy.

    sts-policy-term = LF / CRLF; fields are `key: value` with optional whitespace. Unknown keys
    are ignored (extensions). A key other than mx given twice: the first counts (the RFC does
    not say; ignoring later ones cannot widen what the first one allowed).
    """
    if len(body) > MAX_POLICY_BYTES:
        raise StsError(f"policy larger than {MAX_POLICY_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise StsError("policy is not UTF-8") from None
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in re.split(r"\r?\n", text):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise StsError(f"not a 'key: value' line: {line[:60]!r}")
        key, value = key.strip(), value.strip(" \t")
        if key == "mx":
            mx.append(_mx_pattern(value))
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise StsError("version is not STSv1")
    mode: Mode
    match values.get("mode"):
        case "enforce" | "testing" | "none" as given:
            mode = given
        case other:
            raise StsError(f"mode must be enforce, testing or none, got {other!r}")
    age = values.get("max_age", "")
    if not re.fullmatch(r"[0-9]{1,10}", age):  # sts-policy-max-age-value = 1*10(DIGIT)
        raise StsError(f"max_age must be 1 to 10 digits, got {age!r}")
    if not mx and mode != "none":  # §3.2: mx "MUST" be present unless mode is none
        raise StsError(f"mode {mode} without mx")
    return Policy(mode, tuple(mx), min(int(age), MAX_AGE_LIMIT_S))


def _mx_pattern(value: str) -> str:
    pattern = value.lower().rstrip(".")
    labels = pattern.removeprefix("*.").split(".")
    if len(labels) < 1 or not all(_LABEL.fullmatch(label) for label in labels):
        raise StsError(f"bad mx pattern {value[:80]!r}")
    return pattern


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact (case-insensitive) or "*." for exactly one leftmost label."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    record_id: str
    fetched_at: float
    policy: Policy

    def is_fresh(self, now: float) -> bool:
        return now < self.fetched_at + self.policy.max_age_s

    def refresh_due(self, now: float) -> bool:
        """RFC 8461 §5.1 asks for refreshes before expiry (so that a policy stays in force
        when an attacker later hides the TXT record): daily, or at half its max_age."""
        return now >= self.fetched_at + min(REFRESH_S, self.policy.max_age_s / 2)


REFRESH_S = 86400.0


def needs_fetch(cached: CachedPolicy | None, record_id: str | None, now: float) -> bool:
    """RFC 8461 §5.1: fetch when a TXT record is published and nothing fresh with its id is
    cached, and refresh a fresh policy that is due (with or without a TXT record). Without a
    TXT record (removed, or the lookup failed) a fresh cached policy stays in force: an
    attacker who strips the record gains nothing."""
    if cached is not None and cached.is_fresh(now) and cached.refresh_due(now):
        return True
    if record_id is None:
        return False
    return cached is None or cached.record_id != record_id or not cached.is_fresh(now)
