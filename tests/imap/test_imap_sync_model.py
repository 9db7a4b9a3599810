"""The untagged updates a session sends keep a client's model exact (RFC 9051 §7.5).

A model client replays only what the server tells it (`* n EXPUNGE`, `* n EXISTS`,
`* n FETCH (... FLAGS ...)`) plus what a real client asks after EXISTS (`UID FETCH` of the
new messages). Random operations by a second session and by delivery change the folder; after
each NOOP the model must equal the store's own snapshot: same UIDs in the same order, same
flags. Sessions are driven directly (no socket) against a real Maildir.
"""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mailstack.imap.session import ConnectionLimits, Session

from tests.support.imapserver import PASSWORD, USER, ImapDeployment, make_deployment

MESSAGE = b"From: a@example.org\r\nSubject: model\r\n\r\nbody\r\n"
_FETCH = re.compile(rb"\* (\d+) FETCH \((.*)\)\r\n")
_folders = itertools.count()


class Client:
    """A session plus the client-side view of the selected folder built from responses."""

    def __init__(self, dep: ImapDeployment) -> None:
        self.session = Session(
            dep.context(),
            peer_ip="127.0.0.1",
            is_tls=False,
            conn_id="model",
            limits=ConnectionLimits(10),
        )
        self.uids: list[int | None] = []  # None: announced by EXISTS, UID not yet fetched
        self.flags: dict[int, frozenset[str]] = {}
        self.n = 0

    async def command(self, line: str) -> bytes:
        self.n += 1
        tag = f"m{self.n}"
        out: list[bytes] = []

        async def write(data: bytes) -> None:
            out.append(data)

        self.session.proto.receive_data(f"{tag} {line}\r\n".encode())
        while (event := self.session.proto.next_event()) is not None:
            await self.session.handle(event, write)
        data = b"".join(out)
        assert f"{tag} OK".encode() in data, data
        self.apply(data)
        return data

    def apply(self, data: bytes) -> None:
        for line in data.splitlines(keepends=True):
            if m := re.match(rb"\* (\d+) EXPUNGE\r\n", line):
                uid = self.uids.pop(int(m[1]) - 1)
                if uid is not None:
                    self.flags.pop(uid, None)
            elif m := re.match(rb"\* (\d+) EXISTS\r\n", line):
                self.uids.extend([None] * (int(m[1]) - len(self.uids)))
            elif m := _FETCH.match(line):
                seq, items = int(m[1]), m[2]
                uid_m = re.search(rb"UID (\d+)", items)
                if uid_m:
                    self.uids[seq - 1] = int(uid_m[1])
                flags_m = re.search(rb"FLAGS \(([^)]*)\)", items)
                uid = self.uids[seq - 1]
                if flags_m and uid is not None:
                    names = flags_m[1].decode().split()
                    self.flags[uid] = frozenset(f for f in names if f != "\\Recent")

    async def sync(self) -> None:
        await self.command("NOOP")
        if None in self.uids:  # what a real client does after EXISTS
            first = self.uids.index(None) + 1
            await self.command(f"FETCH {first}:* (UID FLAGS)")


def snapshot(dep: ImapDeployment, folder: str) -> tuple[list[int], dict[int, frozenset[str]]]:
    snap = dep.store.snapshot(USER, folder)
    return [m.uid for m in snap.messages], {m.uid: m.flags for m in snap.messages}


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("deliver"), st.integers(1, 3)),
        st.tuples(
            st.just("flag"), st.integers(1, 6), st.sampled_from(["\\Seen", "\\Flagged", "$X"])
        ),
        st.tuples(st.just("delete"), st.integers(1, 6)),
        st.tuples(st.just("delete-and-expunge-first"), st.integers(2, 4)),
        st.tuples(st.just("expunge"), st.just(0)),
        st.tuples(st.just("fetch-by-seq"), st.just(0)),
    ),
    max_size=12,
)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> ImapDeployment:
    return make_deployment(tmp_path_factory.mktemp("model") / "state")


@settings(
    max_examples=40,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(OPS)
def test_untagged_updates_keep_the_client_model_exact(
    deployment: ImapDeployment, ops: list[tuple[object, ...]]
) -> None:
    folder = f"Model{next(_folders)}"
    deployment.store.create_folder(USER, folder)

    async def scenario() -> None:
        watcher, actor = Client(deployment), Client(deployment)
        for client in (watcher, actor):
            await client.command(f'LOGIN {USER} "{PASSWORD}"')
            await client.command(f"SELECT {folder}")
        for op in ops:
            match op:
                case ("deliver", count):
                    for _ in range(int(str(count))):
                        deployment.store.deliver([(USER, folder)], MESSAGE)
                case ("flag", seq, flag):
                    await actor.sync()
                    if int(str(seq)) <= len(actor.uids):
                        await actor.command(f"STORE {seq} +FLAGS ({flag})")
                case ("delete", seq):
                    await actor.sync()
                    if int(str(seq)) <= len(actor.uids):
                        await actor.command(f"STORE {seq} +FLAGS.SILENT (\\Deleted)")
                case ("delete-and-expunge-first", count):
                    # Several adjacent expunges reported in one response.
                    await actor.sync()
                    if actor.uids:
                        last = min(int(str(count)), len(actor.uids))
                        await actor.command(f"STORE 1:{last} +FLAGS.SILENT (\\Deleted)")
                        await actor.command("EXPUNGE")
                case ("expunge", _):
                    await actor.command("EXPUNGE")
                case ("fetch-by-seq", _):
                    # A FETCH by number must not report expunges; the model stays valid.
                    if watcher.uids:
                        data = await watcher.command(f"FETCH 1:{len(watcher.uids)} FLAGS")
                        assert b"EXPUNGE" not in data
            await watcher.sync()
            uids, flags = snapshot(deployment, folder)
            assert watcher.uids == uids
            assert watcher.flags == flags
        for client in (watcher, actor):
            client.session.close()

    asyncio.run(scenario())
