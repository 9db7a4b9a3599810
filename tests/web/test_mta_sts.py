"""Our MTA-STS policy: served by a real `serve`, its id in the TXT record derived from it
(changing with it), and `check` fetching it as a sender would, with DNS from a real nsd."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from tests.checks.conftest import check, only, set_resolver, start_nsd, zones
from tests.conftest import Cli
from tests.support.serve import ServeProcess
from tests.web.conftest import https_request

POLICY = "version: STSv1\r\nmode: {mode}\r\nmx: mail.example.com\r\nmax_age: {age}\r\n"


def set_web(root: Path, key: str, value: str) -> None:
    config = root / "mailstack.toml"
    text, n = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", config.read_text())
    assert n == 1, key
    config.write_text(text)


def txt_of(cli: Cli) -> str:
    result = cli("dns", "--format", "json")
    assert result.returncode == 0, result.stderr
    (record,) = [r for r in json.loads(result.stdout) if r["name"] == "_mta-sts.example.com."]
    assert record["type"] == "TXT"
    return str(record["value"])


def test_policy_served_on_the_mta_sts_name_only(web_serve: ServeProcess, web_dir: Path) -> None:
    ca, port = web_dir / "tls/ca.pem", web_serve.port("https")
    reply = https_request(port, "/.well-known/mta-sts.txt", host="mta-sts.example.com", ca=ca)
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text == POLICY.format(mode="testing", age=604800)
    for host in ("mail.example.com", "example.com"):
        assert https_request(port, "/.well-known/mta-sts.txt", host=host, ca=ca).status == 404


def test_the_txt_id_follows_the_policy(web_dir: Path, cli: Cli) -> None:
    first = txt_of(cli)
    served = POLICY.format(mode="testing", age=604800).encode()
    assert first == f"v=STSv1; id={hashlib.sha256(served).hexdigest()[:20]}"
    assert re.fullmatch(r"v=STSv1; id=[A-Za-z0-9]{1,32}", first)  # RFC 8461 §3.1
    set_web(web_dir, "mta_sts_mode", '"enforce"')
    second = txt_of(cli)
    assert second != first
    set_web(web_dir, "mta_sts_max_age", "86400")
    assert txt_of(cli) not in (first, second)
    set_web(web_dir, "mta_sts_mode", '"testing"')
    set_web(web_dir, "mta_sts_max_age", "604800")
    assert txt_of(cli) == first  # the same policy, the same id: no needless refetches
    set_web(web_dir, "mta_sts_mode", '"strict"')
    bad = cli("dns")
    assert bad.returncode == 1 and "web.mta_sts_mode" in bad.stderr


def test_init_publishes_the_web_records(web_dir: Path) -> None:
    zone = (web_dir / "dns/example.com.zone").read_text()
    for line in (
        r"autoconfig\s.*CNAME\s+mail\.example\.com\.",
        r"autodiscover\s.*CNAME\s+mail\.example\.com\.",
        r"mta-sts\s.*CNAME\s+mail\.example\.com\.",
        r"_autodiscover\._tcp\s.*SRV\s+0 1 \d+ mail\.example\.com\.",
        r'_mta-sts\s.*TXT\s+"v=STSv1; id=[0-9a-f]{20}"',
    ):
        assert re.search(line, zone), line


def test_check_fetches_the_policy_and_compares_the_txt(web_dir: Path, tmp_path: Path) -> None:
    nsd = start_nsd(tmp_path / "nsd", zones(web_dir))
    try:
        set_resolver(web_dir, f"127.0.0.1:{nsd.port}")
        with ServeProcess(web_dir):
            proc, data = check(web_dir, "--only", "web")
            finding = only(data, "web.mta_sts")
            assert finding["status"] == "pass", finding
            assert "id " in finding["message"] and proc.returncode == 0
            assert only(data, "web.autoconfig")["status"] == "pass"
            assert only(data, "web.acme")["status"] == "skip"
        # The policy changes, the published TXT does not: check says which record to publish.
        set_web(web_dir, "mta_sts_mode", '"enforce"')
        with ServeProcess(web_dir):
            proc, data = check(web_dir, "--only", "web")
        finding = only(data, "web.mta_sts")
        assert proc.returncode == 1
        assert finding["status"] == "fail", finding
        assert "it changed" in finding["message"]
        assert "_mta-sts.example.com." in finding["fix"] and "v=STSv1; id=" in finding["fix"]
        # The TXT matches again, but nothing listens on https: the fetch fails, with a hint.
        set_web(web_dir, "mta_sts_mode", '"testing"')
        proc, data = check(web_dir, "--only", "web")
        finding = only(data, "web.mta_sts")
        assert finding["status"] == "fail", finding
        assert (
            "cannot fetch https://mta-sts.example.com/.well-known/mta-sts.txt"
            in (finding["message"])
        )
        assert only(data, "web.autoconfig")["status"] == "warn"
    finally:
        nsd.stop()
