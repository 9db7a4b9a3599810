"""The admin commands as subprocesses: accounts, aliases, domains, dns, config, tls.

Every bad input must give one clear line and exit 1 (failure) or 2 (usage), never a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import subprocess
from pathlib import Path

import dns.zone
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.clikit import hoist_global_options
from tests.conftest import MAILSTACK, Cli, run_cli


def ok(result: object) -> str:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return result.stdout  # type: ignore[attr-defined,no-any-return]


def failed(result: object, code: int, message: str) -> str:
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, (result.returncode, stderr)  # type: ignore[attr-defined]
    assert message in stderr
    assert "Traceback" not in stderr
    assert "internal error" not in stderr
    return stderr


def test_user_lifecycle(cli: Cli, deployment_dir: Path) -> None:
    out = ok(cli("user", "add", "Alice@Example.com", "--quota", "1G"))
    assert "added alice@example.com" in out
    generated = out.split("password: ", 1)[1].strip()
    assert len(generated) >= 16
    maildir = deployment_dir / "mail/example.com/alice"
    for sub in ("cur", "new", "tmp", ".Sent", ".Drafts", ".Trash", ".Junk", ".Archive"):
        assert (maildir / sub).is_dir(), sub
    assert stat.S_IMODE(maildir.stat().st_mode) == 0o700
    ok(cli("user", "add", "bob@example.com", "--password-stdin", input="s3cret\n"))
    users = json.loads(ok(cli("user", "list", "--json")))
    assert [(u["address"], u["quota_bytes"]) for u in users] == [
        ("alice@example.com", 1024**3),
        ("bob@example.com", 10 * 1024**3),
    ]
    ok(cli("user", "quota", "bob@example.com", "0"))
    assert json.loads(ok(cli("user", "list", "--json")))[1]["quota_bytes"] == 0
    ok(cli("user", "passwd", "bob@example.com", "--password-stdin", input="n3w\n"))
    ok(cli("user", "del", "bob@example.com"))
    assert not (deployment_dir / "mail/example.com/bob").exists()
    assert [u["address"] for u in json.loads(ok(cli("user", "list", "--json")))] == [
        "alice@example.com"
    ]


def test_user_errors(cli: Cli, deployment_dir: Path) -> None:
    ok(cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n"))
    failed(
        cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n"),
        1,
        "already exists",
    )
    failed(
        cli("user", "add", "carol@other.example", "--password-stdin", input="pw\n"),
        1,
        "mailstack domain add other.example",
    )
    failed(cli("user", "add", "not-an-address"), 2, "not an email address")
    failed(cli("user", "add", "x@example.com", "--quota", "lots"), 2, "expected a size")
    failed(
        cli("user", "add", "x@example.com", "--password-stdin", input=""),
        2,
        "no password on standard input",
    )
    failed(cli("user", "del", "nobody@example.com"), 1, "no such user")
    failed(
        cli("user", "passwd", "nobody@example.com", "--password-stdin", input="x\n"),
        1,
        "no such user",
    )
    failed(cli("user", "frobnicate"), 2, "No such command")


def test_aliases(cli: Cli, deployment_dir: Path) -> None:
    ok(cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n"))
    ok(cli("alias", "add", "sales@example.com", "alice@example.com"))
    ok(cli("alias", "add", "@example.com", "alice@example.com"))
    listed = json.loads(ok(cli("alias", "list", "--json")))
    assert {a["address"]: a["targets"] for a in listed} == {
        "@example.com": ["alice@example.com"],
        "sales@example.com": ["alice@example.com"],
    }
    ok(cli("alias", "add", "a@example.com", "sales@example.com"))
    failed(cli("alias", "add", "sales@example.com", "a@example.com"), 2, "loop")
    failed(cli("alias", "add", "x@unhosted.example", "alice@example.com"), 1, "not hosted")
    ok(cli("alias", "del", "sales@example.com"))
    failed(cli("alias", "del", "sales@example.com"), 1, "no such alias")


def test_alias_targets_must_exist_or_be_asked_for_outside(cli: Cli, deployment_dir: Path) -> None:
    ok(cli("user", "add", "alice@example.com", "--password-stdin", input="pw\n"))
    ok(cli("user", "add", "bob@example.com", "--password-stdin", input="pw\n"))
    ok(cli("alias", "add", "@example.com", "alice@example.com"))  # a catch-all hides no typo
    # A local target that does not exist: refused, naming it and how to add it.
    missing = failed(cli("alias", "add", "sales@example.com", "bbo@example.com"), 1, "bbo@")
    assert "does not exist" in missing
    # A mistyped domain would forward outside: refused unless asked for with --external.
    outside = failed(cli("alias", "add", "sales@example.com", "bob@exmaple.com"), 2, "exmaple")
    assert "--external" in outside
    assert json.loads(ok(cli("alias", "list", "--json"))) == [
        {"address": "@example.com", "targets": ["alice@example.com"]}
    ]
    # Adding prints the whole alias, not only what was added.
    assert ok(cli("alias", "add", "sales@example.com", "alice@example.com")).strip() == (
        "alias sales@example.com -> alice@example.com"
    )
    added = ok(cli("alias", "add", "sales@example.com", "bob@example.com", "bob+x@example.com"))
    assert added.strip() == (
        "alias sales@example.com -> alice@example.com, bob+x@example.com, bob@example.com"
    )
    ok(cli("alias", "add", "sales@example.com", "friend@elsewhere.test", "--external"))
    # One target out: the rest stays and is shown.
    left = ok(cli("alias", "del", "sales@example.com", "bob+x@example.com"))
    assert left.strip() == (
        "alias sales@example.com -> alice@example.com, bob@example.com, friend@elsewhere.test"
    )
    failed(cli("alias", "del", "sales@example.com", "carol@example.com"), 1, "no target")


def test_domain_add_writes_key_and_zone(cli: Cli, deployment_dir: Path) -> None:
    out = ok(cli("domain", "add", "example.org"))
    assert "_dmarc.example.org." in out
    assert (deployment_dir / "dkim/test.example.org.key").stat().st_mode & 0o077 == 0
    zone = dns.zone.from_text(
        (deployment_dir / "dns/example.org.zone").read_text(),
        origin="example.org.",
        relativize=False,
    )
    assert zone.find_rdataset("test._domainkey.example.org.", "TXT")
    assert json.loads(ok(cli("domain", "list", "--json"))) == ["example.com", "example.org"]
    failed(cli("domain", "add", "example.org"), 1, "already hosted")
    failed(cli("domain", "add", "not a domain"), 2, "not a valid domain")
    ok(cli("user", "add", "x@example.org", "--password-stdin", input="pw\n"))


def test_dns_formats(cli: Cli, deployment_dir: Path) -> None:
    records = json.loads(ok(cli("dns", "--format", "json")))
    by_type = {(r["name"], r["type"]) for r in records}
    assert ("example.com.", "MX") in by_type
    assert ("1.0.0.127.in-addr.arpa.", "PTR") in by_type
    ptr = next(r for r in records if r["type"] == "PTR")
    assert ptr["where"] == "hosting-provider"
    zone_text = ok(cli("dns", "--format", "zone"))
    assert "$ORIGIN example.com." in zone_text
    assert "$ORIGIN 0.0.127.in-addr.arpa." in zone_text
    table = ok(cli("dns"))
    assert "test._domainkey.example.com." in table
    failed(cli("dns", "--format", "yaml"), 2, "Invalid value")


def test_config_validate_and_show(cli: Cli, deployment_dir: Path, tmp_path: Path) -> None:
    assert "ok" in ok(cli("config", "validate"))
    shown = ok(cli("config", "show"))
    assert 'hostname = "mail.example.com"' in shown
    assert "max_message_size = 52428800" in shown
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
        '[listen]\nsmtp = ["nope"]\n'
    )
    failed(cli("config", "validate", str(bad)), 1, f"{bad}:5: listen.smtp[0]")


def test_broken_config_gives_one_line_everywhere(cli: Cli, deployment_dir: Path) -> None:
    (deployment_dir / "mailstack.toml").write_text("[server]\nhostname = 3\n")
    for args in (("user", "list"), ("dns",), ("serve",), ("config", "show")):
        failed(cli(*args), 1, "server.hostname: expected string")


def test_no_deployment(cli: Cli) -> None:
    failed(cli("user", "list"), 1, "no mailstack deployment")
    failed(cli("serve"), 1, "no mailstack deployment")


def _cert_for(ca: trustme.CA, name: str, tmp: Path) -> tuple[Path, Path]:
    tmp.mkdir(exist_ok=True)
    leaf = ca.issue_cert(name)
    cert, key = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    return cert, key


def test_tls_import_and_status(cli: Cli, deployment_dir: Path, tmp_path: Path) -> None:
    status = json.loads(ok(cli("tls", "status", "--json")))
    assert status["private_ca"] is True
    assert "mail.example.com" in status["names"]
    ca = trustme.CA()
    cert, key = _cert_for(ca, "mail.example.com", tmp_path)
    other_cert, other_key = _cert_for(ca, "other.example.net", tmp_path)
    failed(
        cli("tls", "import", "--cert", str(other_cert), "--key", str(other_key)),
        1,
        "does not cover mail.example.com",
    )
    failed(
        cli("tls", "import", "--cert", str(cert), "--key", str(other_key)),
        1,
        "does not match the certificate",
    )
    failed(
        cli("tls", "import", "--cert", str(tmp_path / "missing.pem"), "--key", str(key)),
        2,
        "does not exist",
    )
    # a chain with two intermediates, written in the wrong order
    deep_cert, deep_key = _cert_for(
        ca.create_child_ca().create_child_ca(), "mail.example.com", tmp_path / "deep"
    )
    leaf, *intermediates = x509.load_pem_x509_certificates(deep_cert.read_bytes())
    assert len(intermediates) == 2
    swapped = tmp_path / "swapped.pem"
    swapped.write_bytes(
        b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [leaf, *reversed(intermediates)]
        )
    )
    failed(
        cli("tls", "import", "--cert", str(swapped), "--key", str(deep_key)),
        1,
        "certificate 1 in the chain is not signed by certificate 2",
    )
    ok(cli("tls", "import", "--cert", str(cert), "--key", str(key)))
    assert stat.S_IMODE((deployment_dir / "tls/privkey.pem").stat().st_mode) == 0o600
    assert not (deployment_dir / "tls/ca.pem").exists()
    status = json.loads(ok(cli("tls", "status", "--json")))
    assert status["private_ca"] is False


def test_tls_import_refuses_expired(cli: Cli, deployment_dir: Path, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.example.com")])
    past = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(past)
        .not_valid_after(past + dt.timedelta(days=90))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("mail.example.com")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    failed(
        cli("tls", "import", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")),
        1,
        "expired",
    )


def test_systemd_unit(cli: Cli, deployment_dir: Path) -> None:
    unit = ok(cli("systemd-unit"))
    assert f"--dir {deployment_dir} serve" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit


@pytest.mark.parametrize("args", [("--bogus",), ("user", "add"), ("alias", "add", "a@b.c")])
def test_usage_errors_exit_2(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("user", "add", "two@@example.com"),
        ("user", "add", "a(b)@example.com"),
        ("alias", "add", "x@example.com", "two@@example.com"),
        ("alias", "add", "two@@example.com", "alice@example.com"),
    ],
)
def test_malformed_addresses_exit_2_with_the_reason(
    cli: Cli, deployment_dir: Path, args: tuple[str, ...]
) -> None:
    result = cli(*args, input="a-long-password-1\n")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "local part may not contain" in result.stderr
    assert "Traceback" not in result.stderr
    assert ok(cli("user", "list", "--json")).count("two@") == 0


@pytest.mark.parametrize(
    "args",
    [
        ("user", "list", "--json", "--dir", "{root}"),
        ("user", "list", "--dir={root}", "--json"),
        ("--debug", "user", "list", "--json", "--dir", "{root}"),
        ("user", "--dir", "{root}", "list", "--json"),
    ],
)
def test_global_options_after_the_subcommand(deployment_dir: Path, args: tuple[str, ...]) -> None:
    ok(run_cli(deployment_dir, "user", "add", "ann@example.com", input="a-long-password-1\n"))
    argv = [a.replace("{root}", str(deployment_dir)) for a in args]
    env = {k: v for k, v in os.environ.items() if k != "MAILSTACK_DIR"}
    result = subprocess.run(
        [MAILSTACK, *argv], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [u["address"] for u in json.loads(result.stdout)] == ["ann@example.com"]


def test_hoisting_keeps_everything_else_in_place() -> None:
    assert hoist_global_options(["alias", "add", "a@b.c", "x@b.c", "--dir", "/d"]) == [
        "--dir",
        "/d",
        "alias",
        "add",
        "a@b.c",
        "x@b.c",
    ]
    assert hoist_global_options(["deliver", "--", "--dir"]) == ["deliver", "--", "--dir"]
    assert hoist_global_options(["check", "--dir"]) == ["check", "--dir"]  # click says why


def test_user_add_prints_the_client_settings(cli: Cli) -> None:
    ok(
        cli(
            "init",
            "--non-interactive",
            "--domain",
            "example.com",
            "--hostname",
            "mail.example.com",
            "--ipv4",
            "1.2.3.4",
            "--imaps-port",
            "1993",
        )
    )
    out = ok(cli("user", "add", "ann@example.com"))
    lines = out.splitlines()
    at = lines.index("Mail client settings:")
    assert lines[at + 1 :] == [
        "  IMAP      mail.example.com port 1993 (SSL/TLS) or 143 (STARTTLS)",
        "  SMTP out  mail.example.com port 465 (SSL/TLS) or 587 (STARTTLS), with the same login",
        "  user name ann@example.com",
    ]
