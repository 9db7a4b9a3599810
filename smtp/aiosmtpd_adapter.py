"""Every use of aiosmtpd's private names, in one place, behind public-named methods.

aiosmtpd's `SMTP` gives us the asyncio protocol, STARTTLS plumbing and the simple commands
(RSET, NOOP, VRFY, HELP, QUIT). We replace its command loop (see `smtp.session`), which means
reaching into names aiosmtpd does not promise to keep. Each is listed in `CONTRACT` with why we
need it; `contract_problems()` checks the installed aiosmtpd still has them with the expected
shape (tests/smtp/test_aiosmtpd_contract.py runs it), and pyproject.toml caps aiosmtpd to the
tested minor version. Subclasses use only the public names defined here.

Beware: aiosmtpd's `__init__` evaluates every attribute of the instance (`inspect.getmembers`,
looking for `auth_*`): no properties on this class or its subclasses, methods only.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session
from mailstack.smtp.arguments import split_path

# aiosmtpd logs every command at INFO on this logger; we log one line per transaction.
AIOSMTPD_LOGGER = "mail.log"


@dataclass(frozen=True, slots=True)
class PrivateName:
    name: str
    kind: str  # "method" (on the class), "coroutine" (async method), "attribute" (instance)
    parameters: tuple[str, ...]  # a method's parameters after self
    why: str


CONTRACT = (
    # -- methods of aiosmtpd we override: aiosmtpd calls them, so a rename would silently
    #    bypass our code --
    PrivateName(
        "_handle_client",
        "coroutine",
        (),
        "the per-connection task connection_made starts: our command loop (`serve`)",
    ),
    PrivateName(
        "_create_session",
        "method",
        (),
        "the Session factory, called at connect and after STARTTLS (`new_session`)",
    ),
    PrivateName(
        "_create_envelope",
        "method",
        (),
        "the Envelope factory, called at connect and by RSET (`new_envelope`)",
    ),
    PrivateName(
        "_timeout_cb",
        "method",
        (),
        "the timer callback: we say 421 before closing (`on_timeout`)",
    ),
    PrivateName(
        "_getaddr",
        "method",
        ("arg",),
        "aiosmtpd's VRFY parses its argument with it; ours never raises on garbage",
    ),
    # -- methods of aiosmtpd we call --
    PrivateName(
        "_reset_timeout",
        "method",
        ("duration",),
        "(re)arms the one timer that ends the connection (`arm_deadline`)",
    ),
    PrivateName(
        "_cb_client_connected",
        "method",
        ("reader", "writer"),
        "sets `_reader`/`_writer` below; checked so their source is still there",
    ),
    # -- instance attributes we read --
    PrivateName("_reader", "attribute", (), "the StreamReader we read commands from"),
    PrivateName("_writer", "attribute", (), "the StreamWriter for replies not sent by push()"),
    PrivateName(
        "_smtp_methods", "attribute", (), "verb -> bound smtp_* method, built once per session"
    ),
    PrivateName(
        "_tls_protocol", "attribute", (), "not None once STARTTLS completed (`is_tls_started`)"
    ),
    PrivateName("__ident__", "attribute", (), "the greeting's software name (`ident`)"),
)


def contract_problems(cls: type = SMTP, instance: object | None = None) -> list[str]:
    """What of `CONTRACT` the installed aiosmtpd no longer has, one message each.

    Methods are checked on `cls`; attributes on `instance` (a connected session) if given.
    """
    import aiosmtpd

    version = ".".join(str(aiosmtpd.__version__).split(".")[:2])
    problems = []
    for entry in CONTRACT:
        if entry.kind == "attribute":
            if instance is not None and entry.name not in vars(instance):
                problems.append(f"aiosmtpd {version} renamed {entry.name} (needed: {entry.why})")
            continue
        member = inspect.getattr_static(cls, entry.name, None)
        if member is None:
            problems.append(f"aiosmtpd {version} renamed {entry.name} (needed: {entry.why})")
            continue
        if not callable(member):
            problems.append(f"aiosmtpd {version}: {entry.name} is no longer a method")
            continue
        if (entry.kind == "coroutine") != inspect.iscoroutinefunction(member):
            problems.append(f"aiosmtpd {version}: {entry.name} changed between sync and async")
        params = tuple(inspect.signature(member).parameters)[1:]
        if params != entry.parameters:
            problems.append(
                f"aiosmtpd {version}: {entry.name}{params} takes other parameters than "
                f"{entry.parameters}"
            )
    return problems


def quiet_aiosmtpd_log() -> None:
    """aiosmtpd logs every command at INFO: keep its logger at WARNING unless set otherwise."""
    logger = logging.getLogger(AIOSMTPD_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


class SmtpAdapter(SMTP):
    """aiosmtpd's SMTP seen through public names: subclasses override `serve`,
    `new_session`, `new_envelope`, `on_timeout`, and call the helpers below."""

    # -- hooks for subclasses ------------------------------------------------------------------
    async def serve(self) -> None:
        """The whole session, from the greeting to the close."""
        raise NotImplementedError

    def new_session(self) -> Session:
        return Session(self.loop)

    def new_envelope(self) -> Envelope:
        return Envelope()

    def on_timeout(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- aiosmtpd's private names, mapped onto the hooks -----------------------------------------
    async def _handle_client(self) -> None:
        await self.serve()

    def _create_session(self) -> Session:
        return self.new_session()

    def _create_envelope(self) -> Envelope:
        return self.new_envelope()

    def _timeout_cb(self) -> None:
        self.on_timeout()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        return split_path(arg, local_part_limit=self.local_part_limit)

    # -- helpers for subclasses ------------------------------------------------------------------
    def arm_deadline(self, seconds: float) -> None:
        """End the connection (`on_timeout`) `seconds` from now, unless re-armed before."""
        # aiosmtpd takes 0 (or None) as "its default timeout": never pass it.
        self._reset_timeout(max(seconds, 0.001))

    async def read_some(self, limit: int) -> bytes:
        """Whatever the client sent next, up to `limit` bytes; b"" at EOF."""
        data: bytes = await self._reader.read(limit)
        return data

    def write_now(self, data: bytes) -> None:
        """Queue bytes on the connection without the enhanced-code rewriting of push()."""
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def command(self, verb: str) -> Callable[[str | None], Awaitable[Any]] | None:
        """The smtp_<VERB> method, or None."""
        method: Callable[[str | None], Awaitable[Any]] | None = self._smtp_methods.get(verb)
        return method

    def is_tls_started(self) -> bool:
        """STARTTLS completed on this connection."""
        return self._tls_protocol is not None

    def ident(self) -> str:
        return str(self.__ident__)
