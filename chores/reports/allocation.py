"""Allocation: an invoice's rounded line amounts split across its cells, exactly.

Ledger entries of an invoice period (`EntryUsage`) are priced into cells, then
each invoice line's rounded `amount_micros` is split across its cells by the
largest remainder method on their exact amounts (ties go to the smaller
`(runner_id, day)`), so the cells of a line add up to it to the micro-dollar.

Which price decides a cell's line and exact amount (the weights of the split):
the invoice is the authority, so the pricing used is the one that reproduces
it. Candidates are the registry (`lines.price_group`, what `build_invoice`
does) and the price each ledger entry was billed at (`priced_as`,
`amount_micros_exact`, stored when billed). A draft is re-priced from the
registry on every run, so the registry goes first; a final invoice keeps the
prices of the registry that finalized it, so the registry goes first only when
the invoice's `registry` fingerprint is the current one, else the billed
prices do. The first candidate whose lines, tokens and rounded line amounts
all equal the invoice's wins; failing that, the first whose lines and tokens
match (weights then only proportional, `exact=False`); failing both the
ledger holds usage the invoice does not, and `InvoiceOutOfDate` says to rerun.

Pure.
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction
from math import floor
from typing import Any, Literal

from chores.billing.invoice import Invoice
from chores.billing.period_ledger import EntryUsage, RunInfo
from chores.core.exceptions import InvoiceOutOfDate
from chores.core.money import to_micros
from chores.metering.lines import EXACT, LineKey, TokenSums, exact_sum, line_key, price_group
from chores.reports.breakdown import AllocatedUsage, Cell
from pricing import Registry

Pricing = Literal["registry", "billed", "invoiced"]


@dataclass(frozen=True)
class Allocation:
    """An invoice split into cells; `exact` when the weights reproduce its line amounts."""

    invoice: Invoice
    cells: tuple[Cell, ...]
    pricing: Pricing
    exact: bool

    @property
    def total(self) -> AllocatedUsage:
        return sum((c.usage for c in self.cells), AllocatedUsage())


def largest_remainder(total: int, weights: Sequence[tuple[Any, Fraction]]) -> list[int]:
    """Split `total` into integers in proportion to `weights` (key, weight), exactly.

    Each share is the floor or ceiling of its quota; the units left after the
    floors go to the largest remainders, ties to the smaller key. All-zero
    weights split evenly.
    """
    if not weights:
        return []
    weight_sum = sum(weight for _, weight in weights)
    if weight_sum == 0:
        weights = [(key, Fraction(1)) for key, _ in weights]
        weight_sum = Fraction(len(weights))
    return _rounded(total, [(key, total * weight / weight_sum) for key, weight in weights])


def rounded_amounts(total: int, amounts: Sequence[tuple[Any, Fraction]]) -> list[int]:
    """Exact amounts (key, amount) whose sum rounds to `total`, each rounded to its floor or
    ceiling so that they add up to `total` (largest remainders first, ties to the smaller
    key). Unlike a proportional split, amounts of both signs keep their size: a credit of
    -75,000.4 and a charge of 75,000.6 on a line of 1 are -75,001 and 75,002, not scaled."""
    return _rounded(total, amounts)


def _rounded(total: int, quotas: Sequence[tuple[Any, Fraction]]) -> list[int]:
    """Each quota's floor, plus one for the largest remainders until the shares add up to
    `total` (the caller's quotas sum to within their count of it)."""
    shares = [floor(quota) for _, quota in quotas]
    left = total - sum(shares)
    order = sorted(range(len(quotas)), key=lambda i: (shares[i] - quotas[i][1], quotas[i][0]))
    for position in order[:left]:
        shares[position] += 1
    return shares


PriceFn = Callable[[EntryUsage], tuple[LineKey | None, Decimal | None]]


@dataclass
class _CellSum:
    run: RunInfo
    counts: TokenSums = field(default_factory=TokenSums)
    exact: Decimal | None = Decimal(0)


def _cells_by_line(
    usages: Sequence[EntryUsage], price: PriceFn
) -> dict[LineKey, dict[tuple[str, date], _CellSum]] | None:
    lines: dict[LineKey, dict[tuple[str, date], _CellSum]] = defaultdict(dict)
    for usage in usages:
        key, exact = price(usage)
        if key is None:
            return None
        cell = lines[key].setdefault((usage.run.runner_id, usage.day), _CellSum(usage.run))
        cell.counts.add(usage)
        cell.exact = None if cell.exact is None or exact is None else EXACT.add(cell.exact, exact)
    return lines


def _match(
    lines: Mapping[LineKey, Mapping[tuple[str, date], _CellSum]], invoice: Invoice
) -> tuple[bool, bool, str]:
    """`(lines and tokens match, rounded amounts match too, first difference)`."""
    stored = {line_key(line): line for line in invoice.lines}
    exact = True
    for key in sorted(set(stored) | set(lines), key=repr):
        line, cells = stored.get(key), lines.get(key, {})
        counts = TokenSums()
        for cell in cells.values():
            counts.add(cell.counts)
        if line is None:
            return False, False, f"{counts.tokens:,} tokens on {_describe(key)} are not invoiced"
        invoiced = TokenSums(
            line.input_tokens, line.cached_tokens, line.output_tokens, line.unsplit_tokens
        )
        if counts != invoiced:
            return (
                False,
                False,
                (
                    f"{_describe(key)} has {counts.tokens:,} tokens in the ledger, "
                    f"{invoiced.tokens:,} on the invoice"
                ),
            )
        amounts = [c.exact for c in cells.values()]
        if any(a is None for a in amounts) != (line.amount_micros is None) and cells:
            return False, False, f"{_describe(key)} is priced differently from the invoice"
        if line.amount_micros is not None:
            exact_total = exact_sum(a for a in amounts if a is not None)
            exact = exact and to_micros(exact_total) == line.amount_micros
    return True, exact, ""


def _describe(key: LineKey) -> str:
    model, tier, valid_from, late = key
    words = [model or "(no model)", tier, "late" if late else "", valid_from or ""]
    return "line " + " ".join(word for word in words if word)


def allocate(invoice: Invoice, usages: Sequence[EntryUsage], registry: Registry) -> Allocation:
    """Split `invoice` into cells whose amounts add up to each of its lines exactly."""

    def by_registry(usage: EntryUsage) -> tuple[LineKey | None, Decimal | None]:
        return price_group(usage.group(), registry)

    def as_billed(usage: EntryUsage) -> tuple[LineKey | None, Decimal | None]:
        return usage.billed_line, usage.billed_exact

    candidates: list[tuple[Pricing, PriceFn]] = [("registry", by_registry), ("billed", as_billed)]
    if invoice.status == "final" and invoice.registry != registry.fingerprint:
        candidates.reverse()
    if invoice.priced_with is not None:
        # The excerpt of the registry that priced the invoice: what reproduces it after a
        # retroactive change of the registry (rolled back, or a past price corrected).
        invoiced = Registry.model_validate(invoice.priced_with)

        def as_invoiced(usage: EntryUsage) -> tuple[LineKey | None, Decimal | None]:
            return price_group(usage.group(), invoiced)

        candidates.append(("invoiced", as_invoiced))
    consistent: tuple[Pricing, Mapping[LineKey, Mapping[tuple[str, date], _CellSum]]] | None = None
    first_problem = ""
    for name, price in candidates:
        lines = _cells_by_line(usages, price)
        if lines is None:
            first_problem = first_problem or "ledger entries without a billed price"
            continue
        matches, exact, problem = _match(lines, invoice)
        if matches and exact:
            return _split(invoice, lines, name, exact=True)
        if matches and consistent is None:
            consistent = (name, lines)
        first_problem = first_problem or problem
    if consistent is not None:
        return _split(invoice, consistent[1], consistent[0], exact=False)
    advice = (
        f"run `chore run --org {shlex.quote(invoice.org)}` to rebuild the draft"
        if invoice.status == "draft"
        else "the final invoice needs review"
    )
    raise InvoiceOutOfDate(
        f"the ledger of {invoice.id} does not match its {invoice.status} invoice "
        f"({first_problem}); {advice}"
    )


def _split(
    invoice: Invoice,
    lines: Mapping[LineKey, Mapping[tuple[str, date], _CellSum]],
    pricing: Pricing,
    *,
    exact: bool,
) -> Allocation:
    amounts = {line_key(line): line.amount_micros for line in invoice.lines}
    cells: list[Cell] = []
    for key in sorted(lines, key=repr):
        members = sorted(lines[key].items())
        line_amount = amounts[key]
        shares: list[int | None]
        if line_amount is None:
            shares = [None] * len(members)
        else:
            weights = [
                ((runner, day.isoformat()), Fraction(s.exact or 0)) for (runner, day), s in members
            ]
            if not any(weight for _, weight in weights):  # free or byok: split by tokens
                weights = [
                    (k, Fraction(s.counts.tokens))
                    for (k, _), (_, s) in zip(weights, members, strict=True)
                ]
                shares = list(largest_remainder(line_amount, weights))
            elif exact:  # the cells' own amounts add up to the line once rounded
                shares = list(rounded_amounts(line_amount, weights))
            else:
                shares = list(largest_remainder(line_amount, weights))
        for ((_, day), s), share in zip(members, shares, strict=True):
            usage = AllocatedUsage(
                s.counts.input,
                s.counts.cached,
                s.counts.output,
                s.counts.unsplit,
                amount_micros=share,
                unpriced_tokens=s.counts.tokens if share is None else 0,
            )
            cells.append(Cell(s.run, day, key, usage, s.exact))
    return Allocation(invoice, tuple(cells), pricing, exact)
