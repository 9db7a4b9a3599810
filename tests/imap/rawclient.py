"""A minimal blocking IMAP client for tests that need exact bytes on the wire.

`command()` sends one tagged command and returns every line up to and including the tagged
completion (literals included verbatim). No parsing beyond finding the end of a response, so
tests see what the server really sent.
"""

from __future__ import annotations

import re
import socket
import ssl

_LITERAL_END = re.compile(rb"\{(\d+)\}\r\n$")


class RawClient:
    def __init__(
        self, host: str, port: int, *, tls: ssl.SSLContext | None = None, timeout_s: float = 30
    ) -> None:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        self.sock: socket.socket = tls.wrap_socket(sock, server_hostname=host) if tls else sock
        self.buf = b""
        self.n = 0
        self.greeting = self.line()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """One response line, with any literal it announces appended (CRLF kept)."""
        out = b""
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"connection closed; partial: {out + self.buf!r}")
                self.buf += chunk
            end = self.buf.index(b"\r\n") + 2
            part, self.buf = self.buf[:end], self.buf[end:]
            out += part
            m = _LITERAL_END.search(part)
            if m is None:
                return out
            size = int(m[1])
            while len(self.buf) < size:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("server closed the connection inside a literal")
                self.buf += chunk
            out += self.buf[:size]
            self.buf = self.buf[size:]

    def until_tagged(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def command(self, text: bytes | str) -> list[bytes]:
        self.n += 1
        tag = b"t%d" % self.n
        data = text.encode() if isinstance(text, str) else text
        self.send(tag + b" " + data + b"\r\n")
        return self.until_tagged(tag)

    def tagged(self, text: bytes | str) -> bytes:
        """The tagged completion line only (without the tag)."""
        return self.command(text)[-1].split(b" ", 1)[1]
