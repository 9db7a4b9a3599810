"""COMPRESS=DEFLATE (RFC 4978): the raw DEFLATE (RFC 1951) layer under an IMAP connection.

Sans-IO, like imap/framing.py: the transport passes what it read through `decompress` before
the protocol sees it, and what it writes through `compress`. RFC 4978 §4: each direction is
one DEFLATE stream without zlib or gzip headers; the server flushes (Z_SYNC_FLUSH) after every
write, so the client can decode each response as soon as it arrives.

Decompression is bounded: a few bytes of DEFLATE can stand for megabytes (a "zip bomb"), so
`decompress` yields at most `max_output_bytes` at a time and keeps the rest of its input for
`more()`; the framer's line and literal limits then apply before more is inflated.
"""

from __future__ import annotations

import zlib

from mailstack.imap.framing import RemoteProtocolError

WBITS_RAW = -15  # RFC 4978 §4: raw DEFLATE, 32 KiB window
MAX_OUTPUT_BYTES = 1024 * 1024  # inflated per step; the framer limits what it keeps


class Deflate:
    """Both directions of one compressed connection."""

    def __init__(self, *, max_output_bytes: int = MAX_OUTPUT_BYTES, level: int = 6) -> None:
        self._out = zlib.compressobj(level, zlib.DEFLATED, WBITS_RAW)
        self._in = zlib.decompressobj(WBITS_RAW)
        self._max = max_output_bytes
        self._tail = b""  # input not inflated yet (the output bound was reached)

    def compress(self, data: bytes) -> bytes:
        """`data` as DEFLATE bytes the client can decode completely right away."""
        return self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def decompress(self, data: bytes) -> bytes:
        """Inflate what the client sent (some of it if it inflates to more than the bound).
        Raises RemoteProtocolError on data that is not DEFLATE."""
        return self._inflate(self._tail + data)

    @property
    def has_more(self) -> bool:
        """Input is left that `more()` will inflate (no socket read is needed for it)."""
        return bool(self._tail)

    def more(self) -> bytes:
        return self._inflate(self._tail)

    def _inflate(self, data: bytes) -> bytes:
        try:
            out = self._in.decompress(data, self._max)
        except zlib.error as exc:
            raise RemoteProtocolError(f"invalid compressed data: {exc}") from None
        self._tail = self._in.unconsumed_tail
        if self._in.eof:  # the client ended its stream: nothing may follow (RFC 4978 §4)
            raise RemoteProtocolError("compressed stream ended")
        return out
