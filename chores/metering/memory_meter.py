"""The metering core end to end, in memory: runner documents in, usage per invoice out.

What a run of the chore does over the database (ledger heads read, deltas appended, invoice
usage summed from the ledger by `$group`), done on a stream of documents with no I/O, so
that the core can be measured alone (benchmarks/) and checked against the chore (tests).

- `MemoryMeter.feed` judges each document (`rules.verdict`, the rules `assess` wraps)
  against the head the meter keeps for its runner, and adds each delta's tokens to the
  usage of its (org, period, model, key source, day): the `UsageGroup`s an invoice is
  priced from.
- `MemoryMeter.lines` prices every invoice's usage (`lines.price_lines`).

Heads are kept only for runners still running or held by an anomaly (a runner that finished
and billed cleanly is not observed again), so memory grows with those runners and the usage
groups, not with the documents.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from chores.metering.lines import GroupValues, InvoiceLine, LineMemo, UsageGroup, price_lines
from chores.metering.rules import DeltaValues, Head, _new, runner_key, verdict
from pricing import Registry

# A runner document and the `_context`s of the findings that spawned it (subagents only).
Observation = tuple[Mapping[str, Any], Sequence[Any]]
# A delta as the meter hands it out: org, period and `verdict`'s plain DeltaValues tuple.
Record = tuple[str, str, DeltaValues]
InvoiceKey = tuple[str, str]  # org, period ("YYYY-MM")
# org, period, model as recorded, byok, day of the month
UsageKey = tuple[str, str, str | None, bool, int]


@dataclass
class MemoryMeter:
    """Documents in, deltas summed into usage per invoice, invoice lines out. No I/O."""

    now: datetime
    max_tokens_per_run: int
    future_skew_seconds: float  # how far after `now` a usage time may be (Settings)
    heads: dict[str, Head] = field(default_factory=dict)  # by runner id
    usage: dict[UsageKey, list[int]] = field(default_factory=dict)  # input, cached, output, unsplit
    snapshots: int = 0
    deltas: int = 0
    anomalies: int = 0

    def feed(
        self, observations: Iterable[Observation], records: list[Record] | None = None
    ) -> None:
        """Meter a batch of documents; each delta is also appended to `records` when given."""
        heads: dict[str, Head] = self.heads
        usage: dict[UsageKey, list[int]] = self.usage
        now, ceiling, skew = self.now, self.max_tokens_per_run, self.future_skew_seconds
        snapshots = anomalies = billed = 0
        for doc, spawn_contexts in observations:
            snapshots += 1
            fields: dict[str, Any] = doc if type(doc) is dict else dict(doc)
            runner_id = runner_key(fields.get("_id"))
            org, period, pending, flagged, billed_cleanly, delta = verdict(
                fields, spawn_contexts, heads.get(runner_id), now, ceiling, skew, runner_id
            )
            if flagged:
                anomalies += len(flagged)
            if delta is not None:
                assert org is not None and period is not None  # set whenever a delta is
                billed += 1
                seq, model, byok, usage_time, high_water, tokens, _, _, _, _ = delta
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
                    heads[runner_id] = (seq, high_water)
                if records is not None:
                    records.append((org, period, delta))
            if not pending and billed_cleanly and heads:
                # Finished and billed: not observed again. A held observation (no org, a bad
                # end time, ...) keeps the head: the fixed document comes back.
                heads.pop(runner_id, None)
        self.snapshots += snapshots
        self.anomalies += anomalies
        self.deltas += billed

    def usage_groups(self) -> dict[InvoiceKey, list[UsageGroup]]:
        """The usage of every invoice, as the groups its lines are priced from."""
        dates: dict[tuple[str, int], date] = {}  # shared by every invoice of a period
        return {
            invoice: [_new(UsageGroup, group) for group in self._groups(keys, dates)]
            for invoice, keys in self._invoices().items()
        }

    def lines(self, registry: Registry) -> dict[InvoiceKey, list[InvoiceLine]]:
        """The invoice lines of every (org, period), each priced once from its usage."""
        seen: LineMemo = {}  # one registry for every invoice
        dates: dict[tuple[str, int], date] = {}
        return {
            invoice: price_lines(self._groups(keys, dates), registry, lines_seen=seen)
            for invoice, keys in self._invoices().items()
        }

    def _invoices(self) -> dict[InvoiceKey, list[UsageKey]]:
        """The usage keys of each invoice (the keys themselves: no new object per group)."""
        out: dict[InvoiceKey, list[UsageKey]] = {}
        for key in self.usage:
            invoice = (key[0], key[1])
            keys = out.get(invoice)
            if keys is None:
                out[invoice] = [key]
            else:
                keys.append(key)
        return out

    def _groups(
        self, keys: list[UsageKey], dates: dict[tuple[str, int], date]
    ) -> list[GroupValues]:
        """The usage under `keys` as plain group tuples, one invoice's at a time: dropped
        once priced (a month of them alive at once, the cyclic collector walks them again
        on every full collection). `dates` remembers each (period, day)'s date."""
        usage = self.usage
        groups: list[GroupValues] = []
        for key in keys:
            _, period, model, byok, day = key
            input, cached, output, unsplit = usage[key]
            when = dates.get((period, day))
            if when is None:
                year, month = period.split("-")
                when = dates[(period, day)] = date(int(year), int(month), day)
            groups.append((model, byok, False, when, input, cached, output, unsplit))
        return groups
