"""A TCP forwarder on 127.0.0.1 that can be taken down and brought back: an S3 endpoint that stops answering and
returns, while the store behind it (moto, in memory) keeps its objects, as a real S3 or MinIO would."""

from __future__ import annotations

import socket
import struct
import threading


class OutageProxy:
    """Forwards 127.0.0.1:`port` to `target`. `down()`: every open connection is cut and every new one reset at
    once (counted in `refused`), as a stopped server's port answers; `up()`: serves again."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._down = threading.Event()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True, name="outage-proxy").start()

    def down(self) -> None:
        self._down.set()
        with self._lock:
            for s in list(self._open):
                _reset(s)
            self._open.clear()

    def up(self) -> None:
        self._down.clear()

    def close(self) -> None:
        self.down()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            if self._down.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                server = socket.create_connection(self.target, timeout=10)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._open |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {src, dst}
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


def _reset(s: socket.socket) -> None:
    """Close with a TCP RST, as a dead peer's kernel answers (not a polite FIN)."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    except OSError:
        pass
