"""SMTP replies: `Reply(code, enhanced, text)` and the named replies mailstack sends.

Every 2xx/4xx/5xx reply carries an enhanced status code (RFC 2034, codes from RFC 3463), except
the greeting and the EHLO lines, which RFC 2034 §3 leaves unchanged. `enhance()` adds a default
code to a reply line that lacks one (replies aiosmtpd builds itself), so the client sees codes
on every reply whatever produced it. Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_REPLY_LINE = re.compile(r"^([245]\d\d)([ -])(.*)\Z", re.DOTALL)

# Default enhanced codes by basic reply code (RFC 3463 §3), used by `enhance`.
_DEFAULT_ENHANCED = {
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "251": "2.1.5",
    "252": "2.5.0",
    "421": "4.3.0",
    "450": "4.2.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "455": "4.5.4",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "521": "5.3.2",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.1.1",
    "551": "5.1.6",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.0.0",
    "555": "5.5.4",
}


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply. `str(reply)` is the wire form without CRLF (multi-line if needed)."""

    code: int
    enhanced: str
    text: str

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        lines = self.text.split("\n")
        out = [
            f"{self.code}{'-' if i < len(lines) - 1 else ' '}{self.enhanced} {line}".rstrip()
            for i, line in enumerate(lines)
        ]
        return "\r\n".join(out)

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


def enhance(line: str) -> str:
    """Add a default enhanced status code to one reply line that lacks one."""
    m = _REPLY_LINE.match(line)
    if m is None or _ENHANCED.match(m[3]):
        return line
    code = m[1]
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{m[2]}{enhanced} {m[3]}".rstrip()


# -- named replies (RFC 5321 §4.2.2 codes, RFC 3463 enhanced codes) ------------------------------

OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RCPT_OK = Reply(250, "2.1.5", "Recipient OK")
QUEUED = Reply(250, "2.0.0", "OK: message accepted for delivery")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
BYE = Reply(221, "2.0.0", "Bye")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")

# 4xx: try again later
SERVICE_UNAVAILABLE = Reply(421, "4.3.2", "Service not available, closing transmission channel")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_CONNECTIONS_FROM_IP = Reply(
    421, "4.7.0", "Too many connections from your address, try again later"
)
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Local error in processing, try again later")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
OVER_QUOTA = Reply(452, "4.2.2", "Mailbox full, try again later")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TEMPFAIL = Reply(451, "4.7.1", "Message deferred, try again later")

# 5xx: refused
COMMAND_UNRECOGNIZED = Reply(500, "5.5.2", "Command not recognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (RFC 5321 §4.5.3.1)")
NUL_IN_COMMAND = Reply(500, "5.5.2", "NUL character in command")
BARE_LF_IN_COMMAND = Reply(500, "5.5.2", "Bare <LF> in command: lines end with <CR><LF>")
NON_ASCII_COMMAND = Reply(500, "5.5.2", "Command is not ASCII")
SYNTAX_ERROR = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO or EHLO first")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL command first")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT command first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
AUTH_NOT_HERE = Reply(502, "5.5.1", "AUTH is not offered on this port: use submission")
PARAM_NOT_IMPLEMENTED = Reply(555, "5.5.4", "Parameter not recognized or not implemented")
BAD_ADDRESS = Reply(553, "5.1.3", "Malformed address")
BAD_SENDER_DOMAIN = Reply(553, "5.1.7", "Malformed sender address")
INVALID_HELO = Reply(501, "5.5.2", "Invalid HELO/EHLO name: use a FQDN or an address literal")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
RELAY_DENIED = Reply(554, "5.7.1", "Relaying denied")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TOO_MANY_HOPS = Reply(554, "5.4.6", "Too many Received headers: mail loop detected")
BARE_NEWLINE = Reply(554, "5.5.2", "Bare <CR> or <LF> in message: lines end with <CR><LF>")
DATA_LINE_TOO_LONG = Reply(
    500, "5.5.2", "Message line longer than 1000 octets (RFC 5321 §4.5.3.1.6)"
)
REJECTED = Reply(550, "5.7.1", "Message rejected")
SMTPUTF8_REQUIRED = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")


def blocklisted(ip: str, zone: str) -> Reply:
    return Reply(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {zone}")


def chunk_received(size: int) -> Reply:
    return Reply(250, "2.0.0", f"{size} octets received")
