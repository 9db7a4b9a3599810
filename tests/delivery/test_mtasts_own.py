"""Our outbound side and our own published MTA-STS policy agree (RFC 8461): a real `serve`
publishes the policy over HTTPS (the web side), its zones are served by a real nsd, and
mailstack's own outbound delivery, as another domain's sender, fetches that policy and
delivers to the deployment under it, verified. `check` reads the served policy with the same
parser and warns when an MX of the domain is outside its mx patterns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from mailstack.delivery import remote
from mailstack.delivery.security import OutboundSecurity

from mailstack.base.config import config_from_dict, load_config
from tests.checks.conftest import FORWARD, check, only, set_resolver, start_nsd, zones
from tests.conftest import Cli
from tests.support.serve import ServeProcess
from tests.web.conftest import web_dir

pytestmark = pytest.mark.external
_fixtures = (web_dir,)  # used by name

MESSAGE = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: sts\r\n\r\nhello\r\n"


def _port(root: Path, service: str) -> int:
    return load_config(root / "mailstack.toml").listeners(service)[0][1]


def test_our_sender_delivers_to_our_policy_in_enforce_mode(
    web_dir: Path, cli: Cli, tmp_path: Path
) -> None:
    config = web_dir / "mailstack.toml"
    text, n = re.subn(r"(?m)^mta_sts_mode = .*$", 'mta_sts_mode = "enforce"', config.read_text())
    assert n == 1
    config.write_text(text)
    added = cli("user", "add", "bob@example.com", "--password-stdin", input="pw-12345678\n")
    assert added.returncode == 0, added.stderr
    # The zone init wrote carries the id of the testing-mode policy: publish enforce's.
    records = json.loads(cli("dns", "--format", "json").stdout)
    (txt,) = [r["value"] for r in records if r["name"] == f"_mta-sts.{FORWARD}."]
    zone_texts = zones(web_dir)
    zone_texts[FORWARD], n = re.subn(r'"v=STSv1; id=\w+"', f'"{txt}"', zone_texts[FORWARD])
    assert n == 1
    nsd = start_nsd(tmp_path / "nsd", zone_texts)
    try:
        set_resolver(web_dir, f"127.0.0.1:{nsd.port}")
        with ServeProcess(web_dir):
            # Another deployment's outbound side (its names inside the zone nsd serves, so the
            # receiving serve's SPF lookups get answers).
            sender = config_from_dict(
                {
                    "server": {"hostname": "relay.example.com", "domains": ["sender.test"]},
                    "dns": {"resolver": f"127.0.0.1:{nsd.port}", "timeout_s": 5.0},
                    "outbound": {
                        "mx_port": _port(web_dir, "smtp"),
                        "mta_sts_port": _port(web_dir, "https"),
                        "ca_file": str(web_dir / "tls/ca.pem"),
                    },
                }
            )
            security = OutboundSecurity(None)
            (result,) = remote.deliver(
                sender,
                FORWARD,
                "alice@example.com",
                ["bob@example.com"],
                MESSAGE,
                security=security,
            )
            assert result.kind == "delivered", result.reply
            cached = security.sts.cached(FORWARD)
            assert cached is not None
            assert (cached.policy.mode, cached.policy.mx) == ("enforce", ("mail.example.com",))
            (row,) = security.reports.rows(
                *security.reports.finished_days(security.clock() + 86400)[0]
            )
            assert (row[0], row[2], row[4]) == ("sts", "mail.example.com", "")  # verified TLS
    finally:
        nsd.stop()


def test_check_warns_when_an_mx_is_outside_our_policy(web_dir: Path, tmp_path: Path) -> None:
    # A second MX (say, an old backup) that the policy (mx: mail.example.com) does not name:
    # a sender enforcing it would skip that host; check says so.
    zone_texts = zones(web_dir)
    zone_texts[FORWARD] += "@ 3600 IN MX 20 backup.example.com.\nbackup 3600 IN A 127.0.0.1\n"
    nsd = start_nsd(tmp_path / "nsd", zone_texts)
    try:
        set_resolver(web_dir, f"127.0.0.1:{nsd.port}")
        with ServeProcess(web_dir):
            _, data = check(web_dir, "--only", "web")
    finally:
        nsd.stop()
    finding = only(data, "web.mta_sts")
    assert finding["status"] == "warn", finding  # the default mode is testing: a warning
    assert (
        "MX backup.example.com is not in the policy's mx (mail.example.com)" in finding["message"]
    )
    assert finding["fix"] == "point every MX record of example.com at mail.example.com."
