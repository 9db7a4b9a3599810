"""COMPRESS=DEFLATE (RFC 4978) over real sockets: raw DEFLATE both ways with zlib, after LOGIN,
after STARTTLS, pipelined right behind the command, during IDLE, and against bad input."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from mailstack.imap.compress import Deflate
from mailstack.imap.framing import RemoteProtocolError

from tests.imap.rawclient import RawClient
from tests.support.imapserver import (
    HOSTNAME,
    PASSWORD,
    USER,
    ImapDeployment,
    ImapServerThread,
    make_deployment,
    running_server,
)


class DeflateClient:
    """A RawClient's socket after COMPRESS: commands deflated, responses inflated."""

    def __init__(self, client: RawClient) -> None:
        self.client = client
        self.out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflate = zlib.decompressobj(-15)
        self.buf = b""
        self.n = 0

    def send(self, data: bytes) -> None:
        self.client.sock.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.client.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; partial {self.buf!r}")
            self.buf += self.inflate.decompress(chunk)
        end = self.buf.index(b"\r\n") + 2
        line, self.buf = self.buf[:end], self.buf[end:]
        return line

    def command(self, text: str) -> list[bytes]:
        self.n += 1
        tag = b"z%d" % self.n
        self.send(tag + b" " + text.encode() + b"\r\n")
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines


@pytest.fixture
def dep(tmp_path: Path) -> ImapDeployment:
    return make_deployment(tmp_path / "state")


@pytest.fixture
def server(dep: ImapDeployment) -> Iterator[ImapServerThread]:
    with running_server(dep) as server:
        yield server


def logged_in(server: ImapServerThread) -> RawClient:
    client = RawClient("127.0.0.1", server.imap_port)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    return client


def compressed(client: RawClient) -> DeflateClient:
    assert client.tagged("COMPRESS DEFLATE").startswith(b"OK")
    return DeflateClient(client)


def test_capability_before_and_after_login(server: ImapServerThread) -> None:
    with RawClient("127.0.0.1", server.imap_port) as client:
        assert b"COMPRESS" not in client.greeting
        assert b"COMPRESS" not in client.command("CAPABILITY")[0]
        assert client.tagged("COMPRESS DEFLATE").startswith(b"BAD")  # not authenticated
        login = client.tagged(f'LOGIN {USER} "{PASSWORD}"')
        assert b" COMPRESS=DEFLATE" in login
        assert b" COMPRESS=DEFLATE" in client.command("CAPABILITY")[0]


def test_commands_and_responses_are_deflated(server: ImapServerThread) -> None:
    with logged_in(server) as client:
        z = compressed(client)
        assert z.command("NOOP")[-1].startswith(b"z1 OK")
        lines = z.command("SELECT INBOX")
        assert b"* 0 EXISTS\r\n" in lines
        assert lines[-1].startswith(b"z2 OK [READ-WRITE]")
        assert z.command("COMPRESS DEFLATE")[-1].startswith(b"z3 NO [COMPRESSIONACTIVE]")
        assert z.command("LOGOUT")[0].startswith(b"* BYE")


def test_unknown_algorithm_is_bad(server: ImapServerThread) -> None:
    with logged_in(server) as client:
        assert client.tagged("COMPRESS GZIP").startswith(b"BAD")
        assert client.tagged("NOOP").startswith(b"OK")  # still uncompressed


def test_commands_pipelined_behind_compress(server: ImapServerThread) -> None:
    with logged_in(server) as client:
        z = DeflateClient(client)
        pipelined = z.out.compress(b'p1 NOOP\r\np2 LIST "" INBOX\r\n')
        client.send(b"c COMPRESS DEFLATE\r\n" + pipelined + z.out.flush(zlib.Z_SYNC_FLUSH))
        assert client.line().startswith(b"c OK")  # the last uncompressed line
        z.buf, client.buf = z.inflate.decompress(client.buf), b""  # read with it
        assert z.line().startswith(b"p1 OK")
        assert z.line() == b'* LIST (\\HasNoChildren) "." INBOX\r\n'
        assert z.line().startswith(b"p2 OK")


def test_idle_wakes_through_compression(dep: ImapDeployment, server: ImapServerThread) -> None:
    with logged_in(server) as client:
        z = compressed(client)
        assert z.command("SELECT INBOX")[-1].startswith(b"z1 OK")
        z.send(b"i IDLE\r\n")
        assert z.line().startswith(b"+ ")
        dep.store.deliver([(USER, "INBOX")], b"Subject: hi\r\n\r\nbody\r\n")
        assert z.line() == b"* 1 EXISTS\r\n"
        z.send(b"DONE\r\n")
        rest = [z.line()]
        while not rest[-1].startswith(b"i "):
            rest.append(z.line())
        assert rest[-1].startswith(b"i OK")


