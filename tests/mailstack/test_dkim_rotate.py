"""`mailstack dkim rotate|status` as an admin runs them (real subprocesses), with the DNS they
check served by a real nsd: signing switches to the new selector only once the resolver shows
the new key, the old one is kept for the grace period the command states, and what the queue
signs afterwards verifies (dkimpy) against the published key.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import dkim
import dns.resolver
import pytest
from mailstack.delivery import dkim as delivery_dkim

from mailstack.base.config import load_config
from mailstack.base.paths import StatePaths
from mailstack.dnsrecords import txt_rdata
from mailstack.keys import dkim_public_record, make_dkim_key
from tests.conftest import run_cli
from tests.support.nsd import NsdServer

pytestmark = pytest.mark.external

MESSAGE = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: hi\r\n"
    b"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <r1@example.com>\r\n\r\nhello\r\n"
)


def zone(keys: dict[str, str]) -> str:
    """example.com with a DKIM record per selector ({selector: TXT value})."""
    lines = [f"{s}._domainkey IN TXT {txt_rdata(v)}" for s, v in keys.items()]
    return "\n".join(
        [
            "$ORIGIN example.com.",
            "$TTL 60",
            "@ IN SOA ns hostmaster 1 3600 600 86400 60",
            "@ IN NS ns",
            "ns IN A 127.0.0.1",
            *lines,
            "",
        ]
    )


class Dns:
    """One nsd at a time; `publish` restarts it with another zone (a DNS host's update)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server: NsdServer | None = None
        self.port = 0
        self.generation = 0

    def publish(self, keys: dict[str, str]) -> str:
        self.stop()
        self.generation += 1
        self.server = NsdServer(self.directory / str(self.generation), {"example.com": zone(keys)})
        self.port = self.server.start()[1]
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def txt(self, name: bytes, timeout: float = 5) -> bytes:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = ["127.0.0.1"], self.port
        answer = resolver.resolve(name.decode().rstrip("."), "TXT")
        return b"".join(answer[0].strings)


@pytest.fixture
def nsd(tmp_path: Path) -> Iterator[Dns]:
    server = Dns(tmp_path / "nsd")
    try:
        yield server
    finally:
        server.stop()


def record_of(root: Path, selector: str) -> str:
    return dkim_public_record(StatePaths(root).dkim_key(selector, "example.com").read_bytes())


def status(root: Path) -> dict[str, object]:
    result = run_cli(root, "dkim", "status", "--json")
    assert result.returncode == 0, result.stderr
    (entry,) = json.loads(result.stdout)
    assert entry["domain"] == "example.com"
    return entry  # type: ignore[no-any-return]


def sign(root: Path) -> bytes:
    paths = StatePaths(root)
    config = load_config(paths.config)
    return delivery_dkim.sign(
        MESSAGE, paths=paths, selector=config.dkim.selector, hosted_domains={"example.com"}
    )


def selector_of(signed: bytes) -> str:
    m = re.search(rb"\bs=([\w-]+);", signed)
    assert m is not None
    return m[1].decode()


def test_rotation_switches_only_after_publication(deployment_dir: Path, nsd: Dns) -> None:
    root = deployment_dir
    assert status(root) == {
        "domain": "example.com",
        "signing": "test",
        "pending": None,
        "previous": None,
        "retire_after": None,
    }
    resolver = nsd.publish({"test": record_of(root, "test")})

    # 1. The new key is made and its record printed; not published yet: nothing switches.
    first = run_cli(
        root, "dkim", "rotate", "example.com", "--selector", "next", "--resolver", resolver
    )
    assert first.returncode == 1, first.stdout + first.stderr
    key = StatePaths(root).dkim_key("next", "example.com")
    assert key.stat().st_mode & 0o777 == 0o600
    assert "Created" in first.stdout and "test still signs" in first.stdout
    assert (
        f"next._domainkey.example.com. IN TXT {txt_rdata(record_of(root, 'next'))}" in first.stdout
    )
    assert first.stderr.startswith(
        "error: next._domainkey.example.com shows no DKIM record yet; test keeps signing"
    )
    assert (
        "hint: publish the record above, then run `mailstack dkim rotate example.com`"
        in first.stderr
    )
    assert status(root)["signing"] == "test"
    assert status(root)["pending"] == "next"
    assert selector_of(sign(root)) == "test"

    # 2. A record with another key under the new name (a typo, a stale copy): still no switch.
    other = dkim_public_record(make_dkim_key())
    resolver = nsd.publish({"test": record_of(root, "test"), "next": other})
    wrong = run_cli(root, "dkim", "rotate", "example.com", "--resolver", resolver)
    assert wrong.returncode == 1
    assert "shows a different key yet" in wrong.stderr
    assert "in progress" in wrong.stdout
    assert selector_of(sign(root)) == "test"
    busy = run_cli(
        root, "dkim", "rotate", "example.com", "--selector", "else", "--resolver", resolver
    )
    assert (
        busy.returncode == 1 and "rotation of example.com to 'next' is in progress" in busy.stderr
    )

    # 3. Published: the switch, and the grace period stated.
    resolver = nsd.publish({"test": record_of(root, "test"), "next": record_of(root, "next")})
    done = run_cli(root, "dkim", "rotate", "example.com", "--resolver", resolver)
    assert done.returncode == 0, done.stderr
    assert "selector next now signs mail for example.com" in done.stdout
    assert "Keep test._domainkey.example.com published until " in done.stdout
    assert "(7 days: mail signed with it is still being verified)" in done.stdout
    after = status(root)
    assert (after["signing"], after["pending"], after["previous"]) == ("next", None, "test")
    table = run_cli(root, "dkim", "status")
    assert "next" in table.stdout and "test (" in table.stdout

    signed = sign(root)
    assert selector_of(signed) == "next"
    assert dkim.verify(signed, dnsfunc=nsd.txt)

    # `mailstack dns` lists both keys while the old one is kept.
    listed = run_cli(root, "dns", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    names = {r["name"] for r in json.loads(listed.stdout) if "_domainkey" in r["name"]}
    assert names == {"next._domainkey.example.com.", "test._domainkey.example.com."}


def test_rotate_refuses_bad_input(deployment_dir: Path) -> None:
    root = deployment_dir
    unknown = run_cli(root, "dkim", "rotate", "example.org")
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines() == [
        "error: example.org is not hosted here",
        "hint: `mailstack domain add example.org` first",
    ]
    bad = run_cli(root, "dkim", "rotate", "example.com", "--selector", "a.b")
    assert bad.returncode == 2 and "is not a DNS label" in bad.stderr
    same = run_cli(root, "dkim", "rotate", "example.com", "--selector", "test")
    assert same.returncode == 1 and "already in use" in same.stderr
    assert not (StatePaths(root).dkim_dir / "selectors.json").exists()
