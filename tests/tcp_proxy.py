"""A loopback TCP proxy that can play a network partition: it stops forwarding without closing anything.

``freeze()`` keeps every connection open and reads nothing more from either side, as a silent partition
does (no FIN, no RST: the kernel buffers fill and the peer's writes and reads just wait); ``thaw()``
forwards again. New connections made while frozen are accepted and then stalled too. ``strand()`` is the
half-open case: the connections open now never forward again (their far end is gone without a word, as
after a NAT or firewall forgets them), while new connections work. ``cut()`` closes every open
connection at once (a reset partition). Only 127.0.0.1.
"""
from __future__ import annotations

import logging
import selectors
import socket
import threading

log = logging.getLogger(__name__)


class FreezableProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` until closed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._frozen = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._stranded: set[socket.socket] = set()
        self.connections = 0  # accepted so far
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)
        self._thread.start()

    def freeze(self) -> None:
        """Stop forwarding in both directions; every socket stays open."""
        self._frozen.set()

    def thaw(self) -> None:
        """Forward again (what was buffered meanwhile flows on)."""
        self._frozen.clear()

    def strand(self) -> int:
        """Stop forwarding on every connection open now, for good, without closing it; returns how many."""
        with self._lock:
            for a, b in self._pairs:
                self._stranded.update((a, b))
            return len(self._pairs)

    def cut(self) -> None:
        """Close every open connection (both sides see a reset or EOF)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self) -> None:
        self._closed.set()
        self.cut()
        self._listener.close()
        self._thread.join(5)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        self._listener.setblocking(False)
        sel.register(self._listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        while not self._closed.is_set():
            if self._frozen.is_set():
                self._closed.wait(0.05)
                continue
            try:
                events = sel.select(0.05)
            except (OSError, ValueError):
                events = []
            with self._lock:
                stranded = set(self._stranded)
            for key, _ in events:
                sock = key.fileobj
                if sock is self._listener:
                    self._accept(sel, peers)
                    continue
                if sock in stranded:
                    sel.unregister(sock)  # never read again: its peer waits forever
                    continue
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                other = peers.get(sock)
                if not data or other is None:
                    self._drop(sel, peers, sock)
                    continue
                try:
                    other.sendall(data)
                except OSError:
                    self._drop(sel, peers, sock)
            # forget sockets that cut() closed
            for s in [s for s in peers if s.fileno() < 0]:
                self._drop(sel, peers, s)
        sel.close()

    def _accept(self, sel, peers) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(True)
        peers[client], peers[upstream] = upstream, client
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        with self._lock:
            self._pairs.append((client, upstream))
            self.connections += 1

    @staticmethod
    def _drop(sel, peers, sock) -> None:
        other = peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            peers.pop(s, None)
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.close()
            except OSError:
                pass
