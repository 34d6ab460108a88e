"""An independent reference pricer: the invoices a corpus must produce, from SPEC §1–§3 and §7.

It starts from what the runners really consumed (`Corpus.truth`, known by construction,
not read back from runner documents) and prices it the straightforward way: every
runner's own usage is one lump at its usage time, lines are summed exactly in `Decimal`
and rounded half-up once per line. It uses no code of `chores` (only the `OwnUsage`
record of the corpus generator and `pricing`'s name resolution and effective dating), so
a bug in the metering code cannot hide in the reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from chores.demo.corpus import OwnUsage
from pricing import Registry

LineKey = tuple[str | None, str, str | None, bool]  # (model, tier, price_valid_from, late)

LINE_FIELDS = (
    "model",
    "tier",
    "price_valid_from",
    "priced",
    "late",
    "input_tokens",
    "cached_tokens",
    "output_tokens",
    "unsplit_tokens",
    "tokens",
    "amount_micros",
)


def month(moment: datetime) -> str:
    """The UTC calendar month of an aware (or naive = UTC) datetime, as `YYYY-MM`."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment.year:04d}-{moment.month:02d}"


def round_micros(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


@dataclass
class _Line:
    input: int = 0
    cached: int = 0
    output: int = 0
    unsplit: int = 0
    amount: Decimal | None = field(default_factory=Decimal)  # exact micros; None = unpriced

    def document(self, key: LineKey) -> dict[str, Any]:
        model, tier, valid_from, late = key
        return {
            "model": model,
            "tier": tier,
            "price_valid_from": valid_from,
            "priced": self.amount is not None,
            "late": late,
            "input_tokens": self.input,
            "cached_tokens": self.cached,
            "output_tokens": self.output,
            "unsplit_tokens": self.unsplit,
            "tokens": self.input + self.cached + self.output + self.unsplit,
            "amount_micros": None if self.amount is None else round_micros(self.amount),
        }


def _line_of(
    usage: OwnUsage, when: datetime, late: bool, registry: Registry
) -> tuple[LineKey, Decimal | None]:
    """The line a runner's usage goes to, and its exact amount in micro-dollars.

    Rates are USD per 1,000,000 tokens, so `tokens x rate` is already micro-dollars.
    """
    entry = registry.resolve(usage.model)
    if usage.byok:
        return (entry.id if entry else usage.model, "byok", None, late), Decimal(0)
    if entry is None:
        return (usage.model, "paid", None, late), None
    price = entry.price_at(when)
    if price is None:
        return (entry.id, entry.tier, None, late), None
    cached_rate = price.input if price.cached_input is None else price.cached_input
    amount = (
        usage.input * price.input
        + usage.unsplit * price.input
        + usage.cached * cached_rate
        + usage.completion * price.output
    )
    return (entry.id, entry.tier, price.valid_from.isoformat(), late), amount


def expected_invoices(
    usages: Iterable[OwnUsage],
    *,
    now: datetime,
    registry: Registry,
    late_runners: Collection[str] = (),
    late_into: str | None = None,
    review: Iterable[tuple[str, str]] = (),
) -> dict[str, dict[str, Any]]:
    """The invoices, by `_id`, that billing `usages` once must give.

    - usage time: `end_time`, or `now` for a runner still running;
    - period: the UTC month of the usage time, except for `late_runners` (runners first
      billed after the period of their usage was finalized), which go to `late_into`
      (default: `now`'s month) on `late` lines, still priced at their own usage time;
    - `review`: `(org, period)` pairs an anomaly touched (their invoice needs review and
      exists even without usage).
    """
    lines: dict[tuple[str, str], dict[LineKey, _Line]] = defaultdict(dict)
    runners: dict[tuple[str, str], set[str]] = defaultdict(set)
    late_period = late_into or month(now)
    for usage in usages:
        when = usage.end_time or now
        late = usage.runner_id in late_runners
        pair = (usage.org, late_period if late else month(when))
        key, amount = _line_of(usage, when, late, registry)
        line = lines[pair].setdefault(key, _Line())
        line.input += usage.prompt - usage.cached
        line.cached += usage.cached
        line.output += usage.completion
        line.unsplit += usage.unsplit
        line.amount = None if amount is None or line.amount is None else line.amount + amount
        runners[pair].add(usage.runner_id)

    flagged = set(review)
    invoices: dict[str, dict[str, Any]] = {}
    for org, period in sorted(set(lines) | flagged):
        docs = [line.document(key) for key, line in lines[(org, period)].items()]
        invoices[f"{org}:{period}"] = {
            "_id": f"{org}:{period}",
            "org": org,
            "period": period,
            "lines": keyed(docs),
            "total_micros": sum(d["amount_micros"] for d in docs if d["priced"]),
            "unpriced_tokens": sum(d["tokens"] for d in docs if not d["priced"]),
            "runs": len(runners[(org, period)]),
            "needs_review": (org, period) in flagged or any(not d["priced"] for d in docs),
        }
    return invoices


def keyed(lines: Iterable[Mapping[str, Any]]) -> dict[LineKey, dict[str, Any]]:
    """Invoice lines by (model, tier, price_valid_from, late); a key given twice is an error."""
    result: dict[LineKey, dict[str, Any]] = {}
    for line in lines:
        key = (line["model"], line["tier"], line["price_valid_from"], line["late"])
        assert key not in result, f"two invoice lines for {key}"
        result[key] = {name: line[name] for name in LINE_FIELDS}
    return result


def observed(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """A stored invoice in the shape of `expected_invoices`' values."""
    return {
        "_id": invoice["_id"],
        "org": invoice["org"],
        "period": invoice["period"],
        "lines": keyed(invoice["lines"]),
        "total_micros": invoice["total_micros"],
        "unpriced_tokens": invoice["unpriced_tokens"],
        "runs": invoice["runs"],
        "needs_review": invoice["needs_review"],
    }


def tokens_by_org(usages: Iterable[OwnUsage]) -> dict[str, int]:
    totals: dict[str, int] = defaultdict(int)
    for usage in usages:
        totals[usage.org] += usage.tokens
    return dict(totals)
