"""The pure MTA-STS core (delivery/mtasts.py): TXT record, policy file, MX patterns, cache
decisions. Tables of inputs and outcomes, and hypothesis for "parse or StsError"."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from mailstack.delivery.mtasts import (
    MAX_AGE_LIMIT_S,
    CachedPolicy,
    Policy,
    StsError,
    mx_matches,
    needs_fetch,
    parse_policy,
    parse_sts_record,
)

GOOD = (
    b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\n"
    b"max_age: 604800\r\n"
)


def test_a_policy_parses() -> None:
    assert parse_policy(GOOD) == Policy("enforce", ("mail.example.com", "*.example.net"), 604800)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(GOOD.replace(b"\r\n", b"\n"), "enforce", id="lf-only"),
        pytest.param(GOOD + b"extension_key: anything\n", "enforce", id="unknown-key-ignored"),
        pytest.param(b"version: STSv1\nmode: none\nmax_age: 1\n", "none", id="none-without-mx"),
        pytest.param(b"version:STSv1\nmode:\ttesting\nmx:a.example\nmax_age:5", "testing", id="ws"),
    ],
)
def test_policies_that_parse(body: bytes, expected: str) -> None:
    assert parse_policy(body).mode == expected


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(GOOD.replace(b"STSv1", b"STSv2"), id="version"),
        pytest.param(GOOD.replace(b"version: STSv1\r\n", b""), id="no-version"),
        pytest.param(GOOD.replace(b"enforce", b"strict"), id="mode"),
        pytest.param(GOOD.replace(b"604800", b"-1"), id="negative-age"),
        pytest.param(GOOD.replace(b"604800", b"12345678901"), id="age-11-digits"),
        pytest.param(b"version: STSv1\nmode: enforce\nmax_age: 5\n", id="enforce-no-mx"),
        pytest.param(GOOD.replace(b"mail.example.com", b"mail..example"), id="empty-label"),
        pytest.param(GOOD.replace(b"mail.example.com", b"a.*.example"), id="inner-wildcard"),
        pytest.param(GOOD + b"garbage line\n", id="no-colon"),
        pytest.param(b"\xff" + GOOD, id="not-utf8"),
        pytest.param(GOOD + b"x" * 70000, id="too-large"),
    ],
)
def test_policies_that_do_not(body: bytes) -> None:
    with pytest.raises(StsError):
        parse_policy(body)


def test_max_age_is_capped_at_a_year() -> None:
    assert parse_policy(GOOD.replace(b"604800", b"9999999999")).max_age_s == MAX_AGE_LIMIT_S


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        pytest.param([b"v=STSv1; id=20160831085700Z;"], "20160831085700Z", id="rfc-example"),
        pytest.param([b"v=STSv1;id=abc"], "abc", id="no-space"),
        pytest.param([b"v=STSv1; id=abc; ext=1"], "abc", id="extension"),
        pytest.param([b"v=spf1 -all", b"v=STSv1; id=abc"], "abc", id="others-discarded"),
    ],
)
def test_sts_records(records: list[bytes], expected: str) -> None:
    assert parse_sts_record(records).id == expected


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([], id="none"),
        pytest.param([b"v=STSv1; id=a", b"v=STSv1; id=b"], id="two"),
        pytest.param([b"v=STSv1; id=" + b"a" * 33], id="id-too-long"),
        pytest.param([b"v=STSv1; id=a-b"], id="id-not-alnum"),
        pytest.param([b"v=STSv1; mode=x"], id="no-id"),
        pytest.param([b"v=STSv1; id=a; id=b"], id="two-ids"),
        pytest.param([b"v=STSv1; id=a; bad field"], id="bad-extension"),
    ],
)
def test_sts_records_that_mean_no_policy(records: list[bytes]) -> None:
    with pytest.raises(StsError):
        parse_sts_record(records)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("mail.example.com", "mail.example.com", True),
        ("mail.example.com", "MAIL.Example.COM.", True),
        ("mail.example.com", "mx.example.com", False),
        ("*.example.com", "mx1.example.com", True),
        ("*.example.com", "example.com", False),  # RFC 8461 §4.1: exactly one label
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
    ],
)
def test_mx_patterns(pattern: str, host: str, matches: bool) -> None:
    assert mx_matches(pattern, host) is matches


POLICY = Policy("enforce", ("mx.example.com",), 100)


@pytest.mark.parametrize(
    ("cached", "record_id", "now", "fetch"),
    [
        pytest.param(None, "a", 0.0, True, id="nothing-cached"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), "a", 49.0, False, id="fresh-same-id"),
        # §5.1: refreshed before it expires (at half its max_age, at most daily), with or
        # without the TXT record
        pytest.param(CachedPolicy("a", 0.0, POLICY), "a", 50.0, True, id="refresh-due"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), None, 50.0, True, id="refresh-no-record"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), "b", 50.0, True, id="id-changed"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), "a", 100.0, True, id="max-age-passed"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), None, 49.0, False, id="record-removed"),
        pytest.param(CachedPolicy("a", 0.0, POLICY), None, 100.0, False, id="removed-expired"),
        pytest.param(None, None, 0.0, False, id="no-record-no-cache"),
    ],
)
def test_when_to_fetch(
    cached: CachedPolicy | None, record_id: str | None, now: float, fetch: bool
) -> None:
    assert needs_fetch(cached, record_id, now) is fetch


@given(st.binary(max_size=2048))
@example(b"version: STSv1\nmode: enforce\nmx: *.\nmax_age: 1")
@example(b"version: STSv1\nmode: enforce\nmx: *\nmax_age: 1")
def test_any_policy_bytes_parse_or_raise_sts_error(body: bytes) -> None:
    try:
        policy = parse_policy(body)
    except StsError:
        return
    assert policy.mode in ("enforce", "testing", "none")
    assert 0 <= policy.max_age_s <= MAX_AGE_LIMIT_S
    assert all(p == p.lower() and not p.endswith(".") for p in policy.mx)


@given(st.lists(st.binary(max_size=200), max_size=3))
def test_any_txt_records_parse_or_raise_sts_error(records: list[bytes]) -> None:
    try:
        record = parse_sts_record(records)
    except StsError:
        return
    assert 1 <= len(record.id) <= 32 and record.id.isalnum()


@given(st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){1,3}", fullmatch=True))
def test_a_policy_with_any_mx_round_trips(host: str) -> None:
    body = f"version: STSv1\nmode: enforce\nmx: {host}\nmax_age: 60\n".encode()
    assert parse_policy(body).allows(host)
    assert parse_policy(body.replace(host.encode(), b"*." + host.encode())).allows("x." + host)
