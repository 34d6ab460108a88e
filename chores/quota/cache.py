"""Quota decisions mirrored in Redis, so the pre-run check need not touch MongoDB.

Optional: on when `REDIS_URL` is set. Every error of the cache is swallowed
and logged: a Redis outage falls back to MongoDB, never to a failed check.

A key names the org and where its decision is stored (`namespace`), so that deployments
sharing one Redis answer for each other's orgs only when their database and billing
prefix are the same.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo.database import Database
from redis.exceptions import RedisError, ResponseError

from chores.core.local_store import is_client_of, is_local, path_of
from chores.core.logs import redact_urls
from chores.core.redis_client import redis_client
from chores.core.settings import redact_url

log = logging.getLogger(__name__)
KEY_PREFIX = "billing:quota:"
SERVER_SCHEMES = ("mongodb://", "mongodb+srv://")


# This process: a `mongomock://` store lives and dies with it, and its name means
# another store in another process.
PROCESS = uuid.uuid4().hex


def namespace(decisions: str, mongo_url: str) -> str:
    """Where mirrored decisions come from: the full name of the decisions collection
    (database and billing prefix) of the store MONGO_URL names. A server is named by its
    collection alone: the processes of one deployment reach it by different hosts (a
    container's name, the host's `localhost`) and must share one mirror, or a `plan set`
    from the host would leave the workers' stale. A `file://` store is named by its
    absolute path too (whatever directory it was named from), a `mongomock://` one by its
    name and this process (`PROCESS`)."""
    if mongo_url.startswith(SERVER_SCHEMES):
        return decisions
    if is_local(mongo_url):
        return f"{path_of(mongo_url).resolve().as_uri()}#{decisions}"
    return f"{mongo_url}@{PROCESS}#{decisions}"


def is_named_store(database: Any, mongo_url: str) -> bool:
    """Whether `database` is in the store MONGO_URL names, so that its decisions may be
    mirrored under `namespace`: not an in-process database of an API caller's (its
    entries would answer for that store's orgs, and that store's for it)."""
    if mongo_url.startswith(SERVER_SCHEMES):
        return isinstance(database, Database)
    return is_client_of(mongo_url, database.client)


# Whether the entry `held` was decided from a later version of the usage than a decision of
# `period` from the draft built on `ticket`: a later period, or the same period from a draft
# built on a later ticket (`draft_ticket`, decimal digits, compared as such: no double rounds
# them). An entry without a ticket (an older version's) is not. The rule MongoDB's write of
# a decision follows (`Quota._decide`).
HELD_IS_NEWER = """
local function held_is_newer(held, period, ticket)
  local ok, decision = pcall(cjson.decode, held)
  if ok and type(decision) == 'table' and type(decision.period) == 'string' then
    if decision.period > period then return true end
    local its = string.match(held, '"draft_ticket": (%d+)')
    local later = its and (#its > #ticket or (#its == #ticket and its > ticket))
    if decision.period == period and later then return true end
  end
  return false
end
"""

# Mirror a decision (KEYS[1] <- ARGV[1], expiring in ARGV[4] s; ARGV[2] its period, ARGV[3]
# its ticket) unless the entry there is newer, in one step: two writers that raced (a run's
# decision and a fan-out's), whichever comes last, leave the newer one. A check never
# mirrors what it read (`Quota.check`).
PUT_UNLESS_OLDER = (
    HELD_IS_NEWER
    + """
local held = redis.call('GET', KEYS[1])
if held and held_is_newer(held, ARGV[2], ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[4])
return 1
"""
)

# Drop the entry (KEYS[1]) unless it is newer than a decision MongoDB refused (ARGV[1] its
# period, ARGV[2] its ticket): one as old is older than the decision that stands, while a
# newer one was mirrored by the writer of a later draft (dropped, an older decision still to
# be mirrored would find the entry empty and stay there).
DROP_UNLESS_NEWER = (
    HELD_IS_NEWER
    + """
local held = redis.call('GET', KEYS[1])
if held and not held_is_newer(held, ARGV[1], ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""
)


class QuotaCache:
    def __init__(self, url: str, ttl_seconds: int, namespace: str):
        self._url = url
        self._ttl = ttl_seconds
        self._prefix = f"{KEY_PREFIX}{namespace}:"
        self._redis = redis_client(url, timeout=0.25)  # a check must stay fast
        self._put_unless_older = self._redis.register_script(PUT_UNLESS_OLDER)
        self._drop_unless_newer = self._redis.register_script(DROP_UNLESS_NEWER)
        self.failure: str | None = None  # the last error, when Redis could not be reached
        # ... or when it answered, refusing the command (a database number it lacks, an ACL)
        self.refused_command = False

    def key(self, org: str) -> str:
        return self._prefix + org

    def put_many(self, decisions: Sequence[Mapping[str, Any]]) -> None:
        """Mirror each decision, unless its entry holds a newer one (`PUT_UNLESS_OLDER`). One
        without a period and draft ticket to compare (a document no run of this version
        wrote) is not mirrored: checks read MongoDB."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for decision in decisions:
                period, ticket = decision.get("period"), decision.get("draft_ticket")
                if type(period) is not str or not _is_count(ticket):
                    continue
                self._put_unless_older(
                    keys=[self.key(decision["_id"])],
                    args=[_dumps(decision), period, str(ticket), self._ttl],
                    client=pipe,
                )
            pipe.execute()
        except RedisError as exc:
            self._unavailable(exc)

    def drop_older(self, refused: Sequence[Mapping[str, Any]]) -> None:
        """Drop the entry of each decision MongoDB refused (a newer one stands there), unless
        the entry is newer than that decision (`DROP_UNLESS_NEWER`): the next check reads
        MongoDB."""
        try:
            pipe = self._redis.pipeline(transaction=False)
            for decision in refused:
                period, ticket = decision["period"], str(decision["draft_ticket"])
                self._drop_unless_newer(
                    keys=[self.key(decision["_id"])], args=[period, ticket], client=pipe
                )
            pipe.execute()
        except RedisError as exc:
            self._unavailable(exc)

    def forget(self, orgs: Sequence[str]) -> None:
        """Drop the mirrored decisions of `orgs` (the next check reads MongoDB)."""
        if not orgs:
            return
        try:
            self._redis.delete(*(self.key(org) for org in orgs))
        except RedisError as exc:
            self._unavailable(exc)

    def get(self, org: str) -> dict[str, Any] | None:
        """The cached decision, or None on a miss or any Redis failure."""
        try:
            raw = self._redis.get(self.key(org))
        except RedisError as exc:
            self._unavailable(exc)
            return None
        if raw is None:
            return None
        try:
            return _loads(raw)
        except (ValueError, KeyError, TypeError):
            return None

    def _unavailable(self, exc: RedisError) -> None:
        self.failure = type(exc).__name__
        self.refused_command = isinstance(exc, ResponseError)  # NoPermissionError too
        if self.refused_command:
            # Reached, and refused the command (a database number it does not have, an ACL
            # that forbids it): what it said names no credential (a refused password is
            # an AuthenticationError, a ConnectionError).
            self.failure += f": {redact_urls(str(exc))[:100]}"
        log.warning("quota cache at %s unavailable: %s", redact_url(self._url), type(exc).__name__)


def _dumps(decision: Mapping[str, Any]) -> str:
    """A decision as JSON, its datetimes as ISO text (whatever a later version adds)."""
    return json.dumps(dict(decision), default=_iso)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _loads(raw: bytes | str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(raw)
    data["computed_at"] = datetime.fromisoformat(data["computed_at"])
    return data


def _is_count(value: Any) -> bool:
    """A non-negative int (bson's Int64 too), not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
