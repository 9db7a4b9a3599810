"""The strace trace reader (tests/support/strace.py) on hand-written traces."""

from __future__ import annotations

import pytest

from tests.support.strace import (
    EXITED,
    Call,
    first_sync,
    parse,
    placed_files,
    reply_to,
    unescape,
)

SOCK = "9<TCP:[127.0.0.1:25->127.0.0.1:40000]>"
OTHER = "9<TCP:[127.0.0.1:25->127.0.0.1:40001]>"
D = "/s/mail/alice"
TMP, NEW = f"{D}/tmp/1.M1P1.h,S=5", f"{D}/new/1.M1P1.h,S=5"

# One message delivered by a worker thread (201) while the loop thread (200) serves the socket.
GOOD = f"""\
200 recvfrom({SOCK}, "DATA\\r\\n", 262144, 0, NULL, NULL) = 6
200 sendto({SOCK}, "354 go ahead\\r\\n", 14, 0, NULL, 0) = 14
200 recvfrom({SOCK}, "Subject: x\\r\\n\\r\\nbody\\r\\n.\\r\\n", 262144, 0, NULL, NULL) = 22
201 openat(AT_FDCWD</s>, "{TMP}", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 13<{TMP}>
201 write(13<{TMP}>, "Subject: x\\n\\nbody\\n", 17) = 17
201 fsync(13<{TMP}> <unfinished ...>
200 recvfrom({OTHER}, "NOOP\\r\\n", 262144, 0, NULL, NULL) = 6
201 <... fsync resumed>) = 0
201 rename("{TMP}", "{NEW}") = 0
201 write(16<{D}/dovecot-uidlist>, "1 :1.M1P1.h,S=5\\n", 16) = 16
201 fsync(16<{D}/dovecot-uidlist>) = 0
201 fsync(14<{D}/new>) = 0
200 sendto({SOCK}, "250 2.0.0 OK\\r\\n", 15, 0, NULL, 0) = 15
200 +++ exited with 0 +++
"""


def test_complete_unfinished_and_resumed_lines() -> None:
    calls = parse(GOOD)
    assert [(c.pid, c.name) for c in calls] == [
        (200, "recvfrom"),
        (200, "sendto"),
        (200, "recvfrom"),
        (201, "openat"),
        (201, "write"),
        (201, "fsync"),
        (200, "recvfrom"),
        (201, "rename"),
        (201, "write"),
        (201, "fsync"),
        (201, "fsync"),
        (200, "sendto"),
        (200, EXITED),
    ]
    fsync = calls[5]
    assert (fsync.start, fsync.end, fsync.result, fsync.fd_path) == (5, 7, "0", TMP)
    assert calls[3].created == TMP
    assert calls[-1].result == "0"


@pytest.mark.parametrize(
    ("line", "fd_path", "peer_port", "strings", "ok"),
    [
        pytest.param(
            f'1 sendto({SOCK}, "250 ok\\r\\n", 8, 0, NULL, 0) = 8',
            "TCP:[127.0.0.1:25->127.0.0.1:40000]",
            40000,
            [b"250 ok\r\n"],
            True,
            id="tcp-socket",
        ),
        pytest.param(
            '1 sendto(7<TCPv6:[[::1]:993->[::1]:51234]>, "\\x17\\x03", 2, 0, NULL, 0) = 2',
            "TCPv6:[[::1]:993->[::1]:51234]",
            51234,
            [b"\x17\x03"],
            True,
            id="tcp6-hex-escapes",
        ),
        pytest.param(
            '1 write(3</a/b>, "\\0\\1\\377\\"\\\\", 5) = 5',
            "/a/b",
            None,
            [b'\x00\x01\xff"\\'],
            True,
            id="file-octal-escapes",
        ),
        pytest.param(
            '1 rename("/a/x", "/a/y") = -1 ENOENT (No such file or directory)',
            None,
            None,
            [b"/a/x", b"/a/y"],
            False,
            id="failed-rename",
        ),
        pytest.param(
            '1 sendto(4<UNIX:[1->2]>, "x"..., 300, 0, NULL, 0) = 300',
            "UNIX:[1->2]",
            None,
            [b"x"],
            True,
            id="unix-socket-truncated-buffer",
        ),
    ],
)
def test_call_fields(
    line: str, fd_path: str | None, peer_port: int | None, strings: list[bytes], ok: bool
) -> None:
    (call,) = parse(line)
    assert call.fd_path == fd_path
    assert call.peer_port == peer_port
    assert call.strings == strings
    assert call.ok is ok


