"""`check_quota`: may an org start a run? One indexed read of its stored decision."""

from __future__ import annotations

from datetime import UTC, datetime

from pymongo.database import Database

from chores.core.db import Collections, Doc
from chores.core.exceptions import ConfigError
from chores.core.orgs import validate_org
from chores.core.periods import as_utc
from chores.core.settings import Settings, get_settings
from chores.quota.decisions import Quota, QuotaDecision


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
