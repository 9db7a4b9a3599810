"""SPF, DKIM and DMARC of inbound mail, against a real nsd serving the test zones."""

from __future__ import annotations

import re
import socket

import pytest
from mailstack.smtp.inbound_auth import InboundVerifier
from mailstack.smtp.verdict import Disposition, EnvelopeInfo, SessionInfo, Verdict

from mailstack.base.config import Config, config_from_dict
from tests.smtp.authzones import DkimKey, build_zones, make_key, message, sign
from tests.support import nsd
from tests.support.nsd import NsdFactory

pytestmark = pytest.mark.external
nsd_server = nsd.nsd_server  # the fixture, by name

HOSTNAME = "mx.rcpt.example"
Addr = tuple[str, int]
Keys = tuple[DkimKey, DkimKey]


@pytest.fixture(scope="module")
def keys() -> Keys:
    return make_key(), make_key()


@pytest.fixture
def dns_addr(nsd_server: NsdFactory, keys: Keys) -> Addr:
    return nsd_server(build_zones(*keys))


def make_config(dns_addr: tuple[str, int], **smtp: object) -> Config:
    host, port = dns_addr
    return config_from_dict(
        {
            "server": {"hostname": HOSTNAME, "domains": ["rcpt.example"]},
            "dns": {"resolver": f"{host}:{port}", "timeout_s": 1.0},
            "smtp": smtp,
        }
    )


def session(
    ip: str = "127.0.0.2", helo: str = "mail.example.org", authenticated_as: str | None = None
) -> SessionInfo:
    return SessionInfo(
        connection_id="t1",
        peer_ip=ip,
        peer_port=40000,
        helo=helo,
        is_esmtp=True,
        tls_version=None,
        tls_cipher=None,
        authenticated_as=authenticated_as,
    )


def envelope(mail_from: str) -> EnvelopeInfo:
    return EnvelopeInfo(mail_from=mail_from, rcpt_tos=("user@rcpt.example",))


def results(verdict: Verdict) -> dict[str, list[str]]:
    """{"spf": ["pass"], "dkim": ["pass", "fail"], ...} from our one header."""
    (header,) = verdict.header_lines
    assert header.startswith(f"Authentication-Results: {HOSTNAME};")
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"[;\s](spf|dkim|dmarc)=([a-z]+)", header):
        out.setdefault(m[1], []).append(m[2])
    return out


async def verify(
    cfg: Config, msg: bytes, mail_from: str, ip: str = "127.0.0.2", **kw: object
) -> Verdict:
    verifier = InboundVerifier(cfg, sample=lambda: 0.5)
    return await verifier(session(ip, **kw), envelope(mail_from), msg)  # type: ignore[arg-type]


