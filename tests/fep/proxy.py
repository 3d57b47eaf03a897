"""A TCP proxy the fault tests control, between the front-end processor and the hub.

Modes (switch at any time with :meth:`TcpProxy.set_mode`; existing connections are cut):

* ``pass``      -- bytes flow both ways;
* ``down``      -- the listening socket is closed: connections are refused (hub host down);
* ``reset``     -- connections are accepted, the request is read in part, then reset (RST);
* ``blackhole`` -- connections are accepted and read, nothing ever comes back;
* ``drop_reply``-- the request reaches the hub, the hub's reply is thrown away and the
  connection reset: the hub has the batch, the front-end processor does not know it.
"""

from __future__ import annotations

import socket
import struct
import threading

from tests.conftest import free_port


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1"):
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.mode = "pass"
        self.replies_dropped = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = False
        self._listen()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _listen(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def set_mode(self, mode: str) -> None:
        assert mode in ("pass", "down", "reset", "blackhole", "drop_reply")
        with self._lock:
            old, self.mode = self.mode, mode
            for s in list(self._open):
                _rst(s)
            self._open.clear()
            if mode == "down" and self._listener is not None:
                try:
                    self._listener.shutdown(socket.SHUT_RDWR)   # wakes the thread blocked in accept()
                except OSError:
                    pass
                self._listener.close()
                self._listener = None
        if old == "down" and mode != "down":
            self._listen()

    def close(self) -> None:
        self._stopped = True
        self.set_mode("down")

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopped:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                if mode == "down" or listener is not self._listener:
                    _rst(client)
                    return
                self.connections += 1
                self._open.add(client)
            threading.Thread(target=self._handle, args=(client, mode), daemon=True).start()

    def _handle(self, client: socket.socket, mode: str) -> None:
        if mode == "reset":
            try:
                client.recv(100)
            except OSError:
                pass
            _rst(client)
            return
        if mode == "blackhole":
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _rst(client)
            return
        with self._lock:
            self._open.add(upstream)
        upstream.settimeout(None)
        threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
        self._pump(upstream, client, mode == "drop_reply")

    def _pump(self, src: socket.socket, dst: socket.socket, drop: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if drop:
                    with self._lock:
                        self.replies_dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        _rst(dst)
        _rst(src)
