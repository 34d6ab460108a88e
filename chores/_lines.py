"""Invoice lines, pure: usage groups in, priced lines out.

One line per (model, tier, price version, late). Amounts are exact `Decimal`
micros per group, summed per line and rounded half-up once, per line.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from pricing import Registry

from ._money import to_micros

Tier = Literal["paid", "free", "byok"]


class InvoiceLine(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str | None
    tier: Tier
    price_valid_from: str | None
    priced: bool
    late: bool
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    unsplit_tokens: int
    tokens: int
    amount_micros: int | None


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """Ledger entries summed by everything that decides their price."""

    model: str | None
    byok: bool
    late: bool
    day: date
    input: int
    cached: int
    output: int
    unsplit: int


LineKey = tuple[str | None, Tier, str | None, bool]


def price_group(group: UsageGroup, registry: Registry) -> tuple[LineKey, Decimal | None]:
    """The invoice line a usage group belongs to, and its exact amount in micros (None when
    unpriced). Byok is metered but charged 0; an unknown model is never $0."""
    entry = registry.resolve(group.model)
    if group.byok:
        return (entry.id if entry else group.model, "byok", None, group.late), Decimal(0)
    if entry is None:
        return (group.model, "paid", None, group.late), None
    price = entry.price_at(group.day)
    if price is None:
        return (entry.id, entry.tier, None, group.late), None
    amount = (
        (group.input + group.unsplit) * price.input
        + group.cached * price.cached_rate
        + group.output * price.output
    )
    return (entry.id, entry.tier, price.valid_from.isoformat(), group.late), amount


def price_lines(groups: Iterable[UsageGroup], registry: Registry) -> list[InvoiceLine]:
    """Priced invoice lines for usage groups (SPEC §3 and §7)."""
    counts: dict[LineKey, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    amounts: dict[LineKey, Decimal | None] = {}
    for group in groups:
        key, amount = price_group(group, registry)
        sums = counts[key]
        sums[0] += group.input
        sums[1] += group.cached
        sums[2] += group.output
        sums[3] += group.unsplit
        previous = amounts.get(key, Decimal(0))
        amounts[key] = None if amount is None or previous is None else previous + amount

    def order(key: LineKey) -> tuple[Any, ...]:
        model, tier, valid_from, late = key
        return (late, model or "", tier, valid_from or "")

    lines = []
    for key in sorted(counts, key=order):
        model, tier, valid_from, late = key
        input_tokens, cached, output, unsplit = counts[key]
        amount = amounts[key]
        lines.append(
            InvoiceLine(
                model=model,
                tier=tier,
                price_valid_from=valid_from,
                priced=amount is not None,
                late=late,
                input_tokens=input_tokens,
                cached_tokens=cached,
                output_tokens=output,
                unsplit_tokens=unsplit,
                tokens=input_tokens + cached + output + unsplit,
                amount_micros=None if amount is None else to_micros(amount),
            )
        )
    return lines
