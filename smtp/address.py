"""Mailbox addresses as SMTP carries them: `Address(local, domain)` with the domain in IDNA form.

RFC 5321 §4.1.2 `Mailbox = Local-part "@" ( Domain / address-literal )`; RFC 6531 §3.3 allows
UTF-8 in both parts when the transaction uses SMTPUTF8. Domains are compared in their
lower-case ASCII (A-label) form, as `mailstack.users` stores them. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from mailstack.smtp.arguments import is_address_literal, is_utf8

from mailstack.base.config import to_ascii_domain

# RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: local part 64 octets, domain 255 octets.
MAX_LOCAL_PART_BYTES = 64
MAX_DOMAIN_BYTES = 255


class AddressError(ValueError):
    """Not a usable mailbox address."""


@dataclass(frozen=True, slots=True)
class Address:
    local: str  # as given (case preserved: RFC 5321 §2.4 local parts are case-sensitive)
    domain: str  # lower-case A-label form, or an address literal "[192.0.2.1]"

    @classmethod
    def parse(cls, text: str) -> Address:
        """'Alice@Bücher.de' -> Address('Alice', 'xn--bcher-kva.de'). Raises AddressError."""
        local, at, domain = text.rpartition("@")
        if not at or not local or not domain:
            raise AddressError(f"{text!r} is not local@domain")
        if len(local.encode("utf-8", "surrogateescape")) > MAX_LOCAL_PART_BYTES:
            raise AddressError("local part longer than 64 octets")
        if any(ord(c) < 0x20 or c == "\x7f" for c in text):
            raise AddressError("control character in address")
        if not is_utf8(text):
            raise AddressError("address is not valid UTF-8")  # RFC 6531 §3.3
        if domain.startswith("["):
            if not is_address_literal(domain):
                raise AddressError("malformed address literal")  # RFC 5321 §4.1.3
            return cls(local, domain.lower())
        try:
            ascii_domain = to_ascii_domain(domain)
        except UnicodeError:
            raise AddressError(f"{domain!r} is not a valid domain name") from None
        if (
            not ascii_domain
            or len(ascii_domain) > MAX_DOMAIN_BYTES
            or ".." in ascii_domain
            or ascii_domain.startswith(".")
        ):
            raise AddressError(f"{domain!r} is not a valid domain name")
        return cls(local, ascii_domain)

    @property
    def is_ascii(self) -> bool:
        return self.local.isascii()

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


def needs_smtputf8(text: str) -> bool:
    """True when an address can only travel in an SMTPUTF8 transaction (RFC 6531 §3.2)."""
    return not text.isascii()
