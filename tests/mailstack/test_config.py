from __future__ import annotations

from pathlib import Path

import pytest

from mailstack.base.config import (
    Config,
    config_from_dict,
    field_docs,
    load_config,
    parse_hostport,
    parse_size,
)
from mailstack.base.errors import ConfigError

MINIMAL = {"server": {"hostname": "mail.example.com", "domains": ["example.com"]}}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailstack.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_interface_defaults() -> None:
    cfg = config_from_dict(MINIMAL)
    assert cfg.listen.smtp == ["0.0.0.0:25"]
    assert cfg.listen.imaps == ["0.0.0.0:993"]
    assert cfg.smtp.max_message_size == 52428800
    assert cfg.accounts.default_quota == "10G"
    assert cfg.default_quota_bytes == 10 * 1024**3
    assert cfg.imap.allow_plaintext_auth is False
    assert cfg.dns.resolver == ""
    assert cfg.outbound.relay == ""
    assert cfg.outbound.mx_port == 25


def test_idna_domains_are_stored_ascii() -> None:
    cfg = config_from_dict({"server": {"hostname": "mail.bücher.de", "domains": ["Bücher.DE"]}})
    assert cfg.server.domains == ["xn--bcher-kva.de"]
    assert cfg.server.hostname == "mail.xn--bcher-kva.de"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\nbogus = 1\n',
            r"mailstack.toml:4: server.bogus: unknown key",
            id="unknown",
        ),
        pytest.param(
            '[server]\nhostname = "localhost"\ndomains = ["example.com"]\n',
            r":2: server.hostname: 'localhost' is not a fully-qualified",
            id="not-fqdn",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = []\n',
            r":3: server.domains: at least one",
            id="no-domains",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            '[listen]\nsmtp = ["0.0.0.0"]\n',
            r":5: listen.smtp\[0\]: expected "
            r'"host:port"',
            id="bad-hostport",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            '[listen]\nimap = ["127.0.0.1:70000"]\n',
            r"listen.imap\[0\]: "
            r"port 70000 is out of range",
            id="port-range",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            '[smtp]\nmax_message_size = "big"\n',
            r":5: smtp.max_message_size: "
            r"expected integer, got str",
            id="wrong-type",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            "[imap]\nallow_plaintext_auth = 1\n",
            r"imap.allow_plaintext_auth: "
            "expected boolean",
            id="int-for-bool",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            '[accounts]\ndefault_quota = "lots"\n',
            r"accounts.default_quota: "
            "expected a size",
            id="bad-size",
        ),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\n'
            '[dns]\nresolver = "dns.example"\n',
            r"dns.resolver: resolver must be an IP",
            id="resolver-name",
        ),
        pytest.param(
            '[server]\ndomains = ["example.com"]\n',
            r"server.hostname: required key "
            "is missing",
            id="missing",
        ),
        pytest.param("[server\n", r"invalid TOML: .*line 1", id="toml-syntax"),
        pytest.param(
            '[server]\nhostname = "mail.example.com"\ndomains = ["example.com"]\nipv4 = "::1"\n',
            r"server.ipv4: '::1' is not an IPv4",
            id="ipv4",
        ),
    ],
)
def test_invalid_configs_name_the_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:25", ("0.0.0.0", 25)),
        ("[::1]:993", ("::1", 993)),
        ("localhost:2525", ("localhost", 2525)),
    ],
)
def test_parse_hostport(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value) == expected


@pytest.mark.parametrize("value", ["", ":25", "host", "[zz]:1", "a:b", "1.2.3.4:99999"])
def test_parse_hostport_rejects(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message is checked elsewhere
        parse_hostport(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("10G", 10 * 1024**3), ("512M", 512 * 1024**2), ("0", 0), (123, 123), ("2k", 2048)],
)
def test_parse_size(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


def test_every_field_is_documented_in_the_config_template(deployment_dir: Path) -> None:
    text = (deployment_dir / "mailstack.toml").read_text()
    docs = field_docs(Config)
    # INTERFACE.md's keys are among them: the loop below cannot pass over an empty model.
    assert {
        "server.hostname",
        "server.domains",
        "listen.smtp",
        "listen.submission",
        "listen.submissions",
        "listen.imap",
        "listen.imaps",
        "smtp.max_message_size",
        "accounts.default_quota",
        "imap.allow_plaintext_auth",
        "dns.resolver",
        "outbound.relay",
        "outbound.mx_port",
    } <= docs.keys()
    for key, doc in docs.items():
        assert doc in text, key
    # and what init wrote loads back
    assert load_config(deployment_dir / "mailstack.toml").server.hostname == "mail.example.com"
