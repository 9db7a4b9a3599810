"""SCRAM-SHA-256 (RFC 7677, RFC 5802) for IMAP AUTHENTICATE and SMTP AUTH alike: the keys we
store per account and one server exchange. Pure: no I/O (the caller fetches keys and runs the
throttle, mailstack/base/login.py's `ScramLogin`).

The messages are parsed and checked by `scramp` (a maintained SCRAM implementation); this
module adapts it: bytes in and out, and every client mistake becomes `ScramSyntaxError`,
`ScramProxyError` or `ScramBindingError`, nothing else (tests/base/test_scram.py checks that
with hypothesis on any input, tests/fuzz/fuzz_scram.py with atheris).

What we store (RFC 5802 §3, in RFC 5803's text form): salt, iteration count, StoredKey and
ServerKey, never the password nor anything that logs in by itself: StoredKey only verifies a
proof, and a stolen ServerKey only lets someone pose as this server to a client.

Channel binding (RFC 5802 §6): we offer SCRAM-SHA-256 only, not -PLUS. A client that demands
binding ("p=...") is refused; "y" (the client could bind but believes we cannot) is right,
as we cannot. Why not -PLUS: TLS 1.3 clients bind with tls-exporter (RFC 9266), which needs
the TLS exporter Python's ssl module does not offer; -PLUS with tls-server-end-point alone
would invite those clients to pick it and fail. An authzid ("a=") must be absent or name the
user itself: one user never acts for another, as with PLAIN.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import scramp
from scramp.utils import ServerError

MECHANISM = "SCRAM-SHA-256"
ITERATIONS = 4096  # RFC 7677 §4: at least 4096; each client login costs that many HMACs
SALT_BYTES = 16  # RFC 5802 §5.1 sets no length; 128 bits as PBKDF2 advice (NIST SP 800-132)
MAX_MESSAGE_BYTES = 4096  # our bound: real first/final messages are under 300 octets

_MECH = scramp.ScramMechanism(MECHANISM)
_BINDING_ERRORS = {
    ServerError.CHANNEL_BINDING_NOT_SUPPORTED,
    ServerError.UNSUPPORTED_CHANNEL_BINDING_TYPE,
}


class ScramError(Exception):
    """A SCRAM message we refuse; `str()` says why."""


class ScramSyntaxError(ScramError):
    """Not a well-formed SCRAM message (RFC 5802 §7), or not UTF-8."""


class ScramProxyError(ScramError):
    """An authzid in the gs2 header: acting for another user is not allowed."""


class ScramBindingError(ScramError):
    """The client demands channel binding, which we do not offer (no -PLUS mechanism)."""


@dataclass(frozen=True, slots=True)
class ScramKeys:
    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_text(self) -> str:
        """RFC 5803 §3: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64)."""
        b64 = _b64
        return (
            f"{MECHANISM}${self.iterations}:{b64(self.salt)}$"
            f"{b64(self.stored_key)}:{b64(self.server_key)}"
        )

    @classmethod
    def from_text(cls, text: str) -> ScramKeys:
        """The inverse of to_text(); ValueError for anything else."""
        try:
            mech, head, keys = text.split("$")
            iterations, salt = head.split(":")
            stored, server = keys.split(":")
            if mech != MECHANISM or int(iterations) < ITERATIONS:
                raise ValueError(text[:20])
            return cls(_unb64(salt), int(iterations), _unb64(stored), _unb64(server))
        except (ValueError, binascii.Error):
            raise ValueError("not SCRAM-SHA-256 keys in RFC 5803 form") from None


def make_keys(password: str, *, salt: bytes | None = None) -> ScramKeys:
    """Derive what we store from a new password (SASLprep'd as RFC 5802 §2.2 asks) with a fresh
    random salt (`salt` only for RFC 7677's test vector). A password SASLprep refuses (control
    characters, unassigned code points) gets no keys: ValueError."""
    try:
        salt, stored_key, server_key, iterations = _MECH.make_auth_info(
            password,
            iteration_count=ITERATIONS,
            salt=secrets.token_bytes(SALT_BYTES) if salt is None else salt,
        )
    except scramp.ScramException:
        raise ValueError("the password cannot be used with SCRAM (SASLprep)") from None
    return ScramKeys(salt, iterations, stored_key, server_key)


def decoy_keys(account: str, secret: bytes) -> ScramKeys:
    """Keys for an account without any (unknown, disabled, or its password set before SCRAM):
    the exchange runs as for a real one and fails at the proof, and the same name always gets
    the same salt, so neither the answer nor its salt tells whether the account exists
    (RFC 5802 §5.1's advice)."""

    def derive(label: bytes) -> bytes:
        return hmac.digest(secret, label + b"\0" + account.encode("utf-8", "replace"), "sha256")

    return ScramKeys(derive(b"salt")[:SALT_BYTES], ITERATIONS, derive(b"stored"), derive(b"server"))


class ScramExchange:
    """One server side of RFC 5802 §5: `ScramExchange(client_first)` parses it (`username` is
    what the client typed), `server_first(keys)` answers it, `finish(client_final)` checks the
    proof: the server-final message on success, None for a wrong proof or any other failure
    of the final step (the caller counts it as a failed login).

    scramp parses the first message and makes ours; the proof is checked here (§3's few
    lines of HMAC), because scramp refuses any authzid, and real clients send one naming the
    user itself (mutt and neomutt through GNU SASL: `n,a=alice@...,n=alice@...`). As with
    PLAIN (mailstack/base/sasl.py), an authzid must be absent or the user itself."""

    def __init__(self, client_first: bytes) -> None:
        text = _text(client_first)
        # RFC 5802 §7: gs2-header = gs2-cbind-flag "," [ authzid ] ","
        flag, comma, rest = text.partition(",")
        authzid, comma2, bare = rest.partition(",")
        if not (comma and comma2):
            raise ScramSyntaxError("malformed SCRAM message: no GS2 header")
        if authzid and not authzid.startswith("a="):
            raise ScramSyntaxError("malformed SCRAM message: bad authorization identity")
        names: list[str] = []

        def capture(username: str) -> tuple[bytes, bytes, bytes, int]:
            names.append(username)
            return _PARSE_ONLY.salt, b"", b"", ITERATIONS  # thrown away with this server

        self._without_authzid = f"{flag},,{bare}"  # what scramp parses
        self._run(_MECH.make_server(capture).set_client_first, self._without_authzid)
        self.username = names[0]
        if authzid and _saslname(authzid[2:]).casefold() != self.username.casefold():
            raise ScramProxyError("acting as another user is not allowed")
        self._gs2_header = text[: len(flag) + len(authzid) + 2]  # echoed in the final's c=
        self._bare = bare
        self.server_final: bytes | None = None
        self._pending: tuple[ScramKeys, str] | None = None  # (keys, our server-first)

    def server_first(self, keys: ScramKeys, *, nonce: str | None = None) -> bytes:
        """`nonce`: our half of the nonce, random unless a test replays RFC 7677 §3."""
        keys_tuple = (keys.salt, keys.stored_key, keys.server_key, keys.iterations)
        server = _MECH.make_server(lambda _user: keys_tuple, s_nonce=nonce)
        self._run(server.set_client_first, self._without_authzid)
        first = str(self._run(server.get_server_first))
        self._pending = (keys, first)
        return first.encode("ascii")

    def finish(self, client_final: bytes) -> bytes | None:
        if self._pending is None:
            raise RuntimeError("server_first() comes first")
        (keys, server_first), self._pending = self._pending, None
        try:
            text = _text(client_final)
        except ScramError:
            return None
        # RFC 5802 §7: client-final-message = channel-binding "," nonce ["," extensions]
        # "," proof; the proof is last, and no attribute value holds a comma.
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        fields = without_proof.split(",")
        nonce = server_first.split(",", 1)[0]  # "r=<client nonce><ours>"
        if not sep or len(fields) < 2 or not fields[0].startswith("c=") or fields[1] != nonce:
            return None
        try:
            binding = _unb64(fields[0][2:])
            proof = _unb64(proof_b64)
        except (ValueError, binascii.Error):
            return None
        # §6: without channel binding, c= is the GS2 header exactly as the client sent it.
        if not hmac.compare_digest(binding, self._gs2_header.encode("utf-8")):
            return None
        # §3: ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage); H(ClientKey) must
        # be StoredKey. ServerSignature = HMAC(ServerKey, AuthMessage) proves us to the client.
        auth_message = f"{self._bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(keys.stored_key, auth_message, "sha256")
        if len(proof) != len(signature):
            return None
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), keys.stored_key):
            return None
        server_signature = hmac.digest(keys.server_key, auth_message, "sha256")
        self.server_final = b"v=" + base64.b64encode(server_signature)
        return self.server_final

    @staticmethod
    def _run(step: Callable[..., Any], *args: str) -> Any:
        try:
            return step(*args)
        except scramp.ScramException as exc:
            if exc.server_error in _BINDING_ERRORS:
                raise ScramBindingError("channel binding is not offered") from None
            raise ScramSyntaxError(f"malformed SCRAM message: {exc.args[0]}") from None
        except (ValueError, TypeError, UnicodeError) as exc:  # scramp's own slips, never ours
            raise ScramSyntaxError(f"malformed SCRAM message: {exc}") from None


def _saslname(text: str) -> str:
    """RFC 5802 §5.1: "=2C" is a comma, "=3D" an equals sign; any other "=" is malformed."""
    if re.search(r"=(?!2C|3D)", text):
        raise ScramSyntaxError("malformed SCRAM message: bad escape in a name")
    return text.replace("=2C", ",").replace("=3D", "=")


_PARSE_ONLY = ScramKeys(b"\0" * SALT_BYTES, ITERATIONS, b"", b"")


def _text(message: bytes) -> str:
    if len(message) > MAX_MESSAGE_BYTES:
        raise ScramSyntaxError(f"SCRAM message longer than {MAX_MESSAGE_BYTES} octets")
    try:
        return message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramSyntaxError("SCRAM message is not UTF-8") from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)