async def test_all_pass(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.org")
    v = await verify(make_config(dns_addr), msg, "alice@example.org")
    assert v.disposition is Disposition.DELIVER
    assert results(v) == {"spf": ["pass"], "dkim": ["pass"], "dmarc": ["pass"]}
    header = v.header_lines[0]
    assert "smtp.mailfrom=alice@example.org" in header
    assert "header.d=example.org header.s=sel header.b=" in header
    assert "header.from=example.org" in header
    assert v.message is None  # nothing was removed: store as received


async def test_tampered_body_fails_dkim_and_dmarc_rejects(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.org")
    tampered = msg.replace(b"Hi there.", b"Hi there!")
    # 127.0.0.9 is not in example.org's SPF: nothing aligned passes.
    v = await verify(make_config(dns_addr), tampered, "alice@example.org", ip="127.0.0.9")
    assert v.disposition is Disposition.REJECT
    assert v.reply is not None
    assert (v.reply.code, v.reply.enhanced) == (550, "5.7.1")
    assert "example.org" in v.reply.text
    assert v.header_lines == ()


async def test_tampered_body_is_dkim_fail_in_header(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.org")
    tampered = msg.replace(b"Hi there.", b"Hi there!")
    v = await verify(make_config(dns_addr), tampered, "alice@example.org")  # SPF passes
    assert v.disposition is Disposition.DELIVER
    assert results(v) == {"spf": ["pass"], "dkim": ["fail"], "dmarc": ["pass"]}


async def test_wrong_key_in_dns_fails(dns_addr: Addr, keys: Keys) -> None:
    # Signed with our key but naming selector "wrong", whose DNS record is another key.
    msg = sign(message("alice@example.org"), keys[0], "example.org", selector="wrong")
    v = await verify(
        make_config(dns_addr, dmarc_reject_to_junk=True), msg, "alice@example.org", ip="127.0.0.9"
    )
    assert results(v) == {"spf": ["fail"], "dkim": ["fail"], "dmarc": ["fail"]}
    assert v.disposition is Disposition.JUNK  # p=reject, but dmarc_reject_to_junk


async def test_missing_key_is_permerror(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.org", selector="absent")
    v = await verify(make_config(dns_addr), msg, "alice@example.org")
    assert results(v)["dkim"] == ["permerror"]


@pytest.mark.parametrize(
    ("mail_from", "ip", "expected"),
    [
        pytest.param("a@example.org", "127.0.0.2", "pass", id="pass"),
        pytest.param("a@example.org", "127.0.0.7", "fail", id="fail"),
        pytest.param("a@example.net", "127.0.0.7", "softfail", id="softfail"),
        pytest.param("a@nopolicy.example", "127.0.0.2", "none", id="none"),
    ],
)
async def test_spf_results(dns_addr: Addr, mail_from: str, ip: str, expected: str) -> None:
    msg = message("someone@nopolicy.example")  # no DMARC: SPF alone decides nothing
    v = await verify(make_config(dns_addr), msg, mail_from, ip=ip)
    assert results(v)["spf"] == [expected]
    assert results(v)["dmarc"] == ["none"]
    assert v.disposition is Disposition.DELIVER


async def test_null_sender_checks_helo_identity(dns_addr: Addr) -> None:
    v = await verify(make_config(dns_addr), message("x@nopolicy.example"), "", helo="example.org")
    assert results(v)["spf"] == ["pass"]
    assert "smtp.helo=example.org" in v.header_lines[0]


async def test_dmarc_pass_by_relaxed_spf_alignment(dns_addr: Addr) -> None:
    # Unsigned; MAIL FROM in a subdomain with its own SPF: relaxed alignment (RFC 7489 §3.1.2).
    v = await verify(
        make_config(dns_addr),
        message("alice@example.org"),
        "bounce@bounces.example.org",
        ip="127.0.0.3",
    )
    assert results(v) == {"spf": ["pass"], "dkim": ["none"], "dmarc": ["pass"]}
    assert v.disposition is Disposition.DELIVER


async def test_dmarc_pass_by_dkim_alignment_despite_spf_fail(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.org")
    v = await verify(make_config(dns_addr), msg, "alice@example.org", ip="127.0.0.9")
    assert results(v) == {"spf": ["fail"], "dkim": ["pass"], "dmarc": ["pass"]}
    assert v.disposition is Disposition.DELIVER


async def test_strict_alignment_refuses_subdomain(dns_addr: Addr, keys: Keys) -> None:
    # SPF and DKIM pass for mail.strict.example, but strict.example demands exact matches.
    msg = sign(message("alice@strict.example"), keys[0], "mail.strict.example")
    v = await verify(make_config(dns_addr), msg, "bounce@mail.strict.example")
    assert v.disposition is Disposition.REJECT
    v = await verify(
        make_config(dns_addr, dmarc_reject_to_junk=True), msg, "bounce@mail.strict.example"
    )
    assert results(v) == {"spf": ["pass"], "dkim": ["pass"], "dmarc": ["fail"]}
    assert v.disposition is Disposition.JUNK


async def test_unaligned_dkim_pass_does_not_satisfy_dmarc(dns_addr: Addr, keys: Keys) -> None:
    msg = sign(message("alice@example.org"), keys[0], "example.net")  # a third party's signature
    v = await verify(make_config(dns_addr), msg, "alice@example.org", ip="127.0.0.9")
    assert v.disposition is Disposition.REJECT
    v = await verify(
        make_config(dns_addr, dmarc_reject_to_junk=True), msg, "alice@example.org", ip="127.0.0.9"
    )
    assert results(v) == {"spf": ["fail"], "dkim": ["pass"], "dmarc": ["fail"]}


async def test_quarantine_goes_to_junk(dns_addr: Addr) -> None:
    v = await verify(
        make_config(dns_addr), message("alice@example.net"), "alice@example.net", ip="127.0.0.9"
    )
    assert results(v) == {"spf": ["softfail"], "dkim": ["none"], "dmarc": ["fail"]}
    assert v.disposition is Disposition.JUNK
    assert "p=quarantine" in v.header_lines[0]


async def test_pct_zero_softens_reject_to_quarantine(dns_addr: Addr) -> None:
    v = await verify(make_config(dns_addr), message("a@sampled.example"), "a@sampled.example")
    assert results(v)["dmarc"] == ["fail"]
    assert v.disposition is Disposition.JUNK


async def test_forged_results_with_our_authserv_id_are_removed(dns_addr: Addr, keys: Keys) -> None:
    forged = (
        f"Authentication-Results: {HOSTNAME.upper()};\r\n"
        "\tdkim=pass header.d=bank.example\r\n"
        f'Authentication-Results: (comment) "{HOSTNAME}" 1; spf=pass\r\n'
        "Authentication-Results: other.example; spf=fail\r\n"
    )
    msg = message("alice@example.org", extra_headers=forged)
    v = await verify(make_config(dns_addr), msg, "alice@example.org")
    assert v.message is not None
    assert HOSTNAME.encode() not in v.message
    assert b"bank.example" not in v.message
    assert b"Authentication-Results: other.example; spf=fail\r\n" in v.message
    assert v.message.endswith(b"\r\n\r\nHi there.\r\n")
    assert results(v)["dmarc"] == ["pass"]


async def test_unserved_domain_dns_failure_defers(dns_addr: Addr) -> None:
    # nsd REFUSES names outside its zones: the lookups fail, they do not say "no record".
    v = await verify(make_config(dns_addr), message("a@elsewhere.test"), "a@elsewhere.test")
    assert v.disposition is Disposition.TEMPFAIL
    assert v.reply is not None
    assert (v.reply.code, v.reply.enhanced) == (451, "4.4.3")


async def test_dns_server_stopped_defers(nsd_server: NsdFactory, keys: Keys) -> None:
    addr = nsd_server(build_zones(*keys))
    cfg = make_config(addr)
    nsd_server.last.stop()
    msg = sign(message("alice@example.org"), keys[0], "example.org")
    v = await verify(cfg, msg, "alice@example.org")
    assert v.disposition is Disposition.TEMPFAIL
    assert v.reply is not None
    assert str(v.reply).startswith("451 4.4.3 ")


async def test_authenticated_submission_is_not_checked(dns_addr: Addr) -> None:
    v = await verify(
        make_config(dns_addr),
        message("a@elsewhere.test"),
        "a@elsewhere.test",
        authenticated_as="user@rcpt.example",
    )
    assert v == Verdict()


async def test_disabled_by_config(dns_addr: Addr) -> None:
    v = await verify(
        make_config(dns_addr, verify_inbound=False), message("a@elsewhere.test"), "a@elsewhere.test"
    )
    assert v == Verdict()


async def test_signature_count_is_bounded(dns_addr: Addr, keys: Keys) -> None:
    msg = message("alice@example.org")
    for _ in range(8):
        msg = sign(msg, keys[0], "example.org")
    v = await verify(make_config(dns_addr), msg, "alice@example.org")
    assert results(v)["dkim"] == ["pass"] * 5  # MAX_SIGNATURES
    assert results(v)["dmarc"] == ["pass"]


@pytest.mark.parametrize(
    ("msg", "mail_from", "ip", "dkim", "dmarc_result"),
    [
        pytest.param(
            b"DKIM-Signature: v=1; garbage\r\nFrom: a@example.org\r\n\r\nx\r\n",
            "a@example.org",
            "127.0.0.2",
            ["neutral"],
            "pass",
            id="malformed-sig",
        ),
        pytest.param(
            b"no header at all\r\n", "a@example.org", "127.0.0.2", ["none"], "none", id="no-from"
        ),
        pytest.param(
            b"From: =?utf-8?q?J=C3=B6rg?= <j@b\xc3\xbccher.example>\r\n\r\nx\r\n",
            "j@example.org",
            "127.0.0.2",
            ["none"],
            None,
            id="utf8-from",
        ),
        pytest.param(
            message("a@nopolicy.example"),
            "no-domain",
            "127.0.0.2",
            ["none"],
            "none",
            id="mail-from-without-domain",
        ),
        pytest.param(
            message("a@nopolicy.example"),
            "a@example.org",
            "::1",
            ["none"],
            "none",
            id="ipv6-client",
        ),
        pytest.param(b"\r\n\r\n", "", "127.0.0.2", ["none"], "none", id="empty"),
    ],
)
async def test_odd_input_gets_a_verdict_not_an_exception(
    dns_addr: Addr, msg: bytes, mail_from: str, ip: str, dkim: list[str], dmarc_result: str | None
) -> None:
    v = await verify(make_config(dns_addr), msg, mail_from, ip=ip, helo="example.org")
    if dmarc_result is None:  # a From domain nsd does not serve: the lookup fails -> defer
        assert v.disposition is Disposition.TEMPFAIL
        return
    assert v.disposition is Disposition.DELIVER
    got = results(v)
    assert got["dkim"] == dkim
    assert got["dmarc"] == [dmarc_result]


async def test_silent_dns_server_times_out_and_defers(keys: Keys) -> None:
    # A resolver address that receives queries and never answers: every lookup runs into
    # dns.timeout_s, which must end in 451 4.4.3, not in a verdict.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        cfg = config_from_dict(
            {
                "server": {"hostname": HOSTNAME, "domains": ["rcpt.example"]},
                "dns": {"resolver": f"127.0.0.1:{silent.getsockname()[1]}", "timeout_s": 0.3},
            }
        )
        msg = sign(message("alice@example.org"), keys[0], "example.org")
        v = await verify(cfg, msg, "alice@example.org")
    assert v.disposition is Disposition.TEMPFAIL
    assert v.reply is not None
    assert (v.reply.code, v.reply.enhanced) == (451, "4.4.3")
