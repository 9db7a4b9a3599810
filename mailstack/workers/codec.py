"""The packets between `serve` and its SMTP worker processes, as values. Pure: no I/O.

One packet per SOCK_SEQPACKET message (so no framing is needed), ASCII keyword first:

    main -> worker   C <token>              hand-off; the connection's descriptor rides along
    worker -> main   R                      ready: hand me connections
                     D <token>              that connection is closed: its limit slot is free
                     E <user> NUL <folder>  a delivery is durable: wake IMAP IDLE here
                     Q                      mail was queued for outbound delivery: run the queue

`decode` answers None for anything else, so a malformed packet is logged and dropped by the
side that got it, never raised.
"""

from __future__ import annotations

from dataclasses import dataclass

PACKET_MAX = 4096  # the largest packet either side reads; an E packet must fit (paths are short)


@dataclass(frozen=True, slots=True)
class HandOff:
    token: int


@dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclass(frozen=True, slots=True)
class Closed:
    token: int


@dataclass(frozen=True, slots=True)
class Delivered:
    user: str
    folder: str


@dataclass(frozen=True, slots=True)
class Queued:
    pass


Packet = HandOff | Ready | Closed | Delivered | Queued


def encode(packet: Packet) -> bytes:
    match packet:
        case HandOff(token):
            return b"C %d" % token
        case Ready():
            return b"R"
        case Closed(token):
            return b"D %d" % token
        case Delivered(user, folder):
            return b"E " + f"{user}\0{folder}".encode("utf-8", "surrogateescape")
        case Queued():
            return b"Q"


def _token(rest: bytes) -> int | None:
    return int(rest) if rest.isdigit() and len(rest) <= 19 else None


def decode(data: bytes) -> Packet | None:
    kind, sep, rest = data.partition(b" ")
    if kind in (b"R", b"Q") and not sep:
        return Ready() if kind == b"R" else Queued()
    if kind in (b"C", b"D") and (token := _token(rest)) is not None:
        return HandOff(token) if kind == b"C" else Closed(token)
    if kind == b"E":
        user, nul, folder = rest.decode("utf-8", "surrogateescape").partition("\0")
        if nul and user:
            return Delivered(user, folder)
    return None
