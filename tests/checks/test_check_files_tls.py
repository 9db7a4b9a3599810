"""`check --only tls` / `--only files` on broken certificates and unsafe file modes.

Certificates are made with `cryptography`, signed by the deployment's own CA, so that each
variant breaks exactly one property.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailstack.base.paths import StatePaths
from tests.checks.conftest import check, not_passing, only

NOW = dt.datetime.now(dt.UTC)
PRIVATE_CA = {"tls.trust": "warn"}  # init's certificate comes from its private CA


def write_leaf(
    root: Path,
    *,
    names: list[str],
    not_before: dt.datetime,
    not_after: dt.datetime,
    new_key: bool = False,
) -> None:
    paths = StatePaths(root)
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    key = serialization.load_pem_private_key(paths.tls_key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths.tls_cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    if new_key:
        other = ec.generate_private_key(ec.SECP256R1())
        paths.tls_key.write_bytes(
            other.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def test_fresh_certificate_only_warns_about_the_private_ca(deployment_dir: Path) -> None:
    proc, data = check(deployment_dir, "--only", "tls")
    assert proc.returncode == 0
    assert not_passing(data) == PRIVATE_CA
    assert only(data, "tls.expiry")["message"].startswith("valid for 39")


def test_expired(deployment_dir: Path) -> None:
    write_leaf(
        deployment_dir,
        names=["mail.example.com"],
        not_before=NOW - dt.timedelta(days=400),
        not_after=NOW - dt.timedelta(days=2),
    )
    proc, data = check(deployment_dir, "--only", "tls")
    assert proc.returncode == 1
    assert not_passing(data) == {**PRIVATE_CA, "tls.expiry": "fail"}
    expiry = only(data, "tls.expiry")
    assert expiry["message"].startswith("the certificate expired on ")
    assert "mailstack init --force" in expiry["fix"]
    assert "mailstack tls import" in expiry["fix"]


@pytest.mark.parametrize(("days", "status"), [(3, "fail"), (20, "warn"), (45, "pass")])
def test_expiry_thresholds(deployment_dir: Path, days: int, status: str) -> None:
    write_leaf(
        deployment_dir,
        names=["mail.example.com"],
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=days, hours=1),
    )
    _, data = check(deployment_dir, "--only", "tls")
    assert only(data, "tls.expiry")["status"] == status
    assert f"{days}" in only(data, "tls.expiry")["message"]


def test_for_another_name(deployment_dir: Path) -> None:
    write_leaf(
        deployment_dir,
        names=["www.example.org"],
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=90),
    )
    proc, data = check(deployment_dir, "--only", "tls")
    assert proc.returncode == 1
    assert not_passing(data) == {**PRIVATE_CA, "tls.hostname": "fail"}
    hostname = only(data, "tls.hostname")
    assert hostname["message"] == (
        "the certificate names www.example.org, not mail.example.com: clients refuse it"
    )
    assert "mail.example.com as a subjectAltName" in hostname["fix"]


def test_key_mismatch(deployment_dir: Path) -> None:
    write_leaf(
        deployment_dir,
        names=["mail.example.com"],
        not_before=NOW - dt.timedelta(days=1),
        not_after=NOW + dt.timedelta(days=90),
        new_key=True,
    )
    proc, data = check(deployment_dir, "--only", "tls")
    assert proc.returncode == 1
    assert not_passing(data) == {**PRIVATE_CA, "tls.key": "fail"}
    assert "is not the key of the certificate" in only(data, "tls.key")["message"]
    assert only(data, "tls.key")["fix"].startswith("install the matching pair")


def test_chain_out_of_order(deployment_dir: Path) -> None:
    paths = StatePaths(deployment_dir)
    leaf, ca = x509.load_pem_x509_certificates(paths.tls_cert.read_bytes())
    pem = serialization.Encoding.PEM
    paths.tls_cert.write_bytes(ca.public_bytes(pem) + leaf.public_bytes(pem))
    _, data = check(deployment_dir, "--only", "tls")
    assert only(data, "tls.chain")["status"] == "fail"
    assert "certificate 1 is not signed by certificate 2" in only(data, "tls.chain")["message"]


def test_files_pass_on_a_fresh_deployment(deployment_dir: Path) -> None:
    proc, data = check(deployment_dir, "--only", "files", "--only", "config")
    assert proc.returncode == 0
    assert not_passing(data) == {}


def test_world_readable_keys(deployment_dir: Path) -> None:
    paths = StatePaths(deployment_dir)
    dkim = paths.dkim_key("test", "example.com")
    for p in (paths.tls_key, dkim):
        os.chmod(p, 0o644)
    proc, data = check(deployment_dir, "--only", "files")
    assert proc.returncode == 1
    assert not_passing(data) == {"files.modes": "fail"}
    modes = only(data, "files.modes")
    assert f"{paths.tls_key} is 0644" in modes["message"]
    assert f"{dkim} is 0644" in modes["message"]
    assert modes["fix"] == f"chmod 600 {paths.tls_key} {dkim}"


def test_world_readable_user_database(deployment_dir: Path) -> None:
    paths = StatePaths(deployment_dir)
    os.chmod(paths.users_db, 0o644)
    _, data = check(deployment_dir, "--only", "files")
    assert not_passing(data) == {"files.modes": "fail"}
    # SQLite makes its -wal/-shm files with the database's mode: they leak the same hashes.
    db = paths.users_db
    assert only(data, "files.modes")["fix"] == f"chmod 600 {db} {db}-wal {db}-shm"


def test_missing_dkim_key_and_unwritable_queue(deployment_dir: Path) -> None:
    paths = StatePaths(deployment_dir)
    paths.dkim_key("test", "example.com").unlink()
    paths.queue_dir.rmdir()
    _, data = check(deployment_dir, "--only", "files")
    assert not_passing(data) == {"files.present": "fail", "files.queue": "fail"}
    assert "test.example.com.key" in only(data, "files.present")["message"]
    assert only(data, "files.queue")["fix"] == f"mkdir -m 700 {paths.queue_dir}"


def test_invalid_config_names_the_key(deployment_dir: Path) -> None:
    config = StatePaths(deployment_dir).config
    config.write_text(
        config.read_text().replace('hostname = "mail.example.com"', 'hostname = "not a host"')
    )
    proc, data = check(deployment_dir)
    assert proc.returncode == 1
    valid = only(data, "config.valid")
    assert valid["status"] == "fail"
    assert "server.hostname" in valid["message"]
    assert {c["status"] for c in data["checks"] if c["id"] != "config.valid"} == {"skip"}


def test_unusable_user_database_is_a_finding_not_a_crash(deployment_dir: Path) -> None:
    StatePaths(deployment_dir).users_db.write_bytes(b"this is not an SQLite database" * 100)
    proc, data = check(deployment_dir, "--only", "files", "--only", "tls")
    assert proc.returncode == 1
    present = only(data, "files.present")
    assert present["status"] == "fail"
    assert present["message"].startswith("cannot open the deployment: cannot open ")
    assert "not a database" in present["message"]
    assert {c["status"] for c in data["checks"] if c["id"] != "files.present"} == {"skip"}
