"""Reconciliation: re-derive a period from the source documents alone and compare.

The expected lines come from pricing each AI runner's own usage (its current
counters minus its baseline) at its `end_time` (at `now` while it runs), without
reading the ledger. They are compared line by line with the stored invoice; each runner's
source usage is also compared with everything the ledger billed it, so a
difference can be traced to a runner. The runners' own `ai_cost` estimates are
shown beside our amounts (informational: they are never billed).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from chores.core.db import Doc
from chores.core.exceptions import InvoiceNotFound
from chores.metering.lines import UsageGroup, price_group, price_lines
from chores.metering.rules import Rules, is_subagent
from chores.metering.source import chunked
from chores.run.chore import Pipeline
from pricing import Registry

EstimateKey = tuple[str | None, str, str | None]


class LineCheck(BaseModel):
    model: str | None
    tier: str
    price_valid_from: str | None
    expected_tokens: int
    invoiced_tokens: int
    expected_micros: int | None
    invoiced_micros: int | None
    runner_estimate_usd: float
    runners: int
    estimated_runners: int = 0  # how many of them gave an estimate (0: the display says –)

    @property
    def matches(self) -> bool:
        return (self.expected_tokens, self.expected_micros) == (
            self.invoiced_tokens,
            self.invoiced_micros,
        )


class RunnerCheck(BaseModel):
    runner_id: str
    source_tokens: int
    ledger_tokens: int
    note: str


class Reconciliation(BaseModel):
    org: str
    period: str
    status: str
    lines: list[LineCheck]
    late_tokens: int
    runners: list[RunnerCheck]

    @property
    def ok(self) -> bool:
        return all(line.matches for line in self.lines) and not self.runners


def _estimate(context: Any) -> float | None:
    """The runner's own cost estimate, None when it gave none (or not a number)."""
    cost = context.get("ai_cost") if isinstance(context, Mapping) else None
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
        return float(cost)
    return None


def reconcile(meter: Pipeline, org: str, period: str, *, now: datetime) -> Reconciliation:
    invoice = meter.invoices.get(org, period)
    if invoice is None:
        raise InvoiceNotFound(f"no invoice for org {org!r} in {period}")
    registry: Registry = meter.registry
    groups: list[UsageGroup] = []
    runners_of_line: dict[EstimateKey, set[str]] = defaultdict(set)
    estimates: dict[EstimateKey, float] = defaultdict(float)
    estimated: dict[EstimateKey, int] = defaultdict(int)
    source_tokens: dict[str, int] = {}
    in_period: set[str] = set()
    notes: dict[str, str] = {}
    rules = Rules(
        now=now,
        max_tokens_per_run=meter.settings.max_tokens_per_run,
        future_skew_seconds=meter.settings.future_skew_seconds,
    )
    for batch in _batches(meter, org):
        spawns = meter.source.spawn_contexts([str(d.get("_id")) for d in batch if is_subagent(d)])
        for doc in batch:
            result = rules.assess(
                doc, spawn_contexts=spawns.get(str(doc.get("_id")), []), head=None
            )
            if result.org != org:
                continue
            delta = result.delta
            held = [a.kind for a in result.anomalies if a.kind != "total_below_split"]
            if delta is None:
                if held:
                    notes[result.runner_id] = "held: " + ", ".join(held)
                    source_tokens[result.runner_id] = 0
                continue
            source_tokens[result.runner_id] = delta.tokens.tokens
            if result.pending:
                notes[result.runner_id] = "still running: metered up to the last run"
            if delta.period != period:
                continue
            in_period.add(result.runner_id)
            group = UsageGroup(
                model=delta.model,
                byok=delta.byok,
                late=False,
                day=delta.usage_time.date(),
                input=delta.tokens.input,
                cached=delta.tokens.cached,
                output=delta.tokens.output,
                unsplit=delta.tokens.unsplit,
            )
            groups.append(group)
            (model, tier, valid_from, _), _amount = price_group(group, registry)
            key = (model, tier, valid_from)
            runners_of_line[key].add(result.runner_id)
            estimate = _estimate(doc.get("context"))
            if estimate is not None:
                estimates[key] += estimate
                estimated[key] += 1

    expected = {
        (ln.model, ln.tier, ln.price_valid_from): ln for ln in price_lines(groups, registry)
    }
    invoiced = {(ln.model, ln.tier, ln.price_valid_from): ln for ln in invoice.lines if not ln.late}
    lines = []
    for key in sorted(set(expected) | set(invoiced), key=lambda k: tuple(str(p) for p in k)):
        exp, inv = expected.get(key), invoiced.get(key)
        lines.append(
            LineCheck(
                model=key[0],
                tier=key[1],
                price_valid_from=key[2],
                expected_tokens=exp.tokens if exp else 0,
                invoiced_tokens=inv.tokens if inv else 0,
                expected_micros=exp.amount_micros if exp else 0,
                invoiced_micros=inv.amount_micros if inv else 0,
                runner_estimate_usd=round(estimates.get(key, 0.0), 6),
                runners=len(runners_of_line.get(key, ())),
                estimated_runners=estimated.get(key, 0),
            )
        )
    ledger = _ledger_tokens(meter, org, period, set(source_tokens))
    runner_checks = []
    for runner_id in sorted(in_period | ledger.booked_here):
        billed = ledger.total.get(runner_id, 0)
        source = source_tokens.get(runner_id, 0)
        if billed != source:
            note = notes.get(runner_id, "source and ledger disagree")
            runner_checks.append(
                RunnerCheck(
                    runner_id=runner_id, source_tokens=source, ledger_tokens=billed, note=note
                )
            )
    return Reconciliation(
        org=org,
        period=period,
        status=invoice.status,
        lines=lines,
        late_tokens=sum(ln.tokens for ln in invoice.lines if ln.late),
        runners=runner_checks,
    )


def _batches(meter: Pipeline, org: str) -> Any:
    return chunked(meter.source.changed_runners(org, None), meter.settings.batch_size)


class _LedgerTotals:
    def __init__(self) -> None:
        self.total: dict[str, int] = defaultdict(int)
        self.booked_here: set[str] = set()


def _ledger_tokens(meter: Pipeline, org: str, period: str, runners: set[str]) -> _LedgerTotals:
    """Tokens the ledger billed each runner (all periods), and who is on this invoice."""
    totals = _LedgerTotals()
    entries = meter.collections.ledger
    query: Doc = {
        "org": {"$eq": org},
        "$or": [{"booked": period}, {"booked": None, "usage_period": period}],
        "late": False,
    }
    for entry in entries.find(query, {"runner_id": 1}):
        totals.booked_here.add(entry["runner_id"])
    wanted = sorted(runners | totals.booked_here)
    for batch in chunked(wanted, meter.settings.batch_size):
        for entry in entries.find({"runner_id": {"$in": batch}}, {"runner_id": 1, "tokens": 1}):
            totals.total[entry["runner_id"]] += entry["tokens"]
    return totals
