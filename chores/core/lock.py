"""One org metered by one worker at a time: redis-py's `redis.lock.Lock` per org.

The lock saves work; it is not what makes billing correct. Two runs of one org
still bill exactly once, because ledger entry ids are unique (`_ledger`). So:

- it is taken without waiting (`blocking=False`): a second run of a locked org skips;
- its TTL (`LOCK_TTL_SECONDS`) is above the task's hard time limit, and a run renews it
  after every batch (`renew`), so a run making progress keeps it however long it lasts,
  while a crashed worker never blocks an org for longer than the TTL;
- its token names the task and the process that hold it (`Holder`: host, boot and pid
  namespace, pid, start time), so the same message redelivered after its process died on
  this machine (OOM killer, SIGKILL) takes it over at once; one redelivered while its first
  delivery still runs (a broker connection lost and restored, on any host), or whose dead
  holder ran elsewhere, waits, as another message does;
- it is released only by its owner (redis-py's compare-and-delete on the token), so a
  run that outlived its lock cannot delete the lock of the run that took over;
- a Redis outage at the start means no run (`meter_org` retries with backoff: SPEC §6 says
  one org is never metered by two workers at once); one mid-run lets the run finish, its
  lock expiring after the TTL, which is above the run's hard time limit;
- `chore run --org` takes it too, under a token of its own (chores/cli/run.py).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from urllib.parse import quote

import redis
from redis.exceptions import LockError, LockNotOwnedError, RedisError
from redis.lock import Lock

from chores.core.redis_client import redis_client

KEY_PREFIX = "billing:lock:meter:"
UNKNOWN = "-"  # a token's place or start time that /proc could not give
# Replace a dead holder's token (ARGV[1]) with ours (ARGV[2]) and the full TTL (ARGV[3], ms),
# in one step: unless the lock changed hands meanwhile.
TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"""

log = logging.getLogger(__name__)


def lock_client(url: str) -> redis.Redis:
    """The lock's client: 2 s timeouts, a dead Redis must not stall a run."""
    return redis_client(url, timeout=2)


class OrgLock:
    """The metering lock of one org, as held (or not) by this caller."""

    def __init__(
        self, client: redis.Redis, org: str, *, ttl_seconds: float, task_id: str | None = None
    ):
        self.org = org
        self.key = KEY_PREFIX + org
        # The task id, when a task holds it: a redelivery of the same message whose process
        # died takes over the dead run's lock instead of waiting out its TTL (`_dead_here`).
        self.task_id = task_id or uuid.uuid4().hex
        self.token = Holder.this_process(self.task_id).token()
        self._client = client
        self._ttl_ms = max(1, int(ttl_seconds * 1000))
        # Not thread-local: the token belongs to this object, whichever thread renews it.
        self._lock = Lock(
            client, self.key, timeout=max(0.001, ttl_seconds), blocking=False, thread_local=False
        )
        self._take_over = client.register_script(TAKE_OVER)

    def acquire(self) -> bool:
        """Take the lock if it is free, or held by a dead delivery of this same task on this
        host (`_dead_here`), without waiting. A `RedisError` propagates."""
        for _ in range(3):  # a lock that expires between our two steps: try again
            if self._lock.acquire(blocking=False, token=self.token):
                return True
            holder = self._client.get(self.key)
            if holder is None:
                continue  # expired between our two steps: free now, try again
            if isinstance(holder, bytes):  # str when decode_responses
                holder = holder.decode("utf-8", "replace")
            if not self._dead_here(holder):
                return False  # a live run's (this same message's too), or another host's
            if self._take_over(keys=[self.key], args=[holder, self.token, self._ttl_ms]):
                self._lock.local.token = self.token.encode()
                return True
        return False

    def _dead_here(self, token: str) -> bool:
        """Whether the lock's token is this task's, taken by a process of this machine (the
        same host, boot and pid namespace) that is gone: the same message, redelivered
        after its process died. Not when that process still runs (a broker connection lost
        and restored hands the running message out again, to this process or another), nor
        a holder anywhere else (nothing here can tell it is dead: its lock expires after the
        TTL)."""
        holder = Holder.parse(token)
        here = this_place()
        return (
            holder is not None
            and holder.task_id == self.task_id
            and here != UNKNOWN
            and holder.place == here
            and holder.is_gone()
        )

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
                f"lock of org {self.org} lost mid-run (expired, taken over, or lost with Redis's"
                " data): the run goes on, the ledger keeps billing exact"
            )
        except RedisError as exc:
            self.lost = (
                f"could not renew the lock of org {self.org} ({type(exc).__name__}): the run"
                " goes on, its lock expires after LOCK_TTL_SECONDS"
            )
        log.warning("%s", self.lost)
        self.lock = None


def release_quietly(lock: OrgLock) -> str | None:
    """Release a run's lock; a lock that is gone (expired, or lost by a Redis restarted
    without its data) or a Redis that went away is a warning, logged and returned."""
    try:
        if lock.release():
            return None
        problem = (
            f"lock of org {lock.org} gone before its run ended (expired after LOCK_TTL_SECONDS,"
            " or lost with Redis's data): another run of the org may have overlapped it, the"
            " ledger keeps billing exact"
        )
    except RedisError as exc:  # it expires by itself
        problem = f"could not release the lock of org {lock.org}: {type(exc).__name__}"
    log.warning("%s", problem)
    return problem


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its token says: a task, and the process running it, named so
    that a process of the same machine can tell whether that one still runs."""

    task_id: str
    place: str  # host name, boot id and pid namespace: where `pid` names one process
    pid: int
    started: str  # when that process started (clock ticks after boot): a pid reused differs
    nonce: str

    @classmethod
    def this_process(cls, task_id: str) -> Holder:
        pid = os.getpid()
        return cls(task_id, this_place(), pid, start_time(pid), uuid.uuid4().hex)

    def token(self) -> str:
        return f"{self.task_id}@{self.place}:{self.pid}:{self.started}:{self.nonce}"

    @classmethod
    def parse(cls, token: str) -> Holder | None:
        """The holder a token names; None for one of another form (an older version's)."""
        task_id, _, rest = token.rpartition("@")
        fields = rest.split(":")
        if not task_id or len(fields) != 4 or not fields[1].isdigit():
            return None
        place, pid, started, nonce = fields
        return cls(task_id, place, int(pid), started, nonce)

    def is_gone(self) -> bool:
        """Whether this holder's process no longer runs (asked on its machine): its pid is
        free, a zombie's, or another process's that started later. One that cannot be
        looked at (another user's under `hidepid`, a read that failed) runs."""
        if process_gone(self.pid):
            return True
        now = start_time(self.pid)
        return UNKNOWN not in (self.started, now) and now != self.started


def this_place() -> str:
    """This host's name, boot and pid namespace (`UNKNOWN` where /proc cannot say): two
    containers may share a host name (host networking) but not a pid namespace."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return UNKNOWN
    return f"{host_name()}/{boot_id}/{namespace}"


def host_name() -> str:
    """This host's name as a token holds it: its bytes percent-encoded, so that no name
    (one with `:`, `@` or `/`, one that is not UTF-8) breaks the token or its parsing."""
    return quote(socket.gethostname().encode("utf-8", "surrogateescape"), safe="")


def start_time(pid: int) -> str:
    """When process `pid` started, in clock ticks after boot (`/proc/PID/stat` field 22);
    `UNKNOWN` when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return UNKNOWN


def process_gone(pid: int) -> bool:
    """Whether no process of this id runs on this host: none has it, or it is a zombie
    (killed, not yet reaped by its parent)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's: it runs
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"
