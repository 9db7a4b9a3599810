"""`check`'s submission group against the real submission listeners of a running `serve`.

587 (STARTTLS, AUTH only after it) and 465 (implicit TLS) as `mailstack serve` runs them, in
every state a deployment can be in: up, disabled, down, serving an older certificate than the
one on disk. Only the server that offers AUTH in clear text is a stand-in (see there): no
configuration of ours produces it.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailstack.base.config import load_config
from mailstack.base.paths import StatePaths
from mailstack.checks import Status
from mailstack.checks.listeners import check_submission
from tests.checks.conftest import free_ports, make_deployment, set_listen
from tests.conftest import install_new_certificate
from tests.support.serve import ServeProcess

Found = dict[str, tuple[Status, str, str | None]]


def run(root: Path) -> Found:
    cfg = load_config(StatePaths(root).config)
    found = check_submission(cfg, StatePaths(root), 10.0)
    assert len({f.id for f in found}) == len(found), found  # one finding per id and listener
    return {f.id: (f.status, f.message, f.fix) for f in found}


def statuses(found: Found) -> dict[str, Status]:
    return {k: v[0] for k, v in found.items()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A deployment whose listeners have fixed free ports (`check` connects to the config's)."""
    root = tmp_path / "state"
    make_deployment(root)
    return root


def test_serve_passes_and_refuses_auth_before_tls(root: Path) -> None:
    with ServeProcess(root):
        found = run(root)
    assert statuses(found) == {
        "submission.starttls": Status.PASS,
        "submission.auth": Status.PASS,
        "submission.tls": Status.PASS,
    }
    # RFC 4954 §4: our listener answers AUTH before STARTTLS with 530 5.7.0.
    assert "AUTH before TLS is refused (530)" in found["submission.auth"][1]


def test_disabled_listeners_are_skipped(root: Path) -> None:
    set_listen(root, "submission", "[]")
    set_listen(root, "submissions", "[]")
    with ServeProcess(root):
        found = run(root)
    assert statuses(found) == {
        "submission.starttls": Status.SKIP,
        "submission.auth": Status.SKIP,
        "submission.tls": Status.SKIP,
    }
    assert found["submission.tls"][1] == "listen.submissions is empty"


def test_stopped_serve_fails_with_how_to_start_it(root: Path) -> None:
    found = run(root)  # nothing listens on the configured ports
    assert statuses(found) == {
        "submission.starttls": Status.FAIL,
        "submission.auth": Status.SKIP,
        "submission.tls": Status.FAIL,
    }
    _status, message, fix = found["submission.tls"]
    assert "cannot connect" in message
    assert fix is not None
    assert "mailstack serve" in fix


def test_certificate_renewed_without_reload_fails(root: Path) -> None:
    with ServeProcess(root):
        install_new_certificate(root)  # on disk now, but serve still presents the old one
        found = run(root)
    assert statuses(found) == {
        "submission.starttls": Status.FAIL,
        "submission.auth": Status.PASS,
        "submission.tls": Status.FAIL,
    }
    for id_ in ("submission.starttls", "submission.tls"):
        _status, message, fix = found[id_]
        assert "presents another certificate" in message
        assert fix is not None
        assert "kill -HUP" in fix


@contextlib.contextmanager
def auth_in_clear_text_server(root: Path) -> Iterator[int]:
    """A stand-in that offers AUTH before STARTTLS: our listener never does (aiosmtpd runs with
    auth_require_tls=True, which no setting changes), so no real configuration produces the
    misconfigured server this check exists to catch. One session, then it stops."""
    paths = StatePaths(root)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(paths.tls_cert, paths.tls_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)

    def session() -> None:
        conn, _ = listener.accept()
        conn.settimeout(30)
        stream = conn.makefile("rwb")
        stream.write(b"220 mail.example.com ESMTP\r\n")
        stream.flush()
        while line := stream.readline():
            verb = line.split()[0].upper() if line.split() else b""
            if verb == b"EHLO":
                stream.write(b"250-mail.example.com\r\n250-AUTH PLAIN\r\n250 STARTTLS\r\n")
            elif verb == b"STARTTLS":
                stream.write(b"220 2.0.0 go ahead\r\n")
                stream.flush()
                stream.close()
                conn = tls.wrap_socket(conn, server_side=True)
                stream = conn.makefile("rwb")
                continue
            elif verb == b"QUIT":
                stream.write(b"221 2.0.0 bye\r\n")
                stream.flush()
                break
            else:
                stream.write(b"502 5.5.1 not here\r\n")
            stream.flush()
        stream.close()
        conn.close()

    thread = threading.Thread(target=session, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        thread.join(30)
        listener.close()


def test_auth_offered_in_clear_text_fails(root: Path) -> None:
    (unused,) = free_ports(1)
    with auth_in_clear_text_server(root) as port:
        set_listen(root, "submission", f'["127.0.0.1:{port}"]')
        set_listen(root, "submissions", f'["127.0.0.1:{unused}"]')
        found = run(root)
    status, message, fix = found["submission.auth"]
    assert status is Status.FAIL
    assert message.endswith(
        "AUTH is offered before STARTTLS: passwords could cross the network in clear text"
    )
    assert fix == "offer AUTH only after STARTTLS (RFC 6409, RFC 8314)"
    assert found["submission.starttls"][0] is Status.PASS  # the same certificate as on disk
