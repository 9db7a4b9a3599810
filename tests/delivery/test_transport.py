"""delivery/transport.py's verified contexts and `[outbound] ca_file` changing under a running
server: real PEM files from trustme CAs, contexts compared by the CAs OpenSSL loaded."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import trustme
from mailstack.delivery.transport import verified_context


def ca_subjects(path: Path) -> set[str]:
    ctx = verified_context(str(path))
    return {str(c["subject"]) for c in ctx.get_ca_certs() if "Testing CA" in str(c["subject"])}


def write(path: Path, data: bytes) -> None:
    new = path.with_name(path.name + ".new")
    new.write_bytes(data)
    os.replace(new, path)


def test_the_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    first, second = trustme.CA(), trustme.CA()
    path = tmp_path / "ca.pem"
    write(path, first.cert_pem.bytes())
    ctx = verified_context(str(path))
    assert verified_context(str(path)) is ctx  # unchanged: the same context, no re-read
    assert len(ca_subjects(path)) == 1
    write(path, first.cert_pem.bytes() + second.cert_pem.bytes())
    assert verified_context(str(path)) is not ctx
    assert len(ca_subjects(path)) == 2


def test_a_broken_or_missing_file_keeps_the_last_cas(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ca.pem"
    write(path, trustme.CA().cert_pem.bytes())
    good = verified_context(str(path))
    write(path, b"-----BEGIN CERTIFICATE-----\nhalf a certifi")
    with caplog.at_level(logging.WARNING, logger="mailstack.delivery.transport"):
        assert verified_context(str(path)) is good
    assert "does not load, keeping its last CAs" in caplog.text
    path.unlink()
    assert verified_context(str(path)) is good


def test_a_file_that_never_loaded_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verified_context(str(tmp_path / "missing.pem"))
