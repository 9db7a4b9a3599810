"""`check --only dns` against a real nsd serving broken variants of the zones `init` wrote.

Each variant breaks one thing and must fail exactly the check(s) it breaks, with the fix
that repairs it: the record from `init.dns_records()` in zone-file form.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mailstack.base.config import load_config
from mailstack.base.paths import StatePaths
from mailstack.checks.dns import copy_line
from mailstack.dnsrecords import DnsRecord
from mailstack.init import dns_records
from mailstack.keys import dkim_public_record, make_dkim_key
from tests.checks.conftest import (
    FORWARD,
    REVERSE,
    check,
    make_deployment,
    not_passing,
    only,
    start_nsd,
    zones,
)
from tests.conftest import run_cli

pytestmark = pytest.mark.external

BASELINE = {"dns.caa": "warn"}  # init writes no CAA record (asserted in test_check_live)


def record(root: Path, name: str, type_: str, startswith: str = "") -> DnsRecord:
    paths = StatePaths(root)
    recs = [
        r
        for r in dns_records(load_config(paths.config), paths, None)
        if r.name == name and r.type == type_ and (r.unsplit or r.value).startswith(startswith)
    ]
    assert len(recs) == 1, recs
    return recs[0]


def drop(pattern: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        out, n = re.subn(rf"(?m)^{pattern}.*\n", "", text)
        assert n == 1, pattern
        return out

    return edit


def replace(pattern: str, new: str) -> Callable[[str], str]:
    def edit(text: str) -> str:
        out, n = re.subn(rf"(?m)^{pattern}.*$", new, text)
        assert n == 1, pattern
        return out

    return edit


def add(line: str) -> Callable[[str], str]:
    return lambda text: text + line + "\n"


def both(*edits: Callable[[str], str]) -> Callable[[str], str]:
    def edit(text: str) -> str:
        for e in edits:
            text = e(text)
        return text

    return edit


def run_variant(
    root: Path,
    tmp_path: Path,
    forward: Callable[[str], str] | None = None,
    reverse: Callable[[str], str] | None = None,
) -> dict[str, object]:
    texts = zones(root)
    if forward:
        texts[FORWARD] = forward(texts[FORWARD])
    if reverse:
        texts[REVERSE] = reverse(texts[REVERSE])
    nsd = start_nsd(tmp_path / "nsd", texts)
    try:
        proc, data = check(root, "--only", "dns", "--resolver", f"127.0.0.1:{nsd.port}")
    finally:
        nsd.stop()
    assert proc.returncode == (1 if any(c["status"] == "fail" for c in data["checks"]) else 0)
    return data


def test_unbroken_zones_pass(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(dns_only, tmp_path)
    assert not_passing(data) == BASELINE
    assert (
        only(data, "dns.ptr")["message"]
        == "127.0.0.1: PTR mail.example.com., which resolves back (FCrDNS)"
    )
    assert only(data, "dns.spf")["message"] == "example.com: 'v=spf1 mx -all' authorises 127.0.0.1"


def test_dkim_missing(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(dns_only, tmp_path, forward=drop("test._domainkey"))
    assert not_passing(data) == {**BASELINE, "dns.dkim": "fail"}
    dkim = only(data, "dns.dkim")
    assert "no DKIM key record at test._domainkey.example.com" in dkim["message"]
    rec = record(dns_only, "test._domainkey.example.com.", "TXT")
    assert dkim["fix"] == (
        "publish at the DNS host of example.com: test._domainkey.example.com. 3600 IN TXT"
        f" with this value as one string: {rec.unsplit}"
    )
    assert rec.unsplit is not None
    assert rec.unsplit.startswith("v=DKIM1; k=rsa; p=")
    assert '"' not in dkim["fix"]  # not the zone file's quoted 255-byte pieces


def test_dkim_holding_another_key(dns_only: Path, tmp_path: Path) -> None:
    other = dkim_public_record(make_dkim_key())
    data = run_variant(
        dns_only,
        tmp_path,
        forward=replace(
            "test._domainkey", f'test._domainkey 3600 IN TXT "{other[:200]}" "{other[200:]}"'
        ),
    )
    assert not_passing(data) == {**BASELINE, "dns.dkim": "fail"}
    dkim = only(data, "dns.dkim")
    assert "is not the public half of" in dkim["message"]
    rec = record(dns_only, "test._domainkey.example.com.", "TXT")
    assert dkim["fix"] == f"replace it: publish at the DNS host of example.com: {copy_line(rec)}"
    assert dkim["fix"].endswith(f"as one string: {rec.unsplit}")


def test_mx_pointing_elsewhere(dns_only: Path, tmp_path: Path) -> None:
    # SPF "mx" follows the MX, so SPF stops covering our address too: both must fail.
    data = run_variant(
        dns_only,
        tmp_path,
        forward=both(
            replace(r"@\t3600\tIN\tMX", "@ 3600 IN MX 10 mx.elsewhere.example.com."),
            add("mx.elsewhere 3600 IN A 192.0.2.7"),
        ),
    )
    assert not_passing(data) == {**BASELINE, "dns.mx": "fail", "dns.spf": "fail"}
    mx = only(data, "dns.mx")
    assert mx["message"] == (
        "example.com: MX points to 10 mx.elsewhere.example.com., not to mail.example.com."
    )
    assert mx["fix"].startswith(
        "publish at the DNS host of example.com: example.com. 3600 IN MX 10 mail.example.com."
    )
    assert "remove: example.com. IN MX 10 mx.elsewhere.example.com." in mx["fix"]
    assert "127.0.0.1 (fail)" in only(data, "dns.spf")["message"]


def test_ptr_missing(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(dns_only, tmp_path, reverse=drop(r"1\t"))
    assert not_passing(data) == {**BASELINE, "dns.ptr": "fail"}
    ptr = only(data, "dns.ptr")
    assert ptr["message"].startswith("127.0.0.1: no reverse DNS (PTR)")
    assert ptr["fix"] == (
        "ask your hosting provider (whoever owns the IP block) to set reverse "
        "DNS: 1.0.0.127.in-addr.arpa. 3600 IN PTR mail.example.com."
    )


def test_ptr_not_matching(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(
        dns_only, tmp_path, reverse=replace(r"1\t", "1 3600 IN PTR host.isp.example.")
    )
    assert not_passing(data) == {**BASELINE, "dns.ptr": "fail"}
    ptr = only(data, "dns.ptr")
    assert ptr["message"] == (
        "127.0.0.1: reverse DNS names host.isp.example., not mail.example.com."
    )
    assert ptr["fix"].endswith("1.0.0.127.in-addr.arpa. 3600 IN PTR mail.example.com.")


def test_spf_missing(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(dns_only, tmp_path, forward=drop(r'@\t3600\tIN\tTXT\t"v=spf1'))
    assert not_passing(data) == {**BASELINE, "dns.spf": "fail"}
    spf = only(data, "dns.spf")
    assert spf["message"].startswith("example.com: no SPF record")
    assert spf["fix"] == (
        'publish at the DNS host of example.com: example.com. 3600 IN TXT "v=spf1 mx -all"'
    )


def test_spf_not_covering_our_address(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(
        dns_only,
        tmp_path,
        forward=replace(r'@\t3600\tIN\tTXT\t"v=spf1', '@ 3600 IN TXT "v=spf1 ip4:192.0.2.1 -all"'),
    )
    assert not_passing(data) == {**BASELINE, "dns.spf": "fail"}
    spf = only(data, "dns.spf")
    assert "does not authorise 127.0.0.1 (fail)" in spf["message"]
    assert spf["fix"] == (
        'replace the SPF record: example.com. 3600 IN TXT "v=spf1 ip4:192.0.2.1 ip4:127.0.0.1 -all"'
    )


def test_spf_evaluated_not_string_matched(dns_only: Path, tmp_path: Path) -> None:
    """An include: that authorises us passes; the text does not mention our address."""
    data = run_variant(
        dns_only,
        tmp_path,
        forward=both(
            replace(
                r'@\t3600\tIN\tTXT\t"v=spf1', '@ 3600 IN TXT "v=spf1 include:_spf.example.com -all"'
            ),
            add('_spf 3600 IN TXT "v=spf1 ip4:127.0.0.0/24 -all"'),
        ),
    )
    assert not_passing(data) == BASELINE


def test_two_spf_records(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(dns_only, tmp_path, forward=add('@ 3600 IN TXT "v=spf1 -all"'))
    assert not_passing(data) == {**BASELINE, "dns.spf": "fail"}
    spf = only(data, "dns.spf")
    assert "2 SPF records" in spf["message"]
    assert spf["fix"].startswith("keep exactly one SPF TXT record")
    assert spf["fix"].endswith('example.com. 3600 IN TXT "v=spf1 mx -all"')


def test_dmarc_p_none_warns(dns_only: Path, tmp_path: Path) -> None:
    data = run_variant(
        dns_only, tmp_path, forward=replace("_dmarc", '_dmarc 3600 IN TXT "v=DMARC1; p=none"')
    )
    assert not_passing(data) == {**BASELINE, "dns.dmarc": "warn"}
    assert "p=none" in only(data, "dns.dmarc")["message"]


def test_resolver_not_answering(dns_only: Path, tmp_path: Path) -> None:
    nsd = start_nsd(tmp_path / "nsd", zones(dns_only))
    port = nsd.port
    nsd.stop()  # nothing answers on that port now
    proc, data = check(dns_only, "--only", "dns", "--resolver", f"127.0.0.1:{port}")
    assert proc.returncode == 1
    assert only(data, "dns.resolver")["status"] == "fail"
    assert "--resolver" in only(data, "dns.resolver")["fix"]
    assert {c["status"] for c in data["checks"] if c["id"] != "dns.resolver"} == {"skip"}


def test_each_hosted_domain_is_checked_under_the_same_ids(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    added = run_cli(root, "domain", "add", "example.org")
    assert added.returncode == 0, added.stderr
    texts = zones(root)
    texts["example.org"] = (root / "dns" / "example.org.zone").read_text()
    nsd = start_nsd(tmp_path / "nsd", texts)
    try:
        proc, data = check(root, "--only", "dns", "--resolver", f"127.0.0.1:{nsd.port}")
    finally:
        nsd.stop()
    assert proc.returncode == 0
    assert not_passing(data) == BASELINE
    for id_ in ("dns.mx", "dns.spf", "dns.dkim", "dns.dmarc", "dns.tlsrpt", "dns.srv"):
        subjects = [c["message"].split(":")[0] for c in data["checks"] if c["id"] == id_]
        assert subjects == ["example.com", "example.org"], id_
    for id_ in ("dns.resolver", "dns.a", "dns.ptr", "dns.caa"):
        assert [c["id"] for c in data["checks"]].count(id_) == 1
