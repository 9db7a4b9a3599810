"""`mailstack init` as an admin runs it: files, modes, zones, keys, certificates, refusals."""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import ssl
import stat
import subprocess
from pathlib import Path

import dns.rdatatype
import dns.zone
import pexpect
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mailstack.base.config import load_config
from tests.conftest import MAILSTACK, Cli, run_cli

INIT = (
    "init",
    "--domain",
    "example.com",
    "--hostname",
    "mail.example.com",
    "--ipv4",
    "203.0.113.5",
    "--ipv6",
    "2001:db8::25",
    "--dkim-selector",
    "ms202611",
    "--non-interactive",
)


@pytest.fixture
def inited(cli: Cli, state_dir: Path) -> Path:
    result = cli(*INIT)
    assert result.returncode == 0, result.stderr
    return state_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_layout_and_modes(inited: Path) -> None:
    for rel in (
        "mailstack.toml",
        "tls/fullchain.pem",
        "tls/privkey.pem",
        "tls/ca.pem",
        "tls/ca.key",
        "dkim/ms202611.example.com.key",
        "dns/example.com.zone",
        "dns/113.0.203.in-addr.arpa.zone",
        "dns/0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.zone",
        "users.sqlite3",
    ):
        assert (inited / rel).is_file(), rel
    for secret in (
        "tls/privkey.pem",
        "tls/ca.key",
        "dkim/ms202611.example.com.key",
        "users.sqlite3",
    ):
        assert mode(inited / secret) == 0o600, secret
    assert mode(inited / "mail") == 0o700
    assert (inited / "queue").is_dir()
    assert not list(inited.parent.glob(".state.init-*")), "staging directory left behind"


