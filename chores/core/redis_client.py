"""Redis clients: one per URL and timeout, per process, with short timeouts; and whether a
Redis refuses the credentials a URL carries, is not reached at all, speaks no TLS to a
`rediss://` URL, or takes a connection and never answers it.

A dead Redis must never stall a run or a quota check: short timeouts, and callers catch
`RedisError` (the quota mirror falls back to MongoDB; a run that cannot take its org's
lock is retried, `tasks.meter_org`).
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import redis

_CLIENTS: dict[tuple[str, float], redis.Redis] = {}


def redis_client(url: str, *, timeout: float) -> redis.Redis:
    key = (url, timeout)
    if key not in _CLIENTS:
        _CLIENTS[key] = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
    return _CLIENTS[key]


# What a Redis answers when it refuses the user or password of a URL (or asks for one).
_REFUSALS = (redis.AuthenticationError, redis.AuthenticationWrongNumberOfArgsError)


def refused_credentials(url: str, *, timeout: float = 5.0) -> str | None:
    """Redis's reply when it refuses the user or password in `url`, else None: accepted,
    or not reached at all (a Redis that is down is waited out; wrong credentials never
    are, and a client retrying them only fills its log)."""
    error = _ping_error(url, timeout)
    return str(error) if isinstance(error, _REFUSALS) else None


def not_reached(url: str, *, timeout: float = 5.0) -> str | None:
    """Why the Redis at `url` is not reached (redis-py's message), else None: it answered,
    whatever it answered (a refusal of the credentials is `refused_credentials`'s)."""
    error = _ping_error(url, timeout)
    if isinstance(error, redis.ConnectionError | redis.TimeoutError) and not isinstance(
        error, _REFUSALS
    ):
        return str(error)
    return None


def _ping_error(url: str, timeout: float) -> redis.RedisError | None:
    """The error a PING of the Redis at `url` raises, or None when it answers."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except redis.RedisError as exc:
        return exc
    finally:
        client.close()
    return None


# A PING as redis-py and Celery's broker connection write it (14 bytes).
_PING = b"*1\r\n$4\r\nPING\r\n"


def _first_byte(url: str, *, timeout: float) -> bytes | None:
    """The first byte the server a `redis://` or `rediss://` URL names sends back to a PING
    in plain text: `+` a reply, `-` an error (`-NOAUTH`), b"" when it closes or resets the
    connection (a TLS server refusing the bytes) or is not reached at all, None when it
    takes the connection and answers nothing within `timeout`."""
    parts = urlsplit(url)
    try:
        address = (parts.hostname or "localhost", parts.port or 6379)
        connection = socket.create_connection(address, timeout=min(timeout, 2.0))
    except (OSError, ValueError):  # not reached, or a port out of range: another matter
        return b""
    with connection:
        try:
            connection.settimeout(timeout)
            connection.sendall(_PING)
            return connection.recv(1)
        except TimeoutError:
            return None
        except OSError:  # reset
            return b""


def speaks_without_tls(url: str, *, timeout: float = 2.0) -> bool:
    """Whether the server a `rediss://` URL names answers Redis's protocol in plain text:
    a TLS client's handshake with it waits for an answer that never comes, until its
    timeout (Celery's broker connection had none: the worker hung, deaf to SIGTERM)."""
    return _first_byte(url, timeout=timeout) in (b"+", b"-")


def answers_nothing(url: str, *, timeout: float) -> bool:
    """Whether the server a `redis://` or `rediss://` URL names takes a TCP connection and
    then answers nothing to a PING within `timeout`: another service's port (MongoDB waits
    for the 16 bytes of a message header), a Redis stopped but still listening. Celery's
    broker connection had no socket timeout: the worker waited for that answer for good,
    printing nothing, deaf to SIGTERM (now it times out and is retried, for an hour and
    more: `service.sockets`). Any answer, an error or a closed connection is one;
    a server not reached is another matter."""
    return _first_byte(url, timeout=timeout) is None
