"""The AI-token billing chore: meters LLM usage of scan runners into invoices and quotas.

Public API (SPEC §5)::

    from chores import run_chore, finalize_invoices, check_quota
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pymongo.database import Database

from chores.core.db import Collections, Doc, connect, ensure_indexes
from chores.core.exceptions import ChoreError, ConfigError, DatabaseUnavailable, InvoiceNotFound, UnknownOrg
from chores.billing.invoices import Invoice, InvoiceLine
from chores.core.periods import as_utc
from chores.quota.decisions import Quota, QuotaDecision
from chores.run.report import RunReport
from chores.run.chore import finalize_invoices, run_chore, validate_org
from chores.core.settings import Settings, get_settings

# A library logs, the application shows: without a configured handler (the CLI) the
# warnings are not dumped on stderr; Celery's handlers on the root logger still get them.
logging.getLogger(__name__).addHandler(logging.NullHandler())


def check_quota(
    db: Database[Doc],
    org: str,
    estimated_tokens: int = 0,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
) -> QuotaDecision:
    """May `org` start a run? One indexed read of its stored decision (SPEC §5)."""
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
    return _quota_for(db, settings).check(org, estimated_tokens, now)


_QUOTAS: dict[tuple[int, int], tuple[Database[Doc], Settings, Quota]] = {}


def _quota_for(db: Database[Doc], settings: Settings) -> Quota:
    """The `Quota` of a database and settings, built once: a check is called per run
    start, and building every collection handle each time cost a third of it."""
    key = (id(db), id(settings))
    found = _QUOTAS.get(key)
    if found is not None and found[0] is db and found[1] is settings:
        return found[2]
    if len(_QUOTAS) >= 32:  # a long-lived process with many Settings objects (tests)
        _QUOTAS.clear()
    quota = Quota(Collections.of(db, settings), settings)
    _QUOTAS[key] = (db, settings, quota)  # kept alive with it, so the ids stay theirs
    return quota


__all__ = [
    "ChoreError",
    "ConfigError",
    "DatabaseUnavailable",
    "Invoice",
    "InvoiceLine",
    "InvoiceNotFound",
    "QuotaDecision",
    "RunReport",
    "Settings",
    "UnknownOrg",
    "check_quota",
    "connect",
    "ensure_indexes",
    "finalize_invoices",
    "get_settings",
    "run_chore",
]
