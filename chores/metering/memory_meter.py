"""The metering core end to end, in memory: runner documents in, usage per invoice out.

What a run of the chore does over the database (ledger heads read, deltas appended, invoice
usage summed from the ledger by `$group`), done on a stream of documents with no I/O, so
that the core can be measured alone (benchmarks/) and checked against the chore (tests).

- `MemoryMeter.feed` judges each document (`rules.Rules.assess`, as a run does)
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
from typing import Any, NamedTuple

from chores.metering.lines import InvoiceLine, LineMemo, TokenSums, UsageGroup, price_lines
from chores.metering.rules import Delta, LedgerHead, Rules, head_after
from chores.metering.runner_keys import runner_key
from pricing import Registry

# A runner document and the `_context`s of the findings that spawned it (subagents only).
Observation = tuple[Mapping[str, Any], Sequence[Any]]
InvoiceKey = tuple[str, str]  # org, period ("YYYY-MM")


class UsageKey(NamedTuple):
    """What a delta's tokens are summed by: everything that decides their price."""

    org: str
    period: str
    model: str | None
    byok: bool
    day: int  # of the month


@dataclass
class MemoryMeter:
    """Documents in, deltas summed into usage per invoice, invoice lines out. No I/O."""

    now: datetime
    max_tokens_per_run: int
    future_skew_seconds: float  # how far after `now` a usage time may be (Settings)
    heads: dict[str, LedgerHead] = field(default_factory=dict)  # by runner id
    usage: dict[UsageKey, TokenSums] = field(default_factory=dict)
    snapshots: int = 0
    deltas: int = 0
    anomalies: int = 0

    def feed(self, observations: Iterable[Observation], records: list[Delta] | None = None) -> None:
        """Meter a batch of documents; each delta is also appended to `records` when given."""
        rules = Rules(
            now=self.now,
            max_tokens_per_run=self.max_tokens_per_run,
            future_skew_seconds=self.future_skew_seconds,
        )
        for doc, spawn_contexts in observations:
            self.snapshots += 1
            runner_id = runner_key(doc.get("_id"))
            result = rules.assess(
                doc,
                spawn_contexts=spawn_contexts,
                head=self.heads.get(runner_id),
                runner_id=runner_id,
            )
            self.anomalies += len(result.anomalies)
            for delta in result.deltas:
                self.deltas += 1
                self._add(delta)
                if result.pending:
                    self.heads[runner_id] = head_after(self.heads.get(runner_id), delta)
                if records is not None:
                    records.append(delta)
            if result.billed_cleanly and not result.pending:
                # Finished and billed: not observed again. A held observation (no org, a bad
                # end time, ...) keeps the head: the fixed document comes back.
                self.heads.pop(runner_id, None)

    def _add(self, delta: Delta) -> None:
        """A delta's tokens, added to the usage of its (org, period, model, key source, day).
        An entry without tokens only moves a mark: no usage, as on an invoice
        (`ledger.EMPTY_ENTRY`)."""
        if not any(delta.tokens):
            return
        key = UsageKey(delta.org, delta.period, delta.model, delta.byok, delta.usage_time.day)
        sums = self.usage.get(key)
        if sums is None:
            sums = self.usage[key] = TokenSums()
        sums.add(delta.tokens)

    def usage_groups(self) -> dict[InvoiceKey, list[UsageGroup]]:
        """The usage of every invoice, as the groups its lines are priced from."""
        return {invoice: self._groups(keys) for invoice, keys in self._invoices().items()}

    def lines(self, registry: Registry) -> dict[InvoiceKey, list[InvoiceLine]]:
        """The invoice lines of every (org, period), each priced once from its usage."""
        seen: LineMemo = {}  # one registry for every invoice
        return {
            invoice: price_lines(self._groups(keys), registry, lines_seen=seen)
            for invoice, keys in self._invoices().items()
        }

    def _invoices(self) -> dict[InvoiceKey, list[UsageKey]]:
        """The usage keys of each invoice."""
        out: dict[InvoiceKey, list[UsageKey]] = {}
        for key in self.usage:
            out.setdefault((key.org, key.period), []).append(key)
        return out

    def _groups(self, keys: list[UsageKey]) -> list[UsageGroup]:
        """The usage under `keys` as usage groups, one invoice's at a time."""
        groups = []
        for key in keys:
            sums = self.usage[key]
            year, month = key.period.split("-")
            groups.append(
                UsageGroup(
                    model=key.model,
                    byok=key.byok,
                    late=False,
                    day=date(int(year), int(month), key.day),
                    input=sums.input,
                    cached=sums.cached,
                    output=sums.output,
                    unsplit=sums.unsplit,
                )
            )
        return groups
