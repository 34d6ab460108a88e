"""The metering core end to end, in memory: runner documents in, usage per invoice out.

What a run of the chore does over the database (ledger heads read, deltas appended, invoice
usage summed from the ledger by `$group`), done on a stream of documents with no I/O, so
that the core can be measured alone (benchmarks/) and checked against the chore (tests).

- `MemoryMeter.feed` assesses each document (`_usage.assess`) against the head the meter
  keeps for its runner, and adds each delta's tokens to the usage of its
  (org, period, model, key source, day): the `UsageGroup`s an invoice is priced from.
- `MemoryMeter.lines` prices every invoice's usage (`_lines.price_lines`).

Heads are kept only for runners still running (a finished runner is not observed again),
so memory grows with the running runners and the usage groups, not with the documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pricing import Registry

from ._lines import InvoiceLine, LineMemo, UsageGroup, price_lines
from ._usage import Delta, LedgerHead, _new, assess, runner_key

# A runner document and the `_context`s of the findings that spawned it (subagents only).
Observation = tuple[Mapping[str, Any], Sequence[Any]]
# org, period ("YYYY-MM"), model as recorded, byok, day of the month
UsageKey = tuple[str, str, str | None, bool, int]
InvoiceKey = tuple[str, str]  # org, period


@dataclass
class MemoryMeter:
    """Documents in, deltas summed into usage per invoice, invoice lines out. No I/O."""

    now: datetime
    max_tokens_per_run: int
    heads: dict[str, LedgerHead] = field(default_factory=dict)  # by runner id
    usage: dict[UsageKey, list[int]] = field(default_factory=dict)  # input, cached, output, unsplit
    snapshots: int = 0
    deltas: int = 0
    anomalies: int = 0

    def feed(self, observations: Iterable[Observation], deltas: list[Delta] | None = None) -> None:
        """Meter a batch of documents; each delta is also appended to `deltas` when given."""
        heads: dict[str, LedgerHead] = self.heads
        usage: dict[UsageKey, list[int]] = self.usage
        now, ceiling = self.now, self.max_tokens_per_run
        snapshots = anomalies = billed = 0
        for doc, spawn_contexts in observations:
            snapshots += 1
            runner_id = runner_key(doc.get("_id"))
            _, org, period, pending, delta, flagged, _ = assess(
                doc,
                spawn_contexts=spawn_contexts,
                head=heads.get(runner_id),
                now=now,
                max_tokens_per_run=ceiling,
                runner_id=runner_id,
            )
            if flagged:
                anomalies += len(flagged)
            if delta is not None:
                assert org is not None and period is not None  # set whenever a delta is
                billed += 1
                # (a Delta unpacked at once rather than read field by field: the hot path)
                _, seq, _, model, byok, usage_time, high_water, tokens, _, _, _, _ = delta
                input, cached, output, unsplit = tokens
                # `period` is the period of the delta's usage time, already computed
                key = (org, period, model, byok, usage_time.day)
                sums = usage.get(key)
                if sums is None:
                    usage[key] = [input, cached, output, unsplit]
                else:
                    sums[0] += input
                    sums[1] += cached
                    sums[2] += output
                    sums[3] += unsplit
                if pending:
                    heads[runner_id] = _new(LedgerHead, (seq, high_water))
                if deltas is not None:
                    deltas.append(delta)
            if not pending and heads:
                heads.pop(runner_id, None)
        self.snapshots += snapshots
        self.anomalies += anomalies
        self.deltas += billed

    def usage_groups(self) -> dict[InvoiceKey, list[UsageGroup]]:
        """The usage of every invoice, as the groups its lines are priced from."""
        out: dict[InvoiceKey, list[UsageGroup]] = {}
        for (org, period, model, byok, day), (inp, cached, output, unsplit) in self.usage.items():
            year, month = period.split("-")
            group = UsageGroup(
                model, byok, False, date(int(year), int(month), day), inp, cached, output, unsplit
            )
            out.setdefault((org, period), []).append(group)
        return out

    def lines(self, registry: Registry) -> dict[InvoiceKey, list[InvoiceLine]]:
        """The invoice lines of every (org, period), each priced once from its usage."""
        seen: LineMemo = {}  # one registry for every invoice
        return {
            key: price_lines(groups, registry, lines_seen=seen)
            for key, groups in self.usage_groups().items()
        }
