"""One end of the socketpair between `serve` and an SMTP worker (see mailstack.workers.codec)."""

from __future__ import annotations

import socket
import threading

from mailstack.workers.codec import PACKET_MAX, Packet, encode


class Channel:
    """One end of a worker socketpair. `send` never blocks and may be called from any thread;
    it returns False when the packet could not go (peer gone, buffer full)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.broken = False  # the peer is gone: nothing will ever go through again
        self._lock = threading.Lock()

    def send(self, packet: Packet, fds: list[int] | None = None) -> bool:
        data = encode(packet)
        with self._lock:
            try:
                if fds:
                    socket.send_fds(self.sock, [data], fds)
                else:
                    self.sock.send(data)
            except BlockingIOError:
                return False
            except OSError:
                self.broken = True
                return False
        return True

    def receive(self) -> tuple[bytes, list[int]] | None:
        """The next packet and its descriptors; None when none is waiting; (b"", []) at EOF."""
        try:
            packet, fds, _flags, _addr = socket.recv_fds(self.sock, PACKET_MAX, 4)
        except BlockingIOError:
            return None
        except OSError:
            return b"", []
        return packet, fds

    def close(self) -> None:
        self.sock.close()
