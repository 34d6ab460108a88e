"""Redis clients: one per URL and timeout, per process, with short timeouts.

A dead Redis must never stall a run or a quota check: short timeouts, and callers catch
`RedisError` (the quota mirror falls back to MongoDB; a run that cannot take its org's
lock is retried, `tasks.meter_org`).
"""

from __future__ import annotations

import redis

_CLIENTS: dict[tuple[str, float], redis.Redis] = {}


def redis_client(url: str, *, timeout: float) -> redis.Redis:
    key = (url, timeout)
    if key not in _CLIENTS:
        _CLIENTS[key] = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry_on_timeout=False
        )
    return _CLIENTS[key]
