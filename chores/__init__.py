"""The AI-token billing chore: meters LLM usage of scan runners into invoices and quotas.

Public API::

    from chores import run_chore, finalize_invoices, check_quota

This module only re-exports, each name loaded on first use. The packages, lowest first
(each may import only those below it; tests/unit/test_layout.py checks it):

- `chores.core`: settings, errors, time, money, the database and Redis handles.
- `chores.metering` and `chores.demo`: the usage rules, the source, priced lines, the
  ledger, progress; synthetic source data (demo, tests, benchmarks).
- `chores.billing` and `chores.quota`: drafts, invoices, a period's ledger; plans, quota
  decisions, `check_quota`.
- `chores.run`: one metering run and the finalize, wired together.
- `chores.reports`: breakdowns, allocation, run trees, the HTML report, reconcile.
- `chores.cli`, and `chores.tasks`/`chores.celery_app`/`chores.service`: the command line
  and the service.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees: the names, typed, and no others
    from chores.billing.invoice import Invoice
    from chores.core.db import Collections, connect, ensure_indexes
    from chores.core.exceptions import (
        ChoreError,
        ConfigError,
        DatabaseUnavailable,
        InvoiceNotFound,
        UnknownOrg,
    )
    from chores.core.settings import Settings, get_settings
    from chores.metering.lines import InvoiceLine
    from chores.quota.check import check_quota
    from chores.quota.decisions import QuotaDecision
    from chores.run.chore import finalize_invoices, run_chore
    from chores.run.report import RunReport

# A library logs, the application shows: without a configured handler (the CLI) the
# warnings are not dumped on stderr; Celery's handlers on the root logger still get them.
logging.getLogger(__name__).addHandler(logging.NullHandler())

# Each name, and the module it comes from: loaded on first use (PEP 562), so that the
# `chore` script loads nothing before it runs (`chores.cli.entry`).
_SOURCES = {
    "Invoice": "chores.billing.invoice",
    "InvoiceLine": "chores.metering.lines",
    "Collections": "chores.core.db",
    "connect": "chores.core.db",
    "ensure_indexes": "chores.core.db",
    "ChoreError": "chores.core.exceptions",
    "ConfigError": "chores.core.exceptions",
    "DatabaseUnavailable": "chores.core.exceptions",
    "InvoiceNotFound": "chores.core.exceptions",
    "UnknownOrg": "chores.core.exceptions",
    "Settings": "chores.core.settings",
    "get_settings": "chores.core.settings",
    "check_quota": "chores.quota.check",
    "QuotaDecision": "chores.quota.decisions",
    "finalize_invoices": "chores.run.chore",
    "run_chore": "chores.run.chore",
    "RunReport": "chores.run.report",
}


__all__ = [
    "ChoreError",
    "Collections",
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


if not TYPE_CHECKING:  # the loader, hidden from type checkers: a misspelt name is an error

    def __getattr__(name: str) -> Any:
        source = _SOURCES.get(name)
        if source is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        globals()[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*globals(), *_SOURCES})
