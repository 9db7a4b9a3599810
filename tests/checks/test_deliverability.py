"""`mailstack check --deliverability` against a deployment whose DNS a real nsd serves: a
blocklist zone that lists our address, reverse DNS, the records `init` wrote; then the same
zones spoiled one way or another, each finding with its fix. Port 25 reachability connects
to a loopback "MX" that listens, then to one that does not.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mailstack.init import InitOptions, init_deployment
from tests.checks.conftest import check, free_ports
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external

IPV4 = "5.0.0.10"  # a public address (the check skips private ones); only nsd ever names it
REVERSE = "0.0.5.in-addr.arpa"
LISTED = '10.0.0.5.bl.test. IN A 127.0.0.2\n10.0.0.5.bl.test. IN TXT "listed for a test"\n'
IDS = [
    "deliverability.dnsbl",
    "deliverability.fcrdns",
    "deliverability.helo",
    "deliverability.alignment",
    "deliverability.dmarc_policy",
    "deliverability.mta_sts",
    "deliverability.tlsrpt",
    "deliverability.port25",
]


def blocklist(listed: bool) -> str:
    return (
        "$ORIGIN bl.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\n"
        "ns IN A 127.0.0.1\n" + (LISTED if listed else "")
    )


def mx_zone(port_host: str = "127.0.0.1") -> str:
    return (
        "$ORIGIN far.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\n"
        f"ns IN A 127.0.0.1\n@ IN MX 10 mx\nmx IN A {port_host}\n"
    )


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    root = tmp_path / "state"
    ports = free_ports(5)
    init_deployment(
        root,
        InitOptions(
            domain="example.com",
            hostname="mail.example.com",
            ipv4=IPV4,
            listen_host="127.0.0.1",
            ports=tuple(
                zip(("smtp", "submission", "submissions", "imap", "imaps"), ports, strict=True)
            ),
            dkim_selector="test",
        ),
    )
    config = root / "mailstack.toml"
    text, n = re.subn(r"(?m)^dnsbl = \[\]$", 'dnsbl = ["bl.test"]', config.read_text())
    assert n == 1
    config.write_text(text)
    return root


class Zones:
    def __init__(self, root: Path, directory: Path) -> None:
        self.root, self.directory, self.server, self.n = root, directory, None, 0

    def serve(self, **changes: Any) -> str:
        """nsd with `init`'s zones (edited by `changes`), the blocklist and far.test."""
        if self.server is not None:
            self.server.stop()
        forward = (self.root / "dns/example.com.zone").read_text()
        reverse = (self.root / f"dns/{REVERSE}.zone").read_text()
        for old, new in changes.get("forward", []):
            forward, n = re.subn(old, new, forward, flags=re.M)
            assert n, old
        if changes.get("no_ptr"):
            reverse = re.sub(r"(?m)^.*\bPTR\b.*$", "", reverse)
        self.n += 1
        self.server = NsdServer(
            self.directory / str(self.n),
            {
                "example.com": forward,
                REVERSE: reverse,
                "bl.test": blocklist(changes.get("listed", True)),
                "far.test": mx_zone(),
            },
        )
        return f"127.0.0.1:{self.server.start()[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@pytest.fixture
def zones(deployment: Path, tmp_path: Path) -> Iterator[Zones]:
    z = Zones(deployment, tmp_path / "nsd")
    try:
        yield z
    finally:
        z.stop()


def findings(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {c["id"]: c for c in data["checks"]}
    assert list(out) == IDS, list(out)  # only this group, in order, one subject each here
    return out


def test_listed_address_and_the_records_init_wrote(deployment: Path, zones: Zones) -> None:
    resolver = zones.serve()
    proc, data = check(deployment, "--deliverability", "--resolver", resolver)
    got = findings(data)
    assert proc.returncode == 1 and data["ok"] is False
    assert got["deliverability.dnsbl"]["status"] == "fail"
    assert f"{IPV4} is listed on bl.test" in got["deliverability.dnsbl"]["message"]
    assert "request removal" in got["deliverability.dnsbl"]["fix"]
    assert got["deliverability.fcrdns"]["message"] == f"{IPV4} -> mail.example.com -> {IPV4}"
    assert got["deliverability.helo"]["status"] == "pass"
    assert got["deliverability.alignment"]["status"] == "pass", got["deliverability.alignment"]
    assert "DKIM (d=example.com) and SPF pass" in got["deliverability.alignment"]["message"]
    assert got["deliverability.dmarc_policy"]["message"] == "example.com: p=quarantine"
    assert got["deliverability.tlsrpt"]["status"] == "pass"
    sts = got["deliverability.mta_sts"]
    assert sts["status"] == "warn" and "_mta-sts.example.com. IN TXT" in sts["fix"]
    assert got["deliverability.port25"]["status"] == "skip"
    assert "--network" in got["deliverability.port25"]["message"]


def test_each_problem_with_its_fix(deployment: Path, zones: Zones) -> None:
    resolver = zones.serve(
        listed=False,
        no_ptr=True,
        forward=[
            (r"p=quarantine", "p=none"),
            (r"^(\S*_domainkey\S*\s.*TXT\s.*p=)[A-Za-z0-9+/]{8}", r"\1AAAAAAAA"),
            (r"v=spf1 mx -all", "v=spf1 -all"),
        ],
    )
    _proc, data = check(deployment, "--deliverability", "--resolver", resolver)
    got = findings(data)
    assert got["deliverability.dnsbl"]["status"] == "pass"
    fcrdns = got["deliverability.fcrdns"]
    assert (fcrdns["status"], fcrdns["message"]) == (
        "fail",
        f"{IPV4} has no PTR record: Gmail and Microsoft refuse or junk such mail",
    )
    assert fcrdns["fix"].endswith("10.0.0.5.in-addr.arpa. IN PTR mail.example.com.")
    assert got["deliverability.helo"]["status"] == "warn"
    alignment = got["deliverability.alignment"]
    assert alignment["status"] == "fail"
    assert "does not verify against the published key" in alignment["message"]
    assert "SPF for our address(es) is fail" in alignment["message"]
    policy = got["deliverability.dmarc_policy"]
    assert policy["status"] == "warn" and "p=none" in policy["message"]
    assert "p=quarantine" in policy["fix"]


@pytest.mark.parametrize("listening", [True, False], ids=["open", "blocked"])
def test_port25_reachability(deployment: Path, zones: Zones, listening: bool) -> None:
    resolver = zones.serve(listed=False)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        if listening:
            server.listen()
        else:
            server.close()  # nothing listens there any more: connection refused
        config = deployment / "mailstack.toml"
        config.write_text(config.read_text().replace("mx_port = 25", f"mx_port = {port}"))
        _proc, data = check(
            deployment,
            "--deliverability",
            "--network",
            "--port25-domain",
            "far.test",
            "--resolver",
            resolver,
        )
    result = findings(data)["deliverability.port25"]
    if listening:
        assert result["status"] == "pass"
        assert re.fullmatch(rf"connected to mx\.far\.test port {port} in \d+ ms", result["message"])
    else:
        assert result["status"] == "fail"
        assert "cannot reach far.test's MX" in result["message"]
        assert "unblock outbound port 25" in result["fix"]
        assert "[outbound] relay" in result["fix"]
