"""`check_quota`: may an org start a run? One indexed read of its stored decision (or
none: its Redis mirror), also while the billing database cannot be reached."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

from chores.core.db import Collections, Doc
from chores.core.exceptions import ConfigError
from chores.core.orgs import validate_org
from chores.core.periods import as_utc, period_of
from chores.core.settings import Settings, get_settings
from chores.quota.cache import SERVER_SCHEMES, QuotaCache, namespace
from chores.quota.decisions import Quota, QuotaDecision, answer, mirrored, unknown_decision


def check_quota(
    db: Database[Doc],
    org: str,
    estimated_tokens: int = 0,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
) -> QuotaDecision:
    """May `org` start a run? One indexed read of its stored decision."""
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
    now = as_utc(now or datetime.now(UTC))
    return Quota(Collections.of(db, settings), settings).check(org, estimated_tokens, now)


def check_quota_unreachable(
    org: str, estimated_tokens: int, now: datetime, *, settings: Settings, why: str
) -> QuotaDecision:
    """`check_quota` when the billing database (a server) cannot be reached, `why` saying
    so: the decision the workers mirrored in Redis for `org`, answered as `check_quota`
    answers it, else `unknown` (QUOTA_FAIL_OPEN decides)."""
    if settings.redis_url and settings.mongo_url.startswith(SERVER_SCHEMES):
        decisions = f"{settings.mongo_db}.{settings.collection('quota')}"  # its full name
        cache = QuotaCache(
            settings.redis_url,
            settings.quota_cache_ttl_seconds,
            namespace(decisions, settings.mongo_url),
        )
        doc = mirrored(cache, org, now, settings)
        if doc is not None:
            return answer(org, doc, estimated_tokens, now, settings)
    return unknown_decision(org, period_of(now), why, settings)
