"""A threaded TCP forwarder put between the app and a server (PostgreSQL, Redis) so a test can cut it."""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`.

    `cut()` drops every connection and refuses new ones (a dead server); `hang()` keeps every connection open
    and accepts new ones but forwards nothing (a hung server or a black-holed network) until `restore()`, which
    delivers what was held, as TCP does once a partition heals. `seen` counts connections accepted while cut or
    hung, so a test can show that the fault was met.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self.seen = 0  # connections accepted while cut or hung
        self._lose = 0  # answers still to lose (`lose_answers`)
        self.answers_lost = 0
        self._upstreams: set[socket.socket] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def is_open(self) -> bool:
        """Whether connections are forwarded now."""
        return self._open.is_set()

    def cut(self) -> None:
        """Like a server that died: live connections are reset and new ones are closed at once."""
        self._open.clear()
        with self._lock:
            doomed = list(self._sockets)
            self._sockets.clear()
        for sock in doomed:
            _close(sock)

    @property
    def is_hung(self) -> bool:
        """Whether connections are held without forwarding now."""
        return not self._flowing.is_set()

    def hang(self) -> None:
        """Accept and hold: live and new connections stay open, nothing is forwarded either way."""
        self._flowing.clear()

    def lose_answers(self, n: int) -> None:
        """The next `n` answers from the server are dropped and their connections reset: the request was
        delivered (and acted on), the client never hears back, as when a network fails after the server
        committed. `answers_lost` counts them."""
        with self._lock:
            self._lose = n

    def restore(self) -> None:
        """Forward again (new connections, and what hung connections held)."""
        self._open.set()
        self._flowing.set()

    def close(self) -> None:
        """Stop the proxy and drop everything."""
        self._stop.set()
        self.cut()
        self._thread.join(timeout=2)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                self.seen += 1
                _close(client)
                continue
            if not self._flowing.is_set():
                self.seen += 1
            try:
                upstream = socket.create_connection(self.target, timeout=2)
            except OSError:
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
                self._upstreams.add(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self._flowing.wait(0.05):
                    if self._stop.is_set():
                        return
                with self._lock:
                    lose = src in self._upstreams and self._lose > 0
                    if lose:
                        self._lose -= 1
                        self.answers_lost += 1
                if lose:
                    break  # the finally resets both ends: the answer never arrives
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
                self._upstreams.discard(src)
                self._upstreams.discard(dst)
            _close(src)
            _close(dst)


def _close(sock: socket.socket) -> None:
    """Reset (not just close) so the peer sees the failure at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
