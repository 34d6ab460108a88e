"""The AI-token billing chore: meters LLM usage of scan runners into invoices and quotas.

Public API::

    from chores import run_chore, finalize_invoices, check_quota

This module only re-exports. The packages, lowest first (each may import only those
below it; tests/unit/test_layout.py checks it):

- `chores.core`: settings, errors, time, money, the database and Redis handles.
- `chores.metering`: the usage rules, the source, priced lines, the ledger, progress.
- `chores.billing`: drafts, invoices, a period's ledger.
- `chores.quota`: plans, quota decisions, `check_quota`.
- `chores.run`: one metering run and the finalize, wired together.
- `chores.reports`: breakdowns, allocation, run trees, the HTML report, reconcile.
- `chores.demo`: synthetic source data (demo, tests, benchmarks).
- `chores.cli` and `chores.tasks`/`chores.celery_app`: the command line and the service.
"""

from __future__ import annotations

import logging

from chores.billing.invoices import Invoice, InvoiceLine
from chores.core.db import Collections, connect, ensure_indexes
from chores.core.exceptions import (
    ChoreError,
    ConfigError,
    DatabaseUnavailable,
    InvoiceNotFound,
    UnknownOrg,
)
from chores.core.settings import Settings, get_settings
from chores.quota.check import check_quota
from chores.quota.decisions import QuotaDecision
from chores.run.chore import finalize_invoices, run_chore
from chores.run.report import RunReport

# A library logs, the application shows: without a configured handler (the CLI) the
# warnings are not dumped on stderr; Celery's handlers on the root logger still get them.
logging.getLogger(__name__).addHandler(logging.NullHandler())

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
