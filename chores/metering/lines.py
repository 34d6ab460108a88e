"""Invoice lines, pure: usage groups in, priced lines out.

One line per (model, tier, price version, late). Amounts are exact `Decimal`
micros, rounded half-up once, per line. Since an amount is linear in tokens, the tokens
of every group on a line are summed first (`sum_by_line`, once per group: a month of a large
platform has hundreds of thousands of groups, and a few thousand lines) and multiplied by
the line's rates once: the same exact amount as summing the groups' amounts, for a few
Decimal operations per line instead of per group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from decimal import Context, Decimal, Inexact
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict

from chores.core.money import to_micros
from pricing import PriceVersion, Registry

__all__ = [  # what the rest of the package imports from here
    "InvoiceLine",
    "LineKey",
    "LineMemo",
    "Tier",
    "TokenCounts",
    "TokenSums",
    "UsageGroup",
    "amount_of",
    "line_key",
    "line_of",
    "price_group",
    "price_lines",
]


Tier = Literal["paid", "free", "byok"]


class TokenCounts(Protocol):
    """Anything that carries the four token counts (a `Breakdown`, a `UsageGroup`, ...)."""

    @property
    def input(self) -> int: ...
    @property
    def cached(self) -> int: ...
    @property
    def output(self) -> int: ...
    @property
    def unsplit(self) -> int: ...


@dataclass(slots=True)
class TokenSums:
    """Input (cached excluded), cached, output and unsplit tokens, summed."""

    input: int = 0
    cached: int = 0
    output: int = 0
    unsplit: int = 0

    def add(self, counts: TokenCounts) -> None:
        self.input += counts.input
        self.cached += counts.cached
        self.output += counts.output
        self.unsplit += counts.unsplit

    @property
    def tokens(self) -> int:
        return self.input + self.cached + self.output + self.unsplit


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


class LineKey(NamedTuple):
    """What makes an invoice line: usage that shares all four is one line."""

    model: str | None  # the registry id, or the raw name when the registry does not know it
    tier: Tier
    price_valid_from: str | None  # of the price version that prices it, None when unpriced
    late: bool


# (model, byok, late, day) -> what `line_of` said for it, with one registry
LineMemo = dict[tuple[str | None, bool, bool, date], tuple[LineKey, PriceVersion | None]]


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


def line_key(line: InvoiceLine) -> LineKey:
    """The key of an invoice line, as `line_of` gives it for its usage."""
    return LineKey(line.model, line.tier, line.price_valid_from, line.late)


# Products and sums of token counts and rates, exact: 80 digits hold any count up to 10^40
# times any rate the registry accepts, and a rounding would raise rather than pass silently
# (the default context keeps 28 digits, which a month of tokens at a 30-decimal rate can
# exceed).
EXACT = Context(prec=80, traps=[Inexact])


def exact_sum(amounts: Iterable[Decimal]) -> Decimal:
    """The sum of exact amounts, exactly (the default context would round to 28 digits)."""
    total = Decimal(0)
    for amount in amounts:
        total = EXACT.add(total, amount)
    return total


def amount_of(
    tier: Tier, price: PriceVersion | None, input: int, cached: int, output: int, unsplit: int
) -> Decimal | None:
    """Exact micros of tokens on a line at `price`: 0 for byok, None when unpriced."""
    if tier == "byok":
        return Decimal(0)
    if price is None:
        return None
    multiply, add = EXACT.multiply, EXACT.add
    return add(
        add(multiply(input + unsplit, price.input), multiply(cached, price.cached_rate)),
        multiply(output, price.output),
    )


def price_group(group: UsageGroup, registry: Registry) -> tuple[LineKey, Decimal | None]:
    """The invoice line a usage group belongs to, and its exact amount in micros (None when
    unpriced)."""
    key, price = line_of(group, registry)
    return key, amount_of(key.tier, price, group.input, group.cached, group.output, group.unsplit)


def line_of(group: UsageGroup, registry: Registry) -> tuple[LineKey, PriceVersion | None]:
    """The invoice line a usage group belongs to, and the rates that price it (None when it
    is unpriced, or byok: metered but charged 0)."""
    entry = registry.resolve(group.model)
    if group.byok:
        return LineKey(entry.id if entry else group.model, "byok", None, group.late), None
    if entry is None:  # an unknown model is never $0
        return LineKey(group.model, "paid", None, group.late), None
    price = entry.price_at(group.day)
    if price is None:
        return LineKey(entry.id, entry.tier, None, group.late), None
    return LineKey(entry.id, entry.tier, price.valid_from.isoformat(), group.late), price


def sum_by_line(
    groups: Iterable[UsageGroup], registry: Registry, memo: LineMemo
) -> tuple[dict[LineKey, TokenSums], dict[LineKey, PriceVersion | None]]:
    """The tokens of `groups` summed per line, and each line's rates (a line has one price
    version, or none). `memo` is read and filled."""
    sums: dict[LineKey, TokenSums] = {}
    prices: dict[LineKey, PriceVersion | None] = {}
    for group in groups:
        found = memo.get((group.model, group.byok, group.late, group.day))
        if found is None:
            found = memo[(group.model, group.byok, group.late, group.day)] = line_of(
                group, registry
            )
        key, price = found
        tokens = sums.get(key)
        if tokens is None:
            tokens = sums[key] = TokenSums()
            prices[key] = price
        tokens.add(group)
    return sums, prices


def price_lines(
    groups: Iterable[UsageGroup], registry: Registry, *, lines_seen: LineMemo | None = None
) -> list[InvoiceLine]:
    """Priced invoice lines for usage groups (SPEC §3 and §7).

    `lines_seen` remembers `line_of` across calls with the same registry (pricing many
    invoices of one run: the same models and days come back for every org).
    """
    memo: LineMemo = {} if lines_seen is None else lines_seen
    sums, prices = sum_by_line(groups, registry, memo)

    def order(key: LineKey) -> tuple[Any, ...]:
        """A total order: lines come out alike whatever order their groups came in (a
        model `None` and a model `""` tied, in review)."""
        model, since = key.model, key.price_valid_from
        return (key.late, model or "", model is not None, key.tier, since or "", since is not None)

    lines = []
    for key in sorted(sums, key=order):
        summed = sums[key]
        amount = amount_of(
            key.tier, prices[key], summed.input, summed.cached, summed.output, summed.unsplit
        )
        lines.append(
            InvoiceLine(
                model=key.model,
                tier=key.tier,
                price_valid_from=key.price_valid_from,
                priced=amount is not None,
                late=key.late,
                input_tokens=summed.input,
                cached_tokens=summed.cached,
                output_tokens=summed.output,
                unsplit_tokens=summed.unsplit,
                tokens=summed.tokens,
                amount_micros=None if amount is None else to_micros(amount),
            )
        )
    return lines
