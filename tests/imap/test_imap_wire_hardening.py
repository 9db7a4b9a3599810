"""Regression tests for the outside review's IMAP findings (issue 10 items 5 and 8), over real
loopback sockets against a real deployment (tests/support/imapserver.py)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    PASSWORD,
    USER,
    ImapDeployment,
    make_deployment,
    running_server,
)

# -- item 8: CREATE "&AAA-", STORE of more than 26 keywords --------------------------------------


def test_mailbox_names_that_decode_to_control_characters_are_refused(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "s")
    with running_server(dep) as server, RawClient("127.0.0.1", server.imap_port) as c:
        assert c.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert c.tagged('CREATE "&AAA-"').startswith(b"NO [CANNOT]")
        assert c.tagged('CREATE "Lists.&AAA-x"').startswith(b"NO [CANNOT]")
        assert c.tagged("CREATE Box").startswith(b"OK")
        assert c.tagged('RENAME Box "&AB8-"').startswith(b"NO [CANNOT]")
        listed = b"".join(c.command('LIST "" "*"'))
    assert b"&AAA-" not in listed and b"&AB8-" not in listed
    on_disk = sorted(p.name for p in dep.paths.maildir(USER).iterdir() if p.name.startswith("."))
    assert ".Box" in on_disk
    assert not [n for n in on_disk if "&A" in n]


def test_more_than_26_keywords_is_no_limit_and_nothing_changes(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "s")
    dep.store.deliver([(USER, "INBOX")], b"Subject: k\r\n\r\nbody\r\n")
    keywords = [f"kw{i}" for i in range(27)]
    with running_server(dep) as server, RawClient("127.0.0.1", server.imap_port) as c:
        assert c.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
        assert c.tagged("SELECT INBOX").startswith(b"OK")
        refused = c.tagged(f"STORE 1 +FLAGS ({' '.join(keywords)})")
        assert refused.startswith(b"NO [LIMIT]"), refused
        flags = b"".join(c.command("FETCH 1 FLAGS"))
        assert b"kw0" not in flags
        assert c.tagged(f"STORE 1 +FLAGS ({' '.join(keywords[:26])})").startswith(b"OK")
        assert c.tagged("STORE 1 +FLAGS (kw26)").startswith(b"NO [LIMIT]")
        flags = b"".join(c.command("FETCH 1 FLAGS"))
    assert all(k.encode() in flags for k in keywords[:26]) and b"kw26" not in flags
    assert (dep.paths.maildir(USER) / "dovecot-keywords").read_text().count("\n") == 26


# -- item 5: deadlines ---------------------------------------------------------------------------


def trickle(
    sock: socket.socket, data: bytes, every_s: float, give_up_s: float
) -> tuple[bytes, float]:
    """Send `data` a byte every `every_s` s; what the server said first, and when."""
    start = time.monotonic()
    sock.settimeout(every_s)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            return sock.recv(4096), time.monotonic() - start
        except TimeoutError:
            if time.monotonic() - start > give_up_s:
                break
        except OSError:
            break
    return b"still open", time.monotonic() - start


@pytest.mark.timeout(60)
def test_a_byte_every_3_s_does_not_keep_a_login_or_a_command_open(tmp_path: Path) -> None:
    dep = make_deployment(tmp_path / "s", login_timeout_s=5, idle_timeout_s=5)
    with running_server(dep) as server:
        with RawClient("127.0.0.1", server.imap_port) as pre:
            said, after_s = trickle(pre.sock, f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode(), 3, 15)
        assert said.startswith(b"* BYE"), said
        assert 4 < after_s < 8, after_s
        with RawClient("127.0.0.1", server.imap_port) as post:
            assert post.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
            said, after_s = trickle(post.sock, b"b NOOP" + b" x" * 20 + b"\r\n", 3, 15)
        assert said.startswith(b"* BYE"), said
        assert 4 < after_s < 8, after_s


# -- item 5: connection limits -------------------------------------------------------------------


def connect_from(port: int, source: str) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def test_idle_connections_from_ten_addresses_do_not_lock_out_a_real_client(
    tmp_path: Path,
) -> None:
    dep: ImapDeployment = make_deployment(
        tmp_path / "s",
        max_connections=60,
        max_connections_per_network=30,
        reserved_for_authenticated=10,
    )
    socks: list[socket.socket] = []
    try:
        with running_server(dep) as server:
            greetings = []
            for i in range(1, 11):  # 10 addresses x 20 idle connections, one /24
                for _ in range(20):
                    socks.append(connect_from(server.imap_port, f"127.0.0.{i}"))
                    greetings.append(socks[-1].recv(4096)[:18])
            assert greetings.count(b"* BYE [UNAVAILABLE]"[:18]) == 170
            assert len([g for g in greetings if g.startswith(b"* OK")]) == 30
            # A real client from another network logs in...
            real = connect_from(server.imap_port, "127.0.1.1")
            socks.append(real)
            assert real.recv(4096).startswith(b"* OK")
            real.sendall(f'a LOGIN {USER} "{PASSWORD}"\r\n'.encode())
            assert b"a OK" in real.recv(4096)
            # ...and the global cap holds for the rest: 60, of which 10 only for logged-in
            # sessions, so 50 not logged in (30 + 20 more from a third network).
            more = []
            for i in range(1, 26):
                socks.append(connect_from(server.imap_port, f"127.0.2.{i}"))
                more.append(socks[-1].recv(4096))
            assert sum(m.startswith(b"* OK") for m in more) == 20
            assert more[-1] == b"* BYE [UNAVAILABLE] too many connections\r\n"
    finally:
        for s in socks:
            s.close()


def test_v4_mapped_addresses_share_their_v4_address_count() -> None:
    from mailstack.base.connections import ConnectionLimiter, Refusal

    limiter = ConnectionLimiter(max_total=20, max_per_ip=2, max_per_network=3)
    assert not isinstance(limiter.admit("192.0.2.1"), Refusal)
    assert not isinstance(limiter.admit("::ffff:192.0.2.1"), Refusal)
    assert limiter.admit("::ffff:192.0.2.1") is Refusal.ADDRESS
    assert not isinstance(limiter.admit("192.0.2.200"), Refusal)
    assert limiter.admit("::ffff:192.0.2.7") is Refusal.NETWORK
    v6 = [limiter.admit(f"2001:db8::{i}:1") for i in range(3)]
    assert limiter.admit("2001:db8::ffff:3") is Refusal.NETWORK  # same /64
    assert not isinstance(limiter.admit("2001:db8:0:1::1"), Refusal)  # the next /64
    for ticket in v6:
        assert not isinstance(ticket, Refusal)
        limiter.release(ticket)
    assert not isinstance(limiter.admit("2001:db8::ffff:3"), Refusal)
