"""Usage groups summed by invoice line: the half of pricing that runs once per group.

`_lines.price_lines` prices an invoice in two steps: this module's `sum_by_line` finds each
usage group's line (`line_of`, remembered per model, key source, lateness and day) and adds
its tokens to the line's; `_lines` then multiplies each line's sums by its rates once. This
half is compiled with the metering core (setup.py): a month of a large platform has
hundreds of thousands of groups, and a few thousand lines.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from typing import Literal, NamedTuple

from pricing import PriceVersion, Registry

Tier = Literal["paid", "free", "byok"]


class UsageGroup(NamedTuple):
    """Ledger entries summed by everything that decides their price."""

    model: str | None
    byok: bool
    late: bool
    day: date
    input: int
    cached: int
    output: int
    unsplit: int


# A UsageGroup's values, as a plain tuple or a UsageGroup: model, byok, late, day, input,
# cached, output, unsplit.
GroupValues = tuple[str | None, bool, bool, date, int, int, int, int]
LineKey = tuple[str | None, Tier, str | None, bool]  # model, tier, price valid from, late
# (model, byok, late, day) -> what `line_of` said for it, with one registry
LineMemo = dict[tuple[str | None, bool, bool, date], tuple[LineKey, PriceVersion | None]]


def line_of(group: GroupValues, registry: Registry) -> tuple[LineKey, PriceVersion | None]:
    """The invoice line a usage group belongs to, and the rates that price it (None when it
    is unpriced, or byok: metered but charged 0)."""
    model, byok, late, day = group[0], group[1], group[2], group[3]
    entry = registry.resolve(model)
    if byok:
        return (entry.id if entry else model, "byok", None, late), None
    if entry is None:  # an unknown model is never $0
        return (model, "paid", None, late), None
    price = entry.price_at(day)
    if price is None:
        return (entry.id, entry.tier, None, late), None
    return (entry.id, entry.tier, price.valid_from.isoformat(), late), price


def sum_by_line(
    groups: Iterable[GroupValues], registry: Registry, memo: LineMemo
) -> tuple[dict[LineKey, list[int]], dict[LineKey, PriceVersion | None]]:
    """Input, cached, output and unsplit tokens summed per line, and each line's rates
    (a line has one price version, or none). `memo` is read and filled."""
    sums: dict[LineKey, list[int]] = {}
    prices: dict[LineKey, PriceVersion | None] = {}
    for group in groups:
        model, byok, late, day, input, cached, output, unsplit = group
        found = memo.get((model, byok, late, day))
        if found is None:
            found = memo[(model, byok, late, day)] = line_of(group, registry)
        key, price = found
        tokens = sums.get(key)
        if tokens is None:
            sums[key] = [input, cached, output, unsplit]
            prices[key] = price
        else:
            tokens[0] += input
            tokens[1] += cached
            tokens[2] += output
            tokens[3] += unsplit
    return sums, prices