def test_buffers_that_look_like_results_stay_arguments() -> None:
    trace = f"""\
3 sendto({SOCK}, "x) = 1 y", 8, 0, NULL, 0) = 8
4 recvfrom({SOCK},  <unfinished ...>
3 write(1</dev/null>, "", 0) = 0
4 <... recvfrom resumed>"a) = 2 b", 262144, 0, NULL, NULL) = 8
"""
    first, second, _write = parse(trace)  # ordered by where each call started
    assert (first.name, first.strings, first.result) == ("sendto", [b"x) = 1 y"], "8")
    assert (second.name, second.strings, second.result) == ("recvfrom", [b"a) = 2 b"], "8")
    assert second.fd_path == SOCK.split("<", 1)[1][:-1]


def test_unescape() -> None:
    assert unescape(r"a\r\n\t\"\\\x41\101\0") == b'a\r\n\t"\\AA\x00'


def test_a_call_that_never_returned_ends_after_the_last_line() -> None:
    calls = parse("5 fsync(3</x> <unfinished ...>\n5 +++ killed by SIGKILL +++\n")
    assert [(c.name, c.result, c.start, c.end) for c in calls] == [("fsync", "?", 0, 2)]
    assert not calls[0].ok


def test_placed_file_with_its_syncs_and_the_reply() -> None:
    calls = parse(GOOD)
    (placed,) = placed_files(calls, D)
    assert placed.final == NEW
    assert placed.created.created == TMP
    assert placed.file_sync is not None
    assert placed.file_sync.fd_path == TMP
    assert placed.dir_sync is not None
    assert placed.dir_sync.fd_path == f"{D}/new"
    uidlist = first_sync(calls, f"{D}/dovecot-uidlist", placed.rename)
    assert uidlist is not None
    reply = reply_to(calls, 40000, placed.created)
    assert reply is not None
    assert reply.strings == [b"250 2.0.0 OK\r\n"]
    assert max(placed.dir_sync.end, uidlist.end) < reply.start
    assert reply_to(calls, 40001, placed.created) is None  # that client's read came later


def _without(trace: str, needle: str) -> list[Call]:
    kept = [line for line in trace.splitlines() if needle not in line]
    assert len(kept) < len(trace.splitlines()), needle
    return parse("\n".join(kept))


def test_missing_syncs_are_none() -> None:
    (placed,) = placed_files(_without(GOOD, "fsync(13"), D)
    assert placed.file_sync is None  # the resumed half alone is no fsync of the tmp file
    (placed,) = placed_files(_without(GOOD, f"fsync(14<{D}/new>"), D)
    assert placed.dir_sync is None


def test_syncs_on_the_wrong_side_of_the_rename_do_not_count() -> None:
    lines = GOOD.splitlines()
    rename = next(i for i, line in enumerate(lines) if " rename(" in line)
    dir_sync = next(i for i, line in enumerate(lines) if f"fsync(14<{D}/new>" in line)
    # The directory synced before the rename: that does not make the rename durable.
    moved = [*lines[:rename], lines[dir_sync], *(x for x in lines[rename:] if x != lines[dir_sync])]
    (placed,) = placed_files(parse("\n".join(moved)), D)
    assert placed.dir_sync is None
    # The file synced after its rename (under its final name): not the tmp file's fsync.
    late = GOOD.replace(f"fsync(13<{TMP}> <unfinished", f"fsync(13<{NEW}> <unfinished")
    (placed,) = placed_files(parse(late), D)
    assert placed.file_sync is None


def test_an_early_reply_is_the_one_found() -> None:
    """A server that answers before the work: reply_to finds that answer, before the work."""
    lines = GOOD.splitlines()
    reply = lines[-2]
    early = [*lines[:3], reply, *lines[3:-2], lines[-1]]
    calls = parse("\n".join(early))
    (placed,) = placed_files(calls, D)
    found = reply_to(calls, 40000, placed.created)
    assert found is not None
    assert found.end < placed.created.start


def test_renames_without_a_created_tmp_file_are_not_placements() -> None:
    trace = f'7 rename("{D}/new/1.M1P1.h,S=5", "{D}/cur/1.M1P1.h,S=5:2,S") = 0\n'
    assert placed_files(parse(trace), D) == []
