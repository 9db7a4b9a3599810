"""SASL for SMTP AUTH (RFC 4954): the PLAIN (RFC 4616) and LOGIN mechanisms, sans-IO.

`SaslExchange(mechanism, initial_response)` says what to send next: `challenge` (base64 text
for a `334` reply, the client answers with one line that goes to `feed`) until `credentials`
is set. Every client mistake raises `SaslError` carrying the reply to send. The PLAIN message and
base64 rules are `mailstack.base.sasl`'s, shared with IMAP AUTHENTICATE; checking the password
is the caller's business (`mailstack.base.login`, the one login path).

Only these two mechanisms: both send the password itself, which is why submission offers
AUTH only inside TLS (RFC 4954 §4, RFC 8314). LOGIN is no RFC, but Outlook and older
clients still use it; its challenges are base64 of "Username:" and "Password:".
A password never appears in a repr, an exception or a log line.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from mailstack.smtp.replies import Reply

from mailstack.base import sasl

# As EHLO lists them. SCRAM-SHA-256 (RFC 7677) is smtp/submission.py's `_auth_scram` over
# mailstack/base/scram.py: its proof is checked inside the exchange, not by `SaslExchange`.
MECHANISMS = ("PLAIN", "LOGIN", "SCRAM-SHA-256")

CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")  # RFC 4954 §4: client sent "*"
BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the response (base64)")
MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
UNKNOWN_MECHANISM = Reply(
    504, "5.5.4", "Unrecognized authentication type: use PLAIN, LOGIN or SCRAM-SHA-256"
)
# RFC 4616 §2: we do not let one user act for another, so an authzid must be the user itself.
NO_PROXY = Reply(535, "5.7.8", "Authorization identity must be empty or the user itself")

_LOGIN_USERNAME = base64.b64encode(b"Username:").decode("ascii")
_LOGIN_PASSWORD = base64.b64encode(b"Password:").decode("ascii")


class SaslError(Exception):
    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str
    password: str = field(repr=False)


def decode_response(text: str) -> bytes:
    """One client response: base64, `=` for empty (RFC 4954 §4), `*` to cancel."""
    if text.strip() == "*":
        raise SaslError(CANCELLED)
    try:
        return sasl.decode_response(text)
    except sasl.SaslError:
        raise SaslError(BAD_BASE64) from None


def _text(raw: bytes, what: str) -> str:
    try:
        return sasl.utf8_part(raw, what)
    except sasl.SaslError:
        raise SaslError(MALFORMED) from None


def parse_plain(message: bytes) -> Credentials:
    """RFC 4616 §2: [authzid] NUL authcid NUL passwd (mailstack.base.sasl's rules)."""
    try:
        plain = sasl.parse_plain(message)
    except sasl.SaslProxyError:
        raise SaslError(NO_PROXY) from None
    except sasl.SaslError:
        raise SaslError(MALFORMED) from None
    return Credentials(plain.authcid, plain.password)


class SaslExchange:
    """One AUTH command's exchange. Raises SaslError for an unknown mechanism."""

    def __init__(self, mechanism: str, initial_response: str | None) -> None:
        self.mechanism = mechanism.upper()
        self.challenge: str | None = None
        self.credentials: Credentials | None = None
        self._username: str | None = None
        if self.mechanism == "PLAIN":
            if initial_response is None:
                self.challenge = ""  # "334 " and wait for the response
            else:
                self.credentials = parse_plain(decode_response(initial_response))
        elif self.mechanism == "LOGIN":
            if initial_response is None:
                self.challenge = _LOGIN_USERNAME
            else:
                self._take_username(decode_response(initial_response))
        else:
            raise SaslError(UNKNOWN_MECHANISM)

    def _take_username(self, raw: bytes) -> None:
        self._username = _text(raw, "user name")
        self.challenge = _LOGIN_PASSWORD

    def feed(self, line: str) -> None:
        """The client's answer to `challenge`."""
        if self.credentials is not None or self.challenge is None:
            raise RuntimeError("the exchange is over")
        raw = decode_response(line)
        if self.mechanism == "PLAIN":
            self.challenge = None
            self.credentials = parse_plain(raw)
        elif self._username is None:
            self._take_username(raw)
        else:
            password = _text(raw, "password")
            self.challenge = None
            self.credentials = Credentials(self._username, password)
