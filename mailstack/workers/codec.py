"""The packets between `serve` and its SMTP worker processes, as values. Pure: no I/O.

One packet per SOCK_SEQPACKET message (so no framing is needed), ASCII keyword first:

    main -> worker   C <token> <service>    hand-off (smtp, submission or submissions); the
                                            connection's descriptor rides along
                     V <id> <kind> <b64 address> <b64 data>
                                            the answer to L, S or P (`Verdict`)
    worker -> main   R                      ready: hand me connections
                     D <token>              that connection is closed: its limit slot is free
                     U <token>              that submission connection logged in (it may use
                                            the slots reserved for logged-in sessions)
                     E <user> NUL <folder>  a delivery is durable: wake IMAP IDLE here
                     Q                      mail was queued for outbound delivery: run the queue
                     L <id> <b64 conn> <ip> <b64 name> <b64 password>
                                            check a login on the main process's one login path
                     S <id> <b64 conn> <ip> <b64 client-first>   a SCRAM login begins
                     P <id> <b64 client-final>                    its proof
                     X <id>                                       it was abandoned
                     K <id> <b64 selector> <b64 domain> <b64 digest>
                                            sign this SHA-256 digest with our DKIM key
                                            (answered by V: "signed" with the signature)

Logins are decided in the main process so that IMAP and submission share one throttle and
one auth cache (mailstack/base/login.py), whichever process serves the connection. DKIM's
RSA step is done there too: the main process has `cryptography` loaded anyway, a worker
would grow by about 10 MB for it. Fields a
client chose are base64, so no byte of theirs can split a packet.

`decode` answers None for anything else, so a malformed packet is logged and dropped by the
side that got it, never raised.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

PACKET_MAX = 4096  # the largest packet either side reads; an E packet must fit (paths are short)
SERVICES = ("smtp", "submission", "submissions")


@dataclass(frozen=True, slots=True)
class HandOff:
    token: int
    service: str = "smtp"


@dataclass(frozen=True, slots=True)
class LoggedIn:
    token: int


@dataclass(frozen=True, slots=True)
class LoginCheck:
    id: int
    conn: str
    ip: str
    name: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class ScramStart:
    id: int
    conn: str
    ip: str
    message: bytes


@dataclass(frozen=True, slots=True)
class ScramProof:
    id: int
    message: bytes


@dataclass(frozen=True, slots=True)
class ScramAbandon:
    id: int


@dataclass(frozen=True, slots=True)
class SignRequest:
    id: int
    selector: str
    domain: str
    digest: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    """`kind`: a login Outcome ("ok", "failed", "throttled", "busy"), "challenge" (`data` is
    the SCRAM server-first), or a refused SCRAM message ("proxy", "binding", "syntax")."""

    id: int
    kind: str
    address: str = ""
    data: bytes = b""


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


Packet = (
    HandOff
    | Ready
    | Closed
    | Delivered
    | Queued
    | LoggedIn
    | LoginCheck
    | ScramStart
    | ScramProof
    | ScramAbandon
    | SignRequest
    | Verdict
)


def _b64(data: bytes | str) -> bytes:
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    return base64.b64encode(raw) or b"="  # never an empty field


def _unb64(field: bytes) -> bytes:
    return b"" if field == b"=" else base64.b64decode(field, validate=True)


def encode(packet: Packet) -> bytes:
    match packet:
        case HandOff(token, service):
            return b"C %d %s" % (token, service.encode("ascii"))
        case LoggedIn(token):
            return b"U %d" % token
        case LoginCheck(id_, conn, ip, name, password):
            fields = (_b64(conn), ip.encode("ascii"), _b64(name), _b64(password))
            return b"L %d " % id_ + b" ".join(fields)
        case ScramStart(id_, conn, ip, message):
            return b"S %d " % id_ + b" ".join((_b64(conn), ip.encode("ascii"), _b64(message)))
        case ScramProof(id_, message):
            return b"P %d " % id_ + _b64(message)
        case ScramAbandon(id_):
            return b"X %d" % id_
        case SignRequest(id_, selector, domain, digest):
            return b"K %d " % id_ + b" ".join((_b64(selector), _b64(domain), _b64(digest)))
        case Verdict(id_, kind, address, data):
            return b"V %d %s %s %s" % (id_, kind.encode("ascii"), _b64(address), _b64(data))
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
    if kind in (b"D", b"U", b"X") and (token := _token(rest)) is not None:
        tokens: dict[bytes, type[Closed | LoggedIn | ScramAbandon]] = {
            b"D": Closed,
            b"U": LoggedIn,
            b"X": ScramAbandon,
        }
        return tokens[kind](token)
    if kind in (b"C", b"L", b"S", b"P", b"V", b"K"):
        try:
            return _decode_fields(kind, rest.split(b" "))
        except (ValueError, binascii.Error):
            return None
    if kind == b"E":
        user, nul, folder = rest.decode("utf-8", "surrogateescape").partition("\0")
        if nul and user:
            return Delivered(user, folder)
    return None


def _decode_fields(kind: bytes, fields: list[bytes]) -> Packet | None:
    """The packets with fields after the keyword; ValueError (or None) when malformed."""
    if (number := _token(fields[0])) is None:
        return None
    rest = fields[1:]
    if kind == b"C" and len(rest) == 1 and rest[0].decode("ascii") in SERVICES:
        return HandOff(number, rest[0].decode("ascii"))
    if kind == b"L" and len(rest) == 4:
        conn, ip, name, password = rest
        return LoginCheck(number, _text(conn), ip.decode("ascii"), _unb64(name), _unb64(password))
    if kind == b"S" and len(rest) == 3:
        conn, ip, message = rest
        return ScramStart(number, _text(conn), ip.decode("ascii"), _unb64(message))
    if kind == b"P" and len(rest) == 1:
        return ScramProof(number, _unb64(rest[0]))
    if kind == b"K" and len(rest) == 3:
        selector, domain, digest = rest
        return SignRequest(number, _text(selector), _text(domain), _unb64(digest))
    if kind == b"V" and len(rest) == 3:
        verdict, address, data = rest
        return Verdict(number, verdict.decode("ascii"), _text(address), _unb64(data))
    return None


def _text(field: bytes) -> str:
    return _unb64(field).decode("utf-8", "surrogateescape")
