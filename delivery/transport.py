"""What TLS one outbound SMTP session must achieve, and the contexts that achieve it.

    TlsRequirement(policy, required, context, check)

`delivery.remote` runs every session against one requirement:
- opportunistic (RFC 7435): STARTTLS when offered, certificate not checked, plain text when
  the handshake fails (the default for mail to the MX);
- verified (a route relay, an MTA-STS policy in enforce mode, RFC 8461 §4.2): STARTTLS must be
  offered and the certificate must chain to a trusted CA (the system's plus `[outbound]
  ca_file`) and name the host; otherwise the host is skipped, never a plain-text retry;
- DANE (RFC 7672): STARTTLS required, the certificate checked by `check` against the TLSA
  records (names and CAs do not matter for DANE-EE, RFC 7672 §3.1.1).

No sockets here: contexts are built, not used. `[outbound] ca_file` is read again when it
changes (its mtime, size or inode, one stat() per context asked for), so a CA added there is
trusted by the next connection without a restart or SIGHUP; a changed file that does not load
(half written, not PEM) keeps the CAs last loaded from it, with a warning.
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

# the peer's certificate chain (DER, leaf first) -> None when acceptable, else the reason
ChainCheck = Callable[[list[bytes]], str | None]
PolicyKind = Literal["none", "route", "sts", "sts-testing", "dane"]

log = logging.getLogger(__name__)


@functools.cache
def opportunistic_context() -> ssl.SSLContext:
    # Encrypt against passive eavesdroppers, verify nothing: falling back to plain text on a
    # verification failure would be no safer (RFC 7435 §1).
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def verified_context(ca_file: str = "") -> ssl.SSLContext:
    """System CAs plus `ca_file` as it is now, host name checked (RFC 8461 §4.2, RFC 6125)."""
    if not ca_file:
        return _verified_context("", None)
    stamp = _stamp(ca_file)
    try:
        ctx = _verified_context(ca_file, stamp)
    except (OSError, ssl.SSLError) as exc:
        with _lock:
            last = _last_good.get(ca_file)
        if last is None:
            raise  # never loaded: as before this file could change (config checked it)
        log.warning("outbound ca_file %s does not load, keeping its last CAs: %s", ca_file, exc)
        return last
    with _lock:
        _last_good[ca_file] = ctx
    return ctx


_lock = threading.Lock()  # delivery attempts run in threads
_last_good: dict[str, ssl.SSLContext] = {}


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone: loading it raises, and the last good context answers
    return (st.st_mtime_ns, st.st_size, st.st_ino)


@functools.lru_cache(maxsize=16)  # a few paths, one stamp each that matters
def _verified_context(ca_file: str, stamp: tuple[int, int, int] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if ca_file:
        ctx.load_verify_locations(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8461 §4.2: TLS 1.2 or later
    return ctx


@dataclass(frozen=True, slots=True)
class TlsRequirement:
    policy: PolicyKind
    required: bool  # True: no STARTTLS or a failed handshake/check skips the host
    context: ssl.SSLContext
    check: ChainCheck | None = None  # DANE: after the handshake, on the peer's chain


OPPORTUNISTIC = TlsRequirement("none", required=False, context=opportunistic_context())


def verified(policy: PolicyKind, ca_file: str) -> TlsRequirement:
    return TlsRequirement(policy, required=True, context=verified_context(ca_file))


def peer_chain(sock: ssl.SSLSocket) -> list[bytes]:
    """The chain the server sent, DER, leaf first (not verified: DANE decides)."""
    public = getattr(sock, "get_unverified_chain", None)  # Python 3.13+
    if public is not None:
        return [bytes(c) for c in public()]
    # Python 3.10-3.12 have it on the C-level object only; same certificates.
    obj = sock._sslobj  # type: ignore[attr-defined]
    certs = obj.get_unverified_chain() if obj is not None else None
    if not certs:
        leaf = sock.getpeercert(binary_form=True)
        return [leaf] if leaf else []
    return [c.public_bytes(ssl._ssl.ENCODING_DER) for c in certs]  # type: ignore[attr-defined]
