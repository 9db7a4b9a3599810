"""`--network` (DNSBL lookups, through nsd serving test blocklists) and the probe mailbox."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest
from mailstack.smtp.dnsbl import dnsbl_name

from mailstack.checks.dns import suggest_spf as suggest
from mailstack.checks.listeners import connect_host
from mailstack.checks.probe import PROBE_PREFIX, STALE_PROBE_S, probe_mailbox, remove_stale_probes
from mailstack.deployment import Deployment
from tests.checks.conftest import check, make_deployment, only, start_nsd

SOA = (
    "$TTL 300\n@ IN SOA ns.{z}. hostmaster.{z}. 1 3600 600 86400 300\n"
    "@ IN NS ns.{z}.\nns IN A 127.0.0.1\n"
)


def configure(root: Path, ipv4: str, lists: list[str]) -> None:
    config = root / "mailstack.toml"
    text = re.sub(r'(?m)^ipv4 = ".*"$', f'ipv4 = "{ipv4}"', config.read_text())
    text = re.sub(
        r"(?m)^dnsbl = \[.*\]$", "dnsbl = [" + ", ".join(f'"{z}"' for z in lists) + "]", text
    )
    config.write_text(text)


@pytest.mark.external
def test_dnsbl_listing_fails_and_clean_passes(tmp_path: Path) -> None:
    root = tmp_path / "state"
    make_deployment(root)
    configure(root, "1.2.3.4", ["bl.test", "clean.test"])
    nsd = start_nsd(
        tmp_path / "nsd",
        {
            "bl.test": SOA.format(z="bl.test") + "4.3.2.1 IN A 127.0.0.2\n",
            "clean.test": SOA.format(z="clean.test"),
        },
    )
    try:
        resolver = f"127.0.0.1:{nsd.port}"
        proc, data = check(root, "--only", "network", "--network", "--resolver", resolver)
        assert proc.returncode == 1
        dnsbl = only(data, "network.dnsbl")
        assert dnsbl["status"] == "fail"
        assert dnsbl["message"].startswith("1.2.3.4 is listed on bl.test (127.0.0.2)")
        assert "request removal" in dnsbl["fix"]
        assert only(data, "network.port25")["status"] == "skip"
        configure(root, "1.2.3.4", ["clean.test"])
        proc, data = check(root, "--only", "network", "--network", "--resolver", resolver)
    finally:
        nsd.stop()
    assert proc.returncode == 0
    assert only(data, "network.dnsbl")["message"] == "1.2.3.4 is on none of 1 blocklist(s)"


def test_network_checks_skip_without_the_flag_and_for_private_addresses(
    deployment_dir: Path,
) -> None:
    _, data = check(deployment_dir, "--only", "network")
    assert {c["status"] for c in data["checks"]} == {"skip"}
    _, data = check(deployment_dir, "--only", "network", "--network")
    assert (
        only(data, "network.dnsbl")["message"]
        == "127.0.0.1 is not a public address: no blocklist lists it"
    )


def test_dnsbl_query_names() -> None:
    assert dnsbl_name("192.0.2.99", "zen.example") == "99.2.0.192.zen.example."
    assert (
        dnsbl_name("2001:db8::1", "bl.example.")
        == "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.example."
    )


@pytest.mark.parametrize(
    ("record", "addresses", "expected"),
    [
        ("v=spf1 mx -all", ["192.0.2.1"], "v=spf1 mx ip4:192.0.2.1 -all"),
        (
            "v=spf1 include:_spf.example.net ~all",
            ["2001:db8::1"],
            "v=spf1 include:_spf.example.net ip6:2001:db8::1 ~all",
        ),
        (
            "v=spf1 a redirect=_spf.example.net",
            ["192.0.2.1"],
            "v=spf1 a ip4:192.0.2.1 redirect=_spf.example.net",
        ),
        ("v=spf1", ["192.0.2.1"], "v=spf1 ip4:192.0.2.1"),
    ],
)
def test_spf_fix_adds_our_addresses_before_the_final_term(
    record: str, addresses: list[str], expected: str
) -> None:
    assert suggest(record, addresses) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("0.0.0.0", "127.0.0.1"), ("::", "::1"), ("192.0.2.5", "192.0.2.5"), ("::1", "::1")],
)
def test_wildcard_listeners_are_reached_on_loopback(host: str, expected: str) -> None:
    assert connect_host(host) == expected


def test_probe_mailbox_is_removed_even_when_the_body_fails(deployment_dir: Path) -> None:
    dep = Deployment.open(deployment_dir)
    try:
        seen: list[str] = []

        def use_and_fail() -> None:
            with probe_mailbox(dep, "example.com") as p:
                seen.append(p.address)
                assert p.address.startswith(PROBE_PREFIX)
                assert dep.accounts.authenticate(p.address, p.password) == p.address
                maildir = deployment_dir / "mail" / "example.com" / p.address.split("@")[0]
                assert (maildir / "cur").is_dir()
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            use_and_fail()
        assert len(seen) == 1
        assert dep.accounts.users() == []
        assert list((deployment_dir / "mail").iterdir()) == []
    finally:
        dep.close()


def test_probe_maildir_belongs_to_the_deployment_owner(deployment_dir: Path) -> None:
    if os.geteuid() != 0:  # the code under test chowns only as root
        pytest.fail("needs root to chown: run the suite as root, as scripts/test documents")
    nobody = 65534
    os.chown(deployment_dir, nobody, nobody)
    dep = Deployment.open(deployment_dir)
    try:
        with probe_mailbox(dep, "example.com") as p:
            maildir = deployment_dir / "mail" / "example.com" / p.address.split("@")[0]
            for path in [maildir.parent, maildir, *maildir.rglob("*")]:
                assert path.lstat().st_uid == nobody, path
    finally:
        dep.close()


def test_stale_probes_from_killed_runs_are_removed(deployment_dir: Path) -> None:
    dep = Deployment.open(deployment_dir)
    try:
        old = f"{PROBE_PREFIX}dead@example.com"
        dep.accounts.add_user(old, "x" * 20)
        dep.store.create_account(old)
        dep.accounts.add_user("alice@example.com", "y" * 20)
        assert remove_stale_probes(dep) == []  # fresh: maybe a check running right now
        assert remove_stale_probes(dep, now=time.time() + STALE_PROBE_S + 1) == [old]
        assert [u.address for u in dep.accounts.users()] == ["alice@example.com"]
        assert not (deployment_dir / "mail" / "example.com" / old.split("@")[0]).exists()
    finally:
        dep.close()
