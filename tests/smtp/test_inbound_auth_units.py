"""Pure parts of inbound authentication: DMARC records and alignment, Authentication-Results."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mailstack.smtp import dmarc
from mailstack.smtp.authresults import (
    MethodResult,
    authserv_id_of,
    format_header,
    split_fields,
    strip_forged,
)
from mailstack.smtp.dmarc import Alignment, Policy


@pytest.mark.parametrize(
    ("text", "policy", "sp", "aspf", "adkim", "pct"),
    [
        pytest.param("v=DMARC1; p=reject", Policy.REJECT, Policy.REJECT, "r", "r", 100, id="min"),
        pytest.param(
            "v=DMARC1;p=quarantine;sp=none;aspf=s;adkim=s;pct=20",
            Policy.QUARANTINE,
            Policy.NONE,
            "s",
            "s",
            20,
            id="all-tags",
        ),
        pytest.param(
            "v=DMARC1; p=NONE; rua=mailto:x@example.org; unknown=1",
            Policy.NONE,
            Policy.NONE,
            "r",
            "r",
            100,
            id="unknown-tag-ignored",
        ),
        pytest.param(
            "v=DMARC1; p=bogus; rua=mailto:x@example.org",
            Policy.NONE,
            Policy.NONE,
            "r",
            "r",
            100,
            id="bad-p-with-rua-is-none",
        ),
        pytest.param(
            "v=DMARC1; p=reject; pct=250; sp=weird",
            Policy.REJECT,
            Policy.REJECT,
            "r",
            "r",
            100,
            id="clamped",
        ),
    ],
)
def test_parse_record(
    text: str, policy: Policy, sp: Policy, aspf: str, adkim: str, pct: int
) -> None:
    rec = dmarc.parse_record(text)
    assert (rec.policy, rec.subdomain_policy, rec.aspf.value, rec.adkim.value, rec.pct) == (
        policy,
        sp,
        aspf,
        adkim,
        pct,
    )


@pytest.mark.parametrize(
    "text", ["p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=DMARC1; p=x", "v=DMARC1; garbage"]
)
def test_bad_records(text: str) -> None:
    with pytest.raises(dmarc.DmarcRecordError):
        dmarc.parse_record(text)


def test_select_record_needs_exactly_one() -> None:
    assert dmarc.select_record(["v=spf1 -all", "v=DMARC1; p=reject"]) is not None
    assert dmarc.select_record(["v=DMARC1; p=reject", "v=DMARC1; p=none"]) is None
    assert dmarc.select_record(["v=spf1 -all"]) is None
    assert dmarc.select_record(["v=DMARC1; p=nonsense"]) is None


@pytest.mark.parametrize(
    ("domain", "org"),
    [
        ("example.com", "example.com"),
        ("mail.example.com", "example.com"),
        ("a.b.example.co.uk", "example.co.uk"),
        ("x.sender.example", "sender.example"),  # unknown TLD: implicit "*" rule
        ("MAIL.Example.COM.", "example.com"),
        ("localhost", "localhost"),
    ],
)
def test_organizational_domain(domain: str, org: str) -> None:
    assert dmarc.organizational_domain(domain) == org


def test_alignment() -> None:
    assert dmarc.is_aligned("bounce.example.com", "example.com", Alignment.RELAXED)
    assert not dmarc.is_aligned("bounce.example.com", "example.com", Alignment.STRICT)
    assert dmarc.is_aligned("Example.com", "example.COM", Alignment.STRICT)
    assert not dmarc.is_aligned("example.co.uk", "other.co.uk", Alignment.RELAXED)
    assert not dmarc.is_aligned("", "example.com", Alignment.RELAXED)


def test_evaluate_pct_and_subdomain_policy() -> None:
    rec = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; pct=50")
    common: dict[str, Any] = {
        "spf_pass_domain": None,
        "dkim_pass_domains": [],
        "has_temperror": False,
    }
    sub = dmarc.evaluate(
        from_domain="a.example.com", record=rec, record_is_for_org_domain=True, sample=0.1, **common
    )
    assert (sub.result, sub.policy, sub.applied) == (
        dmarc.Result.FAIL,
        Policy.QUARANTINE,
        Policy.QUARANTINE,
    )
    outside = dmarc.evaluate(
        from_domain="example.com", record=rec, record_is_for_org_domain=False, sample=0.9, **common
    )
    assert (outside.policy, outside.applied) == (Policy.REJECT, Policy.QUARANTINE)
    tempfail = dmarc.evaluate(
        from_domain="example.com",
        record=rec,
        record_is_for_org_domain=False,
        spf_pass_domain=None,
        dkim_pass_domains=[],
        has_temperror=True,
    )
    assert tempfail.result is dmarc.Result.TEMPERROR


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["Alice <alice@Example.COM>"], ["example.com"]),
        (["a@x.example, b@y.example"], ["x.example", "y.example"]),
        (["a@x.example", "b@x.example"], ["x.example"]),
        (["undisclosed-recipients:;"], None),
        ([], None),
        (["no-at-sign"], None),
        (["a@bücher.example"], ["xn--bcher-kva.example"]),
    ],
)
def test_from_domains(values: list[str], expected: list[str] | None) -> None:
    assert dmarc.from_domains(values) == expected


# -- Authentication-Results ---------------------------------------------------------------


def test_format_header_quotes_what_needs_quoting() -> None:
    header = format_header(
        "mx.example.com",
        [
            MethodResult("spf", "pass", (("smtp.mailfrom", "a@example.org"),)),
            MethodResult(
                "dkim",
                "fail",
                (("header.d", "example.org"), ("header.b", "ab/c+d=")),
                "body (hash) mismatch\r\n",
            ),
            MethodResult("dmarc", "none"),
        ],
    )
    assert header == (
        "Authentication-Results: mx.example.com;\r\n"
        "\tspf=pass smtp.mailfrom=a@example.org;\r\n"
        '\tdkim=fail (body ?hash? mismatch??) header.d=example.org header.b="ab/c+d=";\r\n'
        "\tdmarc=none"
    )
    assert format_header("mx.example.com", []) == "Authentication-Results: mx.example.com; none"


@pytest.mark.parametrize(
    ("value", "authserv_id"),
    [
        ("mx.example.com; spf=pass", "mx.example.com"),
        ("  (a (nested) comment)\r\n\tMX.Example.com 1; none", "mx.example.com"),
        ('"mx.example.com"; dkim=pass', "mx.example.com"),
        ("mx.example.com(comment);spf=pass", "mx.example.com"),
        ("", ""),
    ],
)
def test_authserv_id(value: str, authserv_id: str) -> None:
    assert authserv_id_of(value) == authserv_id


def test_strip_forged_keeps_others_and_body() -> None:
    msg = (
        b"Received: x\r\n"
        b"Authentication-Results: mx.example.com;\r\n\tdkim=pass\r\n"
        b"authentication-results : other.example; spf=pass\r\n"
        b"Subject: s\r\n\r\n"
        b"Authentication-Results: mx.example.com; in the body stays\r\n"
    )
    out, n = strip_forged(msg, "MX.example.com")
    assert n == 1
    assert out == (
        b"Received: x\r\nauthentication-results : other.example; spf=pass\r\n"
        b"Subject: s\r\n\r\n"
        b"Authentication-Results: mx.example.com; in the body stays\r\n"
    )
    assert strip_forged(out, "mx.example.com") == (out, 0)


@given(st.binary(max_size=2000))
def test_split_fields_loses_nothing(data: bytes) -> None:
    fields, rest = split_fields(data)
    assert b"".join(fields) + rest == data
    strip_forged(data, "mx.example.com")  # never raises
