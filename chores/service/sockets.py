"""How the service's long-lived Redis connections (Celery's broker, a Redis result backend,
beat's redbeat client) notice a link that died without being closed: a network partition,
a dropped NAT or conntrack entry, a frozen VM (no FIN, no RST). Without these a command on
such a connection waits out the kernel's retransmissions (about 15 minutes), and an idle
one stays open for the kernel's keepalive default (2 hours). docs/deploy.md, *Redis
connections that die silently*.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

# Seconds a connect, or any read or write of a command, may take. No command of the
# service waits on Redis by design (kombu's BRPOP asks the server to answer within its
# `brpop_timeout`, 1 s), and a live Redis answers within its `busy-reply-threshold` (5 s;
# a busy one then answers `-BUSY`): twice that is a dead link, as the start check's PING
# says (`checks.BROKER_SILENCE_SECONDS`).
REDIS_SOCKET_TIMEOUT = 10.0
# An idle connection (pub/sub, pooled between two fan-outs) is probed by the kernel after
# 60 s of silence, then every 10 s, and closed after 3 probes unanswered: 90 s after the
# link died. 60 s is also below the idle timeouts of NATs and cloud load balancers (4 min
# and up), whose entries the probes keep alive. Options this platform lacks are left to it.
REDIS_KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 10, "TCP_KEEPCNT": 3}


def over_tcp(url: str | None) -> bool:
    """Whether `url` names a Redis reached over TCP (`redis://`, `rediss://`): the only
    connections these options are for (not `unix://`, `redis+socket://`, another broker)."""
    return url is not None and urlsplit(url).scheme in ("redis", "rediss")


def keepalive_options() -> dict[int, int]:
    """`REDIS_KEEPALIVE` as redis-py takes it: socket constants, those this platform has."""
    return {
        getattr(socket, name): value
        for name, value in REDIS_KEEPALIVE.items()
        if hasattr(socket, name)
    }


def redis_socket_options() -> dict[str, Any]:
    """redis-py's connection options for `REDIS_SOCKET_TIMEOUT` and `REDIS_KEEPALIVE`, as
    kombu's Redis transport options and redbeat's client options both take them.

    Not `retry_on_timeout` (off, as by default): redis-py would send a timed-out command
    again at once, and kombu stops batching publishes under it; a publish is retried by
    Celery instead, on a new connection."""
    return {
        "socket_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
        "socket_keepalive": True,
        "socket_keepalive_options": keepalive_options(),
    }
