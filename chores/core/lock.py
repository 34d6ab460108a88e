"""One org metered by one worker at a time: redis-py's `redis.lock.Lock` per org.

The lock saves work; it is not what makes billing correct. Two runs of one org
still bill exactly once, because ledger entry ids are unique (`_ledger`). So:

- it is taken without waiting (`blocking=False`): a second run of a locked org skips;
- its TTL (`LOCK_TTL_SECONDS`) is above the task's hard time limit, and a run renews it
  after every batch (`renew`), so a run making progress keeps it however long it lasts,
  while a crashed worker never blocks an org for longer than the TTL;
- a task holds it under its task id as token, so the same message redelivered after its
  process died (OOM killer, SIGKILL) takes it over at once; another message waits;
- it is released only by its owner (redis-py's compare-and-delete on the token), so a
  run that outlived its lock cannot delete the lock of the run that took over;
- a Redis outage at the start means no run (`meter_org` retries with backoff: SPEC §6 says
  one org is never metered by two workers at once); one mid-run lets the run finish, its
  lock expiring after the TTL, which is above the run's hard time limit;
- `chore run --org` takes it too, under a token of its own (chores/cli/run.py).
"""

from __future__ import annotations

import logging
import uuid

import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from chores.core.redis_client import redis_client

KEY_PREFIX = "billing:lock:meter:"

log = logging.getLogger(__name__)


def lock_client(url: str) -> redis.Redis:
    """The lock's client: 2 s timeouts, a dead Redis must not stall a run."""
    return redis_client(url, timeout=2)


class OrgLock:
    """The metering lock of one org, as held (or not) by this caller."""

    def __init__(
        self, client: redis.Redis, org: str, *, ttl_seconds: float, token: str | None = None
    ):
        self.org = org
        self.key = KEY_PREFIX + org
        # The task id, when a task holds it: a redelivery of the same message (its process
        # was killed mid-run) takes over the dead run's lock instead of waiting out its TTL.
        self.token = token or uuid.uuid4().hex
        self._client = client
        # Not thread-local: the token belongs to this object, whichever thread renews it.
        self._lock = Lock(
            client, self.key, timeout=max(0.001, ttl_seconds), blocking=False, thread_local=False
        )

    def acquire(self) -> bool:
        """Take the lock if it is free or already ours (same token), without waiting.
        A `RedisError` propagates."""
        for _ in range(3):  # a lock that expires between our two steps: try again
            if self._lock.acquire(blocking=False, token=self.token):
                return True
            holder = self._client.get(self.key)
            if holder is None:
                continue  # expired between our two steps: free now, try again
            if holder not in (self.token.encode(), self.token):  # str when decode_responses
                return False  # another run's
            # Ours: the same message, redelivered after its process died. Adopt it.
            self._lock.local.token = self.token.encode()
            try:
                return bool(self._lock.reacquire())
            except LockNotOwnedError:  # expired (or taken) since the read
                self._lock.local.token = None
        return False

    def renew(self) -> bool:
        """Reset the lock's TTL to the full `ttl_seconds`: a run that makes progress keeps
        it. False when this caller no longer owns it (expired, maybe taken by another run).
        A `RedisError` propagates."""
        try:
            return bool(self._lock.reacquire())
        except LockNotOwnedError:
            return False
        except LockError:  # never acquired here
            return False

    def release(self) -> bool:
        """Delete the lock if this caller still owns it; False when it had expired
        (and maybe been taken by another run). A `RedisError` propagates."""
        try:
            self._lock.release()
        except LockError:  # LockNotOwnedError included: not ours (any more)
            return False
        return True


class KeepLock:
    """A run's `on_batch`: renews the org's lock to its full TTL after every batch, so a run
    that makes progress keeps its lock however long it lasts. A failed renewal is logged,
    once, and never fatal: the run goes on (the ledger keeps billing exact), without
    renewing again (a dead Redis must not cost a timeout per batch)."""

    def __init__(self, lock: OrgLock):
        self.lock: OrgLock | None = lock
        self.org = lock.org
        self.lost: str | None = None  # what went wrong, once it did (also logged)

    def __call__(self, docs: int) -> None:
        if self.lock is None:
            return
        try:
            if self.lock.renew():
                return
            self.lost = (
                f"lock of org {self.org} lost mid-run (expired or taken over): the run goes on,"
                " the ledger keeps billing exact"
            )
        except RedisError as exc:
            self.lost = (
                f"could not renew the lock of org {self.org} ({type(exc).__name__}): the run"
                " goes on, its lock expires after LOCK_TTL_SECONDS"
            )
        log.warning("%s", self.lost)
        self.lock = None


def release_quietly(lock: OrgLock) -> str | None:
    """Release a run's lock; a lock that expired or a Redis that went away is a warning,
    logged and returned."""
    try:
        if lock.release():
            return None
        problem = f"lock of org {lock.org} expired before its run ended (LOCK_TTL_SECONDS)"
    except RedisError as exc:  # it expires by itself
        problem = f"could not release the lock of org {lock.org}: {type(exc).__name__}"
    log.warning("%s", problem)
    return problem
