"""delivery.dkim: what gets signed, with which key and fields; verified with dkimpy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from mailstack.delivery.dkim import author_domain, sign
from mailstack.delivery.dkim_rsa import sign_digest

from mailstack.base.paths import StatePaths
from mailstack.keys import dkim_public_record, make_dkim_key
from tests.delivery.test_remote import dkim_key

MESSAGE = (
    b"From: Alice <alice@example.com>\r\nTo: bob@remote.test\r\nSubject: hello\r\n"
    b"Date: Sun, 22 Nov 2026 15:00:00 +0000\r\nMessage-ID: <m1@example.com>\r\n"
    b"X-Mailer: test\r\n\r\nhello there\r\n"
)


def keyed(tmp_path: Path, domain: str = "example.com", selector: str = "s1") -> StatePaths:
    paths = StatePaths(tmp_path)
    paths.dkim_dir.mkdir(exist_ok=True)
    paths.dkim_key(selector, domain).write_bytes(dkim_key())
    return paths


def txt_for(name: str, key: bytes) -> Callable[..., bytes]:
    def get_txt(qname: bytes, timeout: float = 5) -> bytes:
        assert qname.decode().rstrip(".") == name
        return dkim_public_record(key).encode()

    return get_txt


def tags(message: bytes) -> dict[str, str]:
    head = message.split(b"\r\n\r\n", 1)[0].decode()
    field = head.split("\r\n")[0]
    for line in head.split("\r\n")[1:]:
        if not line[:1].isspace():
            break
        field += line
    value = "".join(field.split(":", 1)[1].split())
    return dict(t.split("=", 1) for t in value.split(";") if t)


def test_signs_for_a_hosted_from_domain(tmp_path: Path) -> None:
    signed = sign(MESSAGE, paths=keyed(tmp_path), selector="s1", hosted_domains={"example.com"})
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(MESSAGE)
    assert dkim.verify(signed, dnsfunc=txt_for("s1._domainkey.example.com", dkim_key()))
    t = tags(signed)
    assert (t["d"], t["s"], t["a"], t["c"]) == (
        "example.com",
        "s1",
        "rsa-sha256",
        "relaxed/relaxed",
    )
    # The §5.4.1 fields the message has, From oversigned; X-Mailer is none of them.
    assert t["h"].split(":") == ["from", "subject", "date", "to", "message-id", "from"]


def test_relaxed_survives_refolding_but_not_an_added_from(tmp_path: Path) -> None:
    signed = sign(MESSAGE, paths=keyed(tmp_path), selector="s1", hosted_domains={"example.com"})
    get_txt = txt_for("s1._domainkey.example.com", dkim_key())
    refolded = signed.replace(b"Subject: hello", b"Subject:   hello\r\n ")
    assert dkim.verify(refolded, dnsfunc=get_txt)
    assert not dkim.verify(
        signed.replace(b"\r\n\r\n", b"\r\nFrom: mallory@evil.test\r\n\r\n", 1), dnsfunc=get_txt
    )  # oversigned From: a second one breaks it
    assert not dkim.verify(signed.replace(b"hello there", b"hello thar"), dnsfunc=get_txt)


def test_bare_lf_message_keeps_its_line_ends(tmp_path: Path) -> None:
    message = MESSAGE.replace(b"\r\n", b"\n")
    signed = sign(message, paths=keyed(tmp_path), selector="s1", hosted_domains={"example.com"})
    assert b"\r" not in signed
    assert dkim.verify(
        signed.replace(b"\n", b"\r\n"), dnsfunc=txt_for("s1._domainkey.example.com", dkim_key())
    )


@pytest.mark.parametrize("ending", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_a_last_line_without_line_end_is_signed_as_it_is_sent(
    tmp_path: Path, ending: bytes
) -> None:
    # BDAT allows it; DATA adds the CRLF on the way out, and the white space before it is
    # what canonicalisers disagree on (test_dkim_rsa.py, tests/smtp/test_submission_remote.py).
    message = MESSAGE.replace(b"\r\n", ending).removesuffix(ending) + b" \t "
    signed = sign(message, paths=keyed(tmp_path), selector="s1", hosted_domains={"example.com"})
    assert signed.endswith(b"hello there \t ")  # the message itself is not changed
    sent = signed.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # as delivery.remote sends
    get_txt = txt_for("s1._domainkey.example.com", dkim_key())
    assert dkim.verify(sent + b"\r\n", dnsfunc=get_txt)


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(MESSAGE.replace(b"example.com>", b"elsewhere.test>"), id="foreign-domain"),
        pytest.param(MESSAGE.replace(b"From: Alice <alice@example.com>\r\n", b""), id="no-from"),
        pytest.param(
            MESSAGE.replace(b"<alice@example.com>", b"a@example.com, b@example.com"),
            id="two-authors",
        ),
        pytest.param(
            b"From: alice@example.com\r\nFrom: bob@example.com\r\n\r\nx\r\n", id="two-from-fields"
        ),
    ],
)
def test_unsigned_when_not_ours(tmp_path: Path, message: bytes) -> None:
    paths = keyed(tmp_path)
    assert sign(message, paths=paths, selector="s1", hosted_domains={"example.com"}) == message


def test_missing_or_bad_key_sends_unsigned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mailstack.delivery.dkim")
    paths = StatePaths(tmp_path)
    assert sign(MESSAGE, paths=paths, selector="s1", hosted_domains={"example.com"}) == MESSAGE
    assert "cannot read" in caplog.text
    paths.dkim_dir.mkdir()
    paths.dkim_key("s1", "example.com").write_bytes(b"not a key")
    assert sign(MESSAGE, paths=paths, selector="s1", hosted_domains={"example.com"}) == MESSAGE


@pytest.mark.parametrize(
    ("header", "domain"),
    [
        (b"From: Alice <alice@Example.COM>", "example.com"),
        (b"From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>", "xn--bcher-kva.example"),
        (b"From: Alice (folded)\r\n\t<alice@example.com>", "example.com"),
        (b"From: undisclosed", None),
    ],
)
def test_author_domain(header: bytes, domain: str | None) -> None:
    assert author_domain(header + b"\r\nTo: x@y.test\r\n\r\nbody") == domain


def test_a_fresh_key_signs(tmp_path: Path) -> None:
    key = make_dkim_key()
    paths = StatePaths(tmp_path)
    paths.dkim_dir.mkdir()
    paths.dkim_key("s2", "example.com").write_bytes(key)
    signed = sign(MESSAGE, paths=paths, selector="s2", hosted_domains=["example.com"])
    assert dkim.verify(signed, dnsfunc=txt_for("s2._domainkey.example.com", key))


def test_the_rsa_step_can_be_another_process_s(tmp_path: Path) -> None:
    # An SMTP worker hands the digest to the main process (mailstack/workers/login_desk.py)
    # and never loads the key itself; the signature is the same kind that verifies.
    paths = keyed(tmp_path)
    asked: list[tuple[str, str]] = []

    def main_process(selector: str, domain: str, digest: bytes) -> bytes:
        asked.append((selector, domain))
        return sign_digest(paths.dkim_key(selector, domain).read_bytes(), digest)

    other = StatePaths(tmp_path / "no-keys-here")
    signed = sign(MESSAGE, paths=other, selector="s1", hosted_domains={"example.com"},
                  signer=main_process)  # fmt: skip
    assert asked == [("s1", "example.com")]
    assert dkim.verify(signed, dnsfunc=txt_for("s1._domainkey.example.com", dkim_key()))


def test_a_failed_remote_signature_is_made_here(tmp_path: Path) -> None:
    def unreachable(selector: str, domain: str, digest: bytes) -> bytes:
        raise RuntimeError("the main process cannot be reached")

    signed = sign(MESSAGE, paths=keyed(tmp_path), selector="s1", hosted_domains={"example.com"},
                  signer=unreachable)  # fmt: skip
    assert dkim.verify(signed, dnsfunc=txt_for("s1._domainkey.example.com", dkim_key()))
