"""`check_quota`: may an org start a run? One indexed read of its stored decision (or
none: its Redis mirror, `check_quota_from_mirror`, which answers while the billing
database cannot be reached)."""

from __future__ import annotations

from datetime import datetime

from pymongo.database import Database

from chores.core.clock import given_now
from chores.core.db import Collections, Doc
from chores.core.exceptions import ConfigError
from chores.core.orgs import validate_org
from chores.core.settings import Settings, get_settings
from chores.quota.cache import SERVER_SCHEMES, QuotaCache, namespace
from chores.quota.decisions import Quota, QuotaDecision, answer, mirrored


def check_quota(
    db: Database[Doc],
    org: str,
    estimated_tokens: int = 0,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
    ask_mirror: bool = True,
) -> QuotaDecision:
    """May `org` start a run? One indexed read of its stored decision: its Redis mirror's
    when REDIS_URL is set and it holds a usable one, else MongoDB's (MongoDB's only with
    `ask_mirror=False`, for a caller that asked `check_quota_from_mirror` already)."""
    settings = settings or get_settings()
    org = validate_org(org)
    if (
        isinstance(estimated_tokens, bool)
        or not isinstance(estimated_tokens, int)
        or estimated_tokens < 0
    ):
        raise ConfigError(
            f"estimated_tokens must be a non-negative integer, got {estimated_tokens!r}"
        )
    now = given_now(now)
    quota = Quota(Collections.of(db, settings), settings)
    return quota.check(org, estimated_tokens, now, ask_mirror=ask_mirror)


def check_quota_from_mirror(
    org: str, estimated_tokens: int, now: datetime, *, settings: Settings
) -> QuotaDecision | None:
    """The answer of the decision the workers mirrored in Redis for `org` (of the server
    MONGO_URL names), as `check_quota` answers it, without a MongoDB call; None when the
    mirror has no usable one (or there is none). `chore quota check` asks it first, so that
    it answers at once while MongoDB is down, not after the server's selection timeout."""
    if settings.redis_url is None or not asks_mirror_first(settings):
        return None
    decisions = f"{settings.mongo_db}.{settings.collection('quota')}"  # its full name
    where = namespace(decisions, settings.mongo_url)
    cache = QuotaCache(settings.redis_url, settings.quota_cache_ttl_seconds, where)
    doc = mirrored(cache, org, now, settings)
    return None if doc is None else answer(org, doc, estimated_tokens, now, settings)


def asks_mirror_first(settings: Settings) -> bool:
    """Whether `check_quota_from_mirror` reads the mirror for this MONGO_URL: a server's,
    with REDIS_URL set. A `file://` store's mirror is read through the store, by
    `check_quota` itself (its entries are named by the file's path)."""
    return bool(settings.redis_url) and settings.mongo_url.startswith(SERVER_SCHEMES)
