"""Redis clients at their edges, found untested by mutation testing of
`chores/core/redis_client.py`: one client per URL and timeout, a Redis that stops answering
is not asked again, and the address a `rediss://` URL without a host or port names. No
Redis: a socket that accepts and never answers stands in for a stalled one."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import redis

from chores.core import redis_client as module
from chores.core.redis_client import (
    not_reached,
    redis_client,
    refused_credentials,
    speaks_without_tls,
)


def answering_server(reply: bytes) -> tuple[int, list[bytes], socket.socket]:
    """A listening socket that answers every command it receives with `reply` (a Redis
    speaking RESP: `+PONG`, or `-WRONGPASS ...` to the AUTH a URL with a password sends
    first): its port, what it saw close (an empty read), and the socket to close."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    closed: list[bytes] = []

    def answer(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                for command in data.split(b"*")[1:]:  # each command is a RESP array
                    if b"HELLO" in command.upper() and not reply.startswith(b"-"):
                        conn.sendall(b"%1\r\n$5\r\nproto\r\n:3\r\n")  # RESP3's handshake
                    else:
                        conn.sendall(reply)
        closed.append(b"")

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1], closed, server


def test_a_redis_that_answers_is_reached_and_one_refusing_a_password_is_said_so():
    """The service's start-up checks: a Redis that answers is reached, and accepted (no
    refusal); one that refuses the URL's password is reached too, and its refusal is what
    stops the service (a Redis that is down is waited out, wrong credentials never are)."""
    port, _, server = answering_server(b"+PONG\r\n")
    with server:
        assert not_reached(f"redis://127.0.0.1:{port}/0", timeout=2) is None
        assert refused_credentials(f"redis://127.0.0.1:{port}/0", timeout=2) is None
    refusal = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    port, _, server = answering_server(refusal)
    with server:
        url = f"redis://:wrong@127.0.0.1:{port}/0"
        assert not_reached(url, timeout=2) is None
        assert "invalid username-password pair" in (refused_credentials(url, timeout=2) or "")


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """A listening socket that accepts every connection and never answers (a Redis that
    stalls): its port and the connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed at the end of the test
                return
            accepted.append(conn)

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1], accepted
    server.close()
    for conn in accepted:
        conn.close()


def test_one_client_serves_every_call_of_a_url_and_timeout(silent_server):
    """Module docstring: one client per URL and timeout, per process. A quota check or a
    lock that built a client per call would open a new connection pool each time (a
    connection to Redis per quota check)."""
    url = f"redis://127.0.0.1:{silent_server[0]}/0"
    assert redis_client(url, timeout=0.25) is redis_client(url, timeout=0.25)
    assert redis_client(url, timeout=0.5) is not redis_client(url, timeout=0.25)


def test_a_redis_that_stops_answering_is_not_asked_again(silent_server):
    """A dead Redis must never stall a run or a quota check: a command that times out is
    not sent again on a new connection (which would wait the timeout twice), it raises
    and the caller falls back (the quota mirror to MongoDB)."""
    port, accepted = silent_server
    client = redis_client(f"redis://127.0.0.1:{port}/1", timeout=0.2)
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert len(accepted) == 1


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("rediss://broker.internal", ("broker.internal", 6379)),
        ("rediss://:secret@/0", ("localhost", 6379)),
        ("rediss://broker.internal:6380/0", ("broker.internal", 6380)),
    ],
)
def test_the_plain_text_check_asks_the_host_and_port_the_url_names(monkeypatch, url, address):
    """`speaks_without_tls` asks the server the broker URL names, as Redis clients read it:
    port 6379 and host localhost when the URL leaves them out. Asking another address
    would pass a plain-text broker, whose TLS handshake then hangs the worker."""
    asked = []

    def create_connection(where, timeout=None):
        asked.append(where)
        raise ConnectionRefusedError(where)

    monkeypatch.setattr(module.socket, "create_connection", create_connection)
    assert speaks_without_tls(url) is False  # not reached: another matter
    assert asked == [address]