def test_after_starttls(dep: ImapDeployment, server: ImapServerThread) -> None:
    sock = socket.create_connection(("127.0.0.1", server.imap_port), timeout=30)
    client = RawClient.__new__(RawClient)
    client.sock, client.buf, client.n = sock, b"", 0
    client.greeting = client.line()
    assert client.tagged("STARTTLS").startswith(b"OK")
    client.sock = dep.client_tls().wrap_socket(sock, server_hostname=HOSTNAME)
    assert isinstance(client.sock, ssl.SSLSocket)
    assert client.tagged(f'LOGIN {USER} "{PASSWORD}"').startswith(b"OK")
    z = compressed(client)
    assert z.command("STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 0)\r\n"
    client.close()


def test_garbage_instead_of_deflate_ends_the_connection(server: ImapServerThread) -> None:
    with logged_in(server) as client:
        compressed(client)
        client.send(b"\xff" * 64)  # not a valid DEFLATE block
        reply = zlib.decompressobj(-15).decompress(client.sock.recv(65536))
        assert reply.startswith(b"* BYE invalid compressed data")
        assert client.sock.recv(65536) == b""


def test_a_small_bomb_is_cut_at_the_line_limit(server: ImapServerThread) -> None:
    with logged_in(server) as client:
        z = compressed(client)
        bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
        data = bomb.compress(b"a" * (200 * 1024 * 1024)) + bomb.flush(zlib.Z_SYNC_FLUSH)
        assert len(data) < 300_000  # 200 MB of command line in a few hundred KB
        client.send(data)
        assert z.line() == b"* BYE command line too long\r\n"


def test_inflation_is_bounded_and_resumes() -> None:
    deflate = Deflate(max_output_bytes=1000)
    client = zlib.compressobj(6, zlib.DEFLATED, -15)
    data = client.compress(b"x" * 5000) + client.flush(zlib.Z_SYNC_FLUSH)
    pieces = [deflate.decompress(data)]
    while deflate.has_more:
        pieces.append(deflate.more())
    assert all(len(p) <= 1000 for p in pieces)
    assert b"".join(pieces) == b"x" * 5000
    with pytest.raises(RemoteProtocolError):
        Deflate().decompress(b"\xff\xff")


@pytest.mark.external
@pytest.mark.parametrize("starttls", [False, True], ids=["plain", "starttls"])
def test_mutt_appends_over_deflate(
    dep: ImapDeployment, server: ImapServerThread, tmp_path: Path, starttls: bool
) -> None:
    """mutt with `imap_deflate` (Debian's neomutt is built without zlib) sends a message and
    saves its Fcc copy to our Sent folder: LOGIN, COMPRESS, then the APPEND, deflated."""
    mutt = shutil.which("mutt")
    if mutt is None:
        pytest.fail("mutt is not installed (Debian: mutt); scripts/test installs it")
    home = tmp_path / "home"
    home.mkdir()
    folder = f"imap://alice%40example.com@127.0.0.1:{server.imap_port}/Sent"
    (home / "muttrc").write_text(
        f'set imap_user="{USER}"\nset imap_pass="{PASSWORD}"\nset imap_deflate=yes\n'
        f"set ssl_starttls={'yes' if starttls else 'no'}\n"
        f"set ssl_force_tls={'yes' if starttls else 'no'}\n"
        f'set ssl_ca_certificates_file="{dep.paths.ca_cert}"\nset certificate_file=/dev/null\n'
        f'set sendmail="/bin/true"\nset copy=yes\nset record="{folder}"\nset from="{USER}"\n'
    )
    done = subprocess.run(
        [mutt, "-d", "2", "-n", "-F", str(home / "muttrc"), "-s", "deflated", "--", USER],
        input=b"sent through a compressed connection\n",
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "TERM": "dumb"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    debug = b"".join(p.read_bytes() for p in home.glob(".muttdebug*"))
    assert done.returncode == 0, done.stderr
    assert b"4< a0" in debug and b" OK DEFLATE active" in debug, debug
    assert (b"> a0000 STARTTLS" in debug) == starttls
    (info,) = dep.store.snapshot(USER, "Sent").messages
    body = dep.store.read_message(USER, "Sent", info.uid)
    assert b"Subject: deflated" in body
    assert b"sent through a compressed connection" in body
