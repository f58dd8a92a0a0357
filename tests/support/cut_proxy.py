"""A TCP proxy in front of a test server that cuts the connection once after N bytes from the client.

Resumable upload tests put it between a tus client and the server: the client's upload breaks off
mid-body like a dropped mobile link, and the client must resume from the server's offset. The proxy
counts every byte the clients sent through it, so a test can tell how much was sent again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class CutProxy:
    """Forwards 127.0.0.1:`port` to `upstream_port`. `cut_after(n)` arms one cut: the connection during
    which the client's bytes (counted from the arming) pass `n` is closed in both directions."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self.sent = 0          # bytes from clients to the server, in total
        self.received = 0      # bytes from the server to clients, in total
        self._cut_at: int | None = None
        self.cuts = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_after(self, n: int) -> None:
        with self._lock:
            self._cut_at = self.sent + n

    def start(self) -> CutProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if from_client:
                    with self._lock:
                        cut = self._cut_at is not None and self.sent + len(data) >= self._cut_at
                        if cut:
                            assert self._cut_at is not None
                            data = data[:max(0, self._cut_at - self.sent)]
                            self._cut_at = None
                            self.cuts += 1
                        self.sent += len(data)
                    if cut:
                        with contextlib.suppress(OSError):
                            target.sendall(data)
                        break
                else:
                    with self._lock:
                        self.received += len(data)
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()


@contextmanager
def cut_proxy(upstream_port: int) -> Iterator[CutProxy]:
    proxy = CutProxy(upstream_port).start()
    try:
        yield proxy
    finally:
        proxy.stop()