def test_output_shows_records_with_where_and_unsplit_dkim(cli: Cli) -> None:
    result = cli(*INIT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "At your domain's DNS host" in out
    assert "At your hosting provider" in out
    assert "5.113.0.203.in-addr.arpa." in out
    dkim_txt = next(line for line in out.splitlines() if "v=DKIM1" in line)
    assert '" "' not in dkim_txt  # shown as one string, for web forms


def _zone(path: Path, origin: str) -> dns.zone.Zone:
    return dns.zone.from_text(path.read_text(), origin=origin, relativize=False, check_origin=True)


def _txt(zone: dns.zone.Zone, name: str) -> list[str]:
    rdataset = zone.find_rdataset(name, dns.rdatatype.TXT)
    return [b"".join(r.strings).decode() for r in rdataset]


def test_zone_has_every_record(inited: Path) -> None:
    zone = _zone(inited / "dns/example.com.zone", "example.com.")
    mx = zone.find_rdataset("example.com.", dns.rdatatype.MX)
    assert [(r.preference, r.exchange.to_text()) for r in mx] == [(10, "mail.example.com.")]
    assert [r.address for r in zone.find_rdataset("mail.example.com.", dns.rdatatype.A)] == [
        "203.0.113.5"
    ]
    assert [r.address for r in zone.find_rdataset("mail.example.com.", "AAAA")] == ["2001:db8::25"]
    assert _txt(zone, "example.com.") == ["v=spf1 mx -all"]
    assert _txt(zone, "mail.example.com.") == ["v=spf1 a -all"]
    assert _txt(zone, "_dmarc.example.com.") == [
        "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"
    ]
    assert _txt(zone, "_smtp._tls.example.com.")[0].startswith("v=TLSRPTv1; rua=mailto:")
    srv = {
        name: [
            (r.priority, r.weight, r.port, r.target.to_text())
            for r in zone.find_rdataset(f"{name}.example.com.", dns.rdatatype.SRV)
        ]
        for name in (
            "_submission._tcp",
            "_submissions._tcp",
            "_imap._tcp",
            "_imaps._tcp",
            "_pop3._tcp",
            "_pop3s._tcp",
        )
    }
    assert srv == {
        "_submission._tcp": [(0, 1, 587, "mail.example.com.")],
        "_submissions._tcp": [(0, 1, 465, "mail.example.com.")],
        "_imap._tcp": [(0, 1, 143, "mail.example.com.")],
        "_imaps._tcp": [(0, 1, 993, "mail.example.com.")],
        "_pop3._tcp": [(0, 0, 0, ".")],
        "_pop3s._tcp": [(0, 0, 0, ".")],
    }


def test_dkim_record_is_the_public_half_of_the_key_and_split(inited: Path) -> None:
    zone = _zone(inited / "dns/example.com.zone", "example.com.")
    rdataset = zone.find_rdataset("ms202611._domainkey.example.com.", dns.rdatatype.TXT)
    (rdata,) = list(rdataset)
    assert all(len(s) <= 255 for s in rdata.strings)
    assert len(rdata.strings) > 1
    value = b"".join(rdata.strings).decode()
    tags = dict(t.strip().split("=", 1) for t in value.split(";"))
    assert tags["v"] == "DKIM1"
    assert tags["k"] == "rsa"
    key = serialization.load_pem_private_key(
        (inited / "dkim/ms202611.example.com.key").read_bytes(), password=None
    )
    expected = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64decode(tags["p"]) == expected


def test_reverse_zones(inited: Path) -> None:
    v4 = _zone(inited / "dns/113.0.203.in-addr.arpa.zone", "113.0.203.in-addr.arpa.")
    ptr = v4.find_rdataset("5.113.0.203.in-addr.arpa.", dns.rdatatype.PTR)
    assert [r.target.to_text() for r in ptr] == ["mail.example.com."]
    origin = "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    v6 = _zone(inited / f"dns/{origin[:-1]}.zone", origin)
    owner = "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0." + origin
    assert [r.target.to_text() for r in v6.find_rdataset(owner, "PTR")] == ["mail.example.com."]


def test_zones_pass_nsd_checkzone(inited: Path) -> None:
    checker = shutil.which("nsd-checkzone")
    assert checker, "nsd-checkzone (Debian package nsd) is required"
    zones = sorted((inited / "dns").glob("*.zone"))
    assert [p.name for p in zones] == [
        "0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.zone",  # the /64 of --ipv6
        "113.0.203.in-addr.arpa.zone",  # the /24 of --ipv4
        "example.com.zone",
    ]
    for path in zones:
        result = subprocess.run(
            [checker, path.name.removesuffix(".zone"), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_certificate_verifies_against_ca_for_hostname(inited: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(inited / "tls/ca.pem"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(inited / "tls/fullchain.pem", inited / "tls/privkey.pem")
    # A real handshake in memory: the client checks chain and hostname as a mail client would.
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(c_in, c_out, server_hostname="mail.example.com")
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side, out, peer_in in ((client, c_out, s_in), (srv, s_out, c_in)):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
            peer_in.write(out.read())
    assert client.version() in {"TLSv1.2", "TLSv1.3"}
    leaf = x509.load_pem_x509_certificates((inited / "tls/fullchain.pem").read_bytes())[0]
    days = (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days
    assert 396 <= days <= 398


def test_init_refuses_to_overwrite(cli: Cli, inited: Path) -> None:
    key_before = (inited / "tls/privkey.pem").read_bytes()
    result = cli(*INIT)
    assert result.returncode == 1
    assert "already holds a mailstack deployment" in result.stderr
    assert "--force" in result.stderr
    assert "Traceback" not in result.stderr
    assert (inited / "tls/privkey.pem").read_bytes() == key_before


def test_force_regenerates_keys_but_keeps_accounts(cli: Cli, inited: Path) -> None:
    assert cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n").returncode == 0
    key_before = (inited / "tls/privkey.pem").read_bytes()
    result = cli(*INIT, "--force")
    assert result.returncode == 0, result.stderr
    assert (inited / "tls/privkey.pem").read_bytes() != key_before
    listed = json.loads(cli("user", "list", "--json").stdout)
    assert [u["address"] for u in listed] == ["alice@example.com"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ("--hostname", "mail.example.com", "--ipv4", "203.0.113.5"),
            "missing option --domain",
            id="missing-domain",
        ),
        pytest.param(
            ("--domain", "example.com", "--hostname", "localhost", "--ipv4", "1.2.3.4"),
            "not a fully-qualified host name",
            id="bad-hostname",
        ),
        pytest.param(
            ("--domain", "example.com", "--hostname", "mail.example.com", "--ipv4", "300.1.1.1"),
            "is not an IPv4 address",
            id="bad-ipv4",
        ),
        pytest.param(
            (
                "--domain",
                "example.com",
                "--hostname",
                "mail.example.com",
                "--ipv4",
                "1.2.3.4",
                "--ipv6",
                "1.2.3.4",
            ),
            "is not an IPv6 address",
            id="bad-ipv6",
        ),
        pytest.param(
            ("--domain", "exa mple.com", "--ipv4", "1.2.3.4"),
            "not a valid domain name",
            id="bad-domain",
        ),
        pytest.param(
            ("--domain", "example.com", "--ipv4", "1.2.3.4", "--smtp-port", "99999"),
            "99999",
            id="bad-port",
        ),
        pytest.param(
            ("--domain", "example.com", "--ipv4", "1.2.3.4", "--bogus"),
            "No such option",
            id="unknown-flag",
        ),
        pytest.param(
            ("--domain", "example.com", "--hostname", "203.0.113.5", "--ipv4", "203.0.113.5"),
            "--hostname: '203.0.113.5' is an IP address; give the server's name",
            id="ip-as-hostname",
        ),
        pytest.param(
            ("--domain", "example.com", "--hostname", "mail.example.com", "--ipv4", "2001:db8::1"),
            "--ipv4: '2001:db8::1' is not an IPv4 address",
            id="v6-as-v4",
        ),
    ],
)
def test_init_usage_errors(cli: Cli, state_dir: Path, args: tuple[str, ...], message: str) -> None:
    result = cli("init", "--non-interactive", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not state_dir.exists()


def test_failed_init_leaves_nothing(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    result = cli(*INIT)
    assert result.returncode == 1
    assert "not a directory" in result.stderr
    assert blocker.read_text().startswith("a file")
    assert [p.name for p in tmp_path.iterdir()] == ["state"]


def test_init_config_loads_and_names_ports(inited: Path) -> None:
    cfg = load_config(inited / "mailstack.toml")
    assert cfg.listen.smtp == ["0.0.0.0:25"]
    assert cfg.server.ipv6 == "2001:db8::25"
    assert cfg.dkim.selector == "ms202611"


def test_dns_table_on_a_terminal_prints_the_dkim_value_unbroken(deployment_dir: Path) -> None:
    """On an 80-column terminal the DKIM value must come out as one run of characters (the
    terminal wraps it, not us): box borders or line breaks inside it end up in a copy."""
    dump = run_cli(deployment_dir, "dns", "--format", "json")
    records = json.loads(dump.stdout)
    (dkim,) = [r for r in records if r["name"].startswith("test._domainkey.")]
    value = dkim["value"]
    assert len(value) > 300
    child = pexpect.spawn(
        MAILSTACK,
        ["--dir", str(deployment_dir), "dns"],
        encoding="utf-8",
        dimensions=(50, 80),
        timeout=60,
    )
    out = child.read()
    child.close()
    assert child.exitstatus == 0, out
    assert value in out
    assert "(see below)" in out


def test_init_warns_about_a_private_address_and_a_foreign_hostname(
    cli: Cli, state_dir: Path
) -> None:
    result = cli(
        "init",
        "--non-interactive",
        "--domain",
        "example.com",
        "--hostname",
        "mx.other.example",
        "--ipv4",
        "10.1.2.3",
    )
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2
    assert "--ipv4 10.1.2.3 is not a public address" in warnings[0]
    assert "--hostname mx.other.example is outside example.com" in warnings[1]
    # A public address and a name inside the domain: nothing to say. (INIT's 203.0.113.5 is a
    # documentation address, not a public one.)
    args = [a if a != "203.0.113.5" else "1.2.3.4" for a in INIT]
    again = cli(*args, "--force")
    assert again.returncode == 0, again.stderr
    assert "warning:" not in again.stderr


def test_init_next_hints_keep_the_dir(cli: Cli, state_dir: Path) -> None:
    out = cli(*INIT).stdout
    assert f"`mailstack --dir {state_dir.absolute()} user add you@example.com`" in out
    assert f"`mailstack --dir {state_dir.absolute()} check`" in out
