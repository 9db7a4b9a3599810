"""atheris fuzz target: address parsing (smtp.arguments.parse_path, smtp.address.Address).

Run: `python tests/fuzz/fuzz_smtp_address.py -runs=100000 [corpus_dir]`. Not collected by
pytest. Any text (decoded as the session decodes: UTF-8 with surrogate escapes) must parse or
raise PathError / AddressError; an accepted address must be valid UTF-8, have a domain (but
RCPT's postmaster) and a well-formed literal when it has one.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.smtp.address import Address, AddressError
    from mailstack.smtp.arguments import (
        POSTMASTER,
        PathError,
        is_address_literal,
        is_utf8,
        parse_path,
    )

SEEDS = [
    b"<a@example.com>",
    b"<a@[192.0.2.1]> SIZE=1",
    b"<a@[IPv6:::1]>",
    b"<Postmaster>",
    b'<"a b"@example.com>',
    b"<@r1,@r2:a@example.com>",
    b"<\xc3\xa9@b\xc3\xbccher.de>",
    b"<a@[example.com]>",
    b"<unterminated@x",
]


def test_one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for is_rcpt in (False, True):
        try:
            path = parse_path(text, is_rcpt=is_rcpt)
        except PathError:
            continue
        if not path.address or (is_rcpt and path.address == POSTMASTER):
            continue
        assert is_utf8(path.address)
        domain = path.address.rpartition("@")[2]
        assert domain
        assert not domain.startswith("[") or is_address_literal(domain)
        try:
            Address.parse(path.address)
        except AddressError:
            pass



if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
