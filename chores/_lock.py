"""One org metered by one worker at a time: a Redis lock per org, owned by a random token.

The lock saves work; it is not what makes billing correct. Two runs of one org
still bill exactly once, because ledger entry ids are unique (`_ledger`). So:

- its TTL only has to outlive a run: it is set above the task's hard time limit,
  after which the run is dead anyway, so a crashed worker never blocks an org
  for longer than the TTL;
- a task holds it under its task id, so the same message redelivered after its
  process died (OOM killer, SIGKILL) takes it over at once; another message waits;
- it is released only by its owner (compare-and-delete on the token), so a run
  that outlived its lock cannot delete the lock of the run that took over;
- a Redis outage means metering without it (the caller decides), never not metering.
"""

from __future__ import annotations

import uuid

import redis

from ._redis import redis_client

KEY_PREFIX = "billing:lock:meter:"

# Take the key if it is free, or if it already holds our token (the same message,
# redelivered after the process running it died): one atomic step.
_ACQUIRE = """
if redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
if redis.call('get', KEYS[1]) == ARGV[1] then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
return 0
"""

# Delete the key only if it still holds our token: GET and DEL in one atomic step.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


def lock_client(url: str) -> redis.Redis:
    """The lock's client: 2 s timeouts, a dead Redis must not stall a run."""
    return redis_client(url, timeout=2)


class OrgLock:
    """The metering lock of one org, as held (or not) by this caller."""

    def __init__(
        self, client: redis.Redis, org: str, *, ttl_seconds: float, token: str | None = None
    ):
        self.key = KEY_PREFIX + org
        # The task id, when a task holds it: a redelivery of the same message (its process
        # was killed mid-run) takes over the dead run's lock instead of waiting out its TTL.
        self.token = token or uuid.uuid4().hex
        self._client = client
        self._ttl_ms = max(1, int(ttl_seconds * 1000))

    def acquire(self) -> bool:
        """Take the lock if it is free or already ours (same token), without waiting.
        A `RedisError` propagates."""
        return bool(self._client.eval(_ACQUIRE, 1, self.key, self.token, self._ttl_ms))

    def release(self) -> bool:
        """Delete the lock if this caller still owns it; False when it had expired
        (and maybe been taken by another run). A `RedisError` propagates."""
        return bool(self._client.eval(_RELEASE, 1, self.key, self.token))
