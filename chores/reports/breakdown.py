"""Usage breakdowns: the cell, and the views that sum cells by run, session, model, day or tier.

The unit is the *cell*: one runner's usage on one invoice line on one day,
with its share of the line's rounded amount (`allocation` makes the cells of
an invoice). Every view (`by` run, session, model, day or tier, filtered or
not) sums cells, so a run costs the same micros in every view and the rows of
any unfiltered view add up to the invoice, to the micro-dollar.

Pure.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal, get_args

from chores.billing.period_ledger import RunInfo
from chores.metering.lines import LineKey
from pricing import Registry

By = Literal["run", "session", "model", "day", "tier"]
BY_CHOICES: tuple[str, ...] = get_args(By)
TIER_ORDER = ("paid", "free", "byok", "unpriced")


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AllocatedUsage:
    """Tokens and allocated micros; `amount_micros` is None when none of it is priced."""

    input_tokens: int = 0
    cached_tokens: int = 0
    output_tokens: int = 0
    unsplit_tokens: int = 0
    amount_micros: int | None = None
    unpriced_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.cached_tokens + self.output_tokens + self.unsplit_tokens

    @property
    def priced_micros(self) -> int:
        return self.amount_micros or 0

    def __add__(self, other: AllocatedUsage) -> AllocatedUsage:
        amounts = [a for a in (self.amount_micros, other.amount_micros) if a is not None]
        return AllocatedUsage(
            self.input_tokens + other.input_tokens,
            self.cached_tokens + other.cached_tokens,
            self.output_tokens + other.output_tokens,
            self.unsplit_tokens + other.unsplit_tokens,
            sum(amounts) if amounts else None,
            self.unpriced_tokens + other.unpriced_tokens,
        )

    def as_dict(self) -> dict[str, int | None]:
        return {
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "output_tokens": self.output_tokens,
            "unsplit_tokens": self.unsplit_tokens,
            "tokens": self.tokens,
            "amount_micros": self.amount_micros,
            "unpriced_tokens": self.unpriced_tokens,
        }


@dataclass(frozen=True, slots=True)
class Cell:
    """One runner's usage on one invoice line on one day, with its share of the line."""

    run: RunInfo
    day: date
    line: LineKey
    usage: AllocatedUsage
    exact: Decimal | None


@dataclass(frozen=True, slots=True)
class Row:
    """One group of a breakdown: its key (None = not recorded), usage and runner count."""

    key: str | None
    usage: AllocatedUsage
    runs: int
    run: RunInfo | None = None  # the runner, for `by="run"`


@dataclass(frozen=True)
class Filters:
    """Which cells a breakdown keeps. `models` are case-folded raw names or registry ids."""

    models: frozenset[str] = frozenset()
    since: date | None = None
    until: date | None = None
    statuses: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return (
            bool(self.models or self.statuses) or self.since is not None or self.until is not None
        )

    def admits(self, cell: Cell) -> bool:
        if self.since is not None and cell.day < self.since:
            return False
        if self.until is not None and cell.day > self.until:
            return False
        if self.statuses and (cell.run.status or "").upper() not in self.statuses:
            return False
        if self.models:  # the cell's own line (a runner may have used several models)
            return (cell.line.model or "").casefold() in self.models
        return True


def model_filter(names: Iterable[str], registry: Registry) -> frozenset[str]:
    """Case-folded names a `--model` filter admits: each name as given and its registry id."""
    admitted: set[str] = set()
    for name in names:
        admitted.add(name.casefold())
        entry = registry.resolve(name)
        if entry is not None:
            admitted.add(entry.id.casefold())
    return frozenset(admitted)


# --- views ---------------------------------------------------------------------------------


def tier_of(cell: Cell) -> str:
    """`paid`, `free`, `byok`, or `unpriced` (usage nobody can charge yet)."""
    return "unpriced" if cell.usage.amount_micros is None else cell.line.tier


def _key(cell: Cell, by: By) -> str | None:
    if by == "run":
        return cell.run.runner_id
    if by == "session":
        return cell.run.session_id
    if by == "model":
        return cell.line.model
    if by == "day":
        return cell.day.isoformat()
    return tier_of(cell)


def rows(cells: Iterable[Cell], by: By, filters: Filters | None = None) -> list[Row]:
    """Cells summed per `by` group: days in order, tiers paid/free/byok/unpriced, the
    rest by amount then tokens, largest first."""
    usage: dict[str | None, AllocatedUsage] = defaultdict(AllocatedUsage)
    runners: dict[str | None, set[str]] = defaultdict(set)
    infos: dict[str | None, RunInfo] = {}
    for cell in cells:
        if filters is not None and not filters.admits(cell):
            continue
        key = _key(cell, by)
        usage[key] += cell.usage
        runners[key].add(cell.run.runner_id)
        infos[key] = cell.run

    def order(key: str | None) -> tuple[Any, ...]:
        if by == "day":
            return (key,)
        if by == "tier":
            return (TIER_ORDER.index(key) if key in TIER_ORDER else len(TIER_ORDER), key)
        return (-usage[key].priced_micros, -usage[key].tokens, key is None, key or "")

    return [
        Row(key, usage[key], len(runners[key]), infos[key] if by == "run" else None)
        for key in sorted(usage, key=order)
    ]


def total(table: Iterable[Row]) -> AllocatedUsage:
    return sum((row.usage for row in table), AllocatedUsage())


def registry_models(cells: Iterable[Cell]) -> dict[str, str]:
    """Each run's model as the invoice names it: the registry id (the raw name when the
    registry does not know it)."""
    ids: dict[str, set[str]] = defaultdict(set)
    for cell in cells:
        ids[cell.run.runner_id].add(cell.line.model or "(no model)")
    return {runner: ", ".join(sorted(names)) for runner, names in ids.items()}
