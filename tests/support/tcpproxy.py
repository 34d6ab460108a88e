"""A TCP proxy in front of a real server that a test can *freeze*: it then stops forwarding
bytes in both directions but keeps every socket open, sending no FIN and no RST. That is
what a client sees of a network partition, a dropped NAT or conntrack entry, or a frozen
VM: its writes land in the kernel's buffers, and no reply ever comes.

    with FreezableProxy("127.0.0.1", 6379) as proxy:
        url = f"redis://127.0.0.1:{proxy.port}/7"
        ...                 # talk to the server through `url`
        proxy.freeze()      # from now on nothing gets through, nothing is closed

A connection opened while frozen is accepted (as the kernel would complete its handshake)
and never forwarded either. `cut()` freezes only the connections open now, and forwards
those opened after: a NAT or conntrack entry dropped, a new connection making a new one.
(`dbproxy.py` is another thing: it wraps a mongomock database.)
"""

from __future__ import annotations

import select
import socket
import threading
from types import TracebackType

POLL_SECONDS = 0.05  # how often a pump looks whether its link is cut or the proxy closed


class FreezableProxy:
    """Forwards every connection to (`host`, `port`) until `freeze()`; `close()` ends it."""

    def __init__(self, host: str, port: int):
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.frozen = threading.Event()
        self._links: list[threading.Event] = []  # one per connection: set when it is cut
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def freeze(self) -> None:
        """Stop forwarding, now and for good, in both directions; close nothing."""
        self.frozen.set()
        self.cut()

    def cut(self) -> None:
        """Stop forwarding on every connection open now, for good; close nothing. Those
        opened later are forwarded (unless frozen)."""
        for link in list(self._links):
            link.set()

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:  # the listener was closed
                return
            self._sockets.append(client)
            if self.frozen.is_set():
                continue  # held open, never forwarded: the partition began before it
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets.append(server)
            link = threading.Event()
            self._links.append(link)
            self._start(self._pump, client, server, link)
            self._start(self._pump, server, client, link)

    def _pump(self, source: socket.socket, sink: socket.socket, link: threading.Event) -> None:
        """Copy `source` to `sink` until either closes; once the link is cut, read nothing
        more (the bytes wait in the kernel's buffers, as on a dead link) but keep both open."""
        while not self._closed.is_set():
            if link.is_set():
                self._closed.wait(POLL_SECONDS)
                continue
            try:
                readable, _, _ = select.select([source], [], [], POLL_SECONDS)
                if not readable or link.is_set():
                    continue
                data = source.recv(65536)
                if not data:  # a real close by one side is passed on
                    sink.shutdown(socket.SHUT_WR)
                    return
                sink.sendall(data)
            except OSError:
                return
