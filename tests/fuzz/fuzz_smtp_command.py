"""atheris fuzz target: SMTP command lines, as the MX cuts and parses them.

Run: `python tests/fuzz/fuzz_smtp_command.py -runs=100000 [corpus_dir]` (atheris is in the test
extras). Not collected by pytest. Any bytes are cut at LF like the session's input buffer; each
line goes through `check_command_line` and `parse_command`, and MAIL/RCPT arguments through
the path and parameter parsers. A Reply or a PathError is an answer; any other exception is a
crash to turn into an `@example(...)` in tests/smtp/test_wire_properties.py.
"""

from __future__ import annotations

import atheris
import harness

with atheris.instrument_imports():
    from mailstack.smtp.arguments import PathError, parse_params, parse_path, strip_keyword
    from mailstack.smtp.framing import check_command_line, parse_command
    from mailstack.smtp.replies import Reply

SEEDS = [
    b"EHLO client.example.net\r\n",
    b"MAIL FROM:<a@example.net> SIZE=100 BODY=8BITMIME SMTPUTF8\r\n",
    b"MAIL FROM:<>\r\n",
    b"MAIL FROM:<unterminated@remote.test\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<x@[IPv6:2001:db8::1]>\r\n",
    b"RCPT TO:<@relay.example:x@[300.1.1.1]>\r\n",
    b'RCPT TO:<"quoted local"@example.com>\r\n',
    b"RCPT TO:<\xff@example.test>\r\n",
    b"BDAT 10 LAST\r\n",
    b"NO\0OP\r\nNOOP\n\r\n",
]


def test_one_input(data: bytes) -> None:
    for raw in data.split(b"\n"):
        line = check_command_line(raw + b"\n")
        if isinstance(line, Reply):
            continue
        command = parse_command(line)
        if isinstance(command, Reply) or command.arg is None:
            continue
        keyword = {"MAIL": "FROM:", "RCPT": "TO:"}.get(command.verb)
        if keyword is None:
            continue
        rest = strip_keyword(keyword, command.arg)
        if not rest:
            continue
        try:
            path = parse_path(rest, is_rcpt=command.verb == "RCPT")
        except PathError:
            continue
        parse_params([w.upper() for w in path.rest.split()])



if __name__ == "__main__":
    harness.run(test_one_input, SEEDS)
