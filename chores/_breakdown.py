"""Usage breakdowns: which runs, sessions, models, days and tiers an invoice's amount comes from.

The unit is the *cell*: one runner's usage on one invoice line on one day.
Ledger entries of an invoice period are priced into cells, then each invoice
line's rounded `amount_micros` is split across its cells by the largest
remainder method on their exact amounts (ties go to the smaller
`(runner_id, day)`). Every view (`by` run, session, model, day or tier,
filtered or not) sums cells, so a run costs the same micros in every view and
the rows of any unfiltered view add up to the invoice, to the micro-dollar.

Which price decides a cell's line and exact amount (the weights of the split):
the invoice is the authority, so the pricing used is the one that reproduces
it. Candidates are the registry (`_lines.price_group`, what `build_invoice`
does) and the price each ledger entry was billed at (`priced_as`,
`amount_micros_exact`, stored when billed). A draft is re-priced from the
registry on every run, so the registry goes first; a final invoice keeps the
prices of the registry that finalized it, so the registry goes first only when
the invoice's `registry` fingerprint is the current one, else the billed
prices do. The first candidate whose lines, tokens and rounded line amounts
all equal the invoice's wins; failing that, the first whose lines and tokens
match (weights then only proportional, `exact=False`); failing both the
ledger holds usage the invoice does not, and `InvoiceOutOfDate` says to rerun.

Pure except `read_period`, which reads one invoice and its ledger entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from fractions import Fraction
from math import floor
from typing import Any, Literal, cast, get_args

from pricing import Registry

from ._db import Collections, Doc
from ._exceptions import ChoreError, InvoiceNotFound
from ._invoices import Invoice
from ._lines import InvoiceLine, LineKey, Tier, UsageGroup, price_group
from ._money import to_micros

By = Literal["run", "session", "model", "day", "tier"]
BY_CHOICES: tuple[str, ...] = get_args(By)
TIER_ORDER = ("paid", "free", "byok", "unpriced")
Pricing = Literal["registry", "billed"]


class InvoiceOutOfDate(ChoreError):
    """The ledger of a period holds usage its stored invoice does not show (yet)."""


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Usage:
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

    def __add__(self, other: Usage) -> Usage:
        amounts = [a for a in (self.amount_micros, other.amount_micros) if a is not None]
        return Usage(
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
class RunInfo:
    """What the ledger knows of a runner (from its latest entry)."""

    runner_id: str
    model: str | None
    session_id: str | None
    subagent: bool
    parent_id: str | None
    status: str | None


@dataclass(frozen=True, slots=True)
class EntryUsage:
    """Ledger entries of one runner summed by everything that decides their line and price."""

    run: RunInfo
    model: str | None
    byok: bool
    late: bool
    day: date
    input: int
    cached: int
    output: int
    unsplit: int
    billed_line: LineKey | None  # the line the entries were priced on when billed
    billed_exact: Decimal | None  # their exact amount then (None: unpriced)

    def group(self) -> UsageGroup:
        return UsageGroup(
            self.model,
            self.byok,
            self.late,
            self.day,
            self.input,
            self.cached,
            self.output,
            self.unsplit,
        )


@dataclass(frozen=True, slots=True)
class Cell:
    """One runner's usage on one invoice line on one day, with its share of the line."""

    run: RunInfo
    day: date
    line: LineKey
    usage: Usage
    exact: Decimal | None


@dataclass(frozen=True)
class Allocation:
    """An invoice split into cells; `exact` when the weights reproduce its line amounts."""

    invoice: Invoice
    cells: tuple[Cell, ...]
    pricing: Pricing
    exact: bool

    @property
    def total(self) -> Usage:
        return sum((c.usage for c in self.cells), Usage())


@dataclass(frozen=True, slots=True)
class Row:
    """One group of a breakdown: its key (None = not recorded), usage and runner count."""

    key: str | None
    usage: Usage
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
        if self.models:
            names = {(cell.run.model or "").casefold(), (cell.line[0] or "").casefold()}
            return bool(names & self.models)
        return True


# --- reading the ledger (pure) -------------------------------------------------------------


def entry_usages(entries: Iterable[Mapping[str, Any]]) -> list[EntryUsage]:
    """Ledger entries summed per runner, raw model, key source, lateness, day and billed price.

    A runner's session, parent and status are those of its latest entry.
    """
    sums: dict[tuple[Any, ...], list[Any]] = {}
    latest: dict[str, Mapping[str, Any]] = {}
    for entry in entries:
        runner = str(entry["runner_id"])
        known = latest.get(runner)
        if known is None or entry.get("seq", 0) > known.get("seq", 0):
            latest[runner] = entry
        priced = entry.get("priced_as")
        billed: LineKey | None = None
        if isinstance(priced, Mapping):
            tier = cast(Tier, priced.get("tier"))
            billed = (
                priced.get("model"),
                tier,
                priced.get("price_valid_from"),
                bool(entry["late"]),
            )
        key = (
            runner,
            entry.get("model"),
            bool(entry.get("byok")),
            bool(entry.get("late")),
            entry["usage_day"],
            billed,
        )
        exact = entry.get("amount_micros_exact")
        amount = None if exact is None or billed is None else Decimal(exact)
        counts = [
            entry["input_tokens"],
            entry["cached_tokens"],
            entry["output_tokens"],
            entry["unsplit_tokens"],
        ]
        if key not in sums:
            sums[key] = [*counts, amount]
            continue
        total = sums[key]
        for position, count in enumerate(counts):
            total[position] += count
        total[4] = None if total[4] is None or amount is None else total[4] + amount

    runs = {runner: _run_info(runner, entry) for runner, entry in latest.items()}
    return [
        EntryUsage(
            run=runs[runner],
            model=model,
            byok=byok,
            late=late,
            day=date.fromisoformat(day),
            input=s[0],
            cached=s[1],
            output=s[2],
            unsplit=s[3],
            billed_line=billed,
            billed_exact=s[4],
        )
        for (runner, model, byok, late, day, billed), s in sums.items()
    ]


def _run_info(runner: str, entry: Mapping[str, Any]) -> RunInfo:
    def text(name: str) -> str | None:
        value = entry.get(name)
        return value if isinstance(value, str) else None

    return RunInfo(
        runner_id=runner,
        model=text("model"),
        session_id=text("session_id"),
        subagent=entry.get("subagent") is True,
        parent_id=text("parent_id"),
        status=text("status"),
    )


# --- allocation ----------------------------------------------------------------------------


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
    quotas = [total * weight / weight_sum for _, weight in weights]
    shares = [floor(quota) for quota in quotas]
    left = total - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (shares[i] - quotas[i], weights[i][0]))
    for position in order[:left]:
        shares[position] += 1
    return shares


PriceFn = Callable[[EntryUsage], tuple[LineKey | None, Decimal | None]]


def _line_key(line: InvoiceLine) -> LineKey:
    return (line.model, line.tier, line.price_valid_from, line.late)


@dataclass
class _CellSum:
    run: RunInfo
    counts: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
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
        for position, count in enumerate((usage.input, usage.cached, usage.output, usage.unsplit)):
            cell.counts[position] += count
        cell.exact = None if cell.exact is None or exact is None else cell.exact + exact
    return lines


def _match(
    lines: Mapping[LineKey, Mapping[tuple[str, date], _CellSum]], invoice: Invoice
) -> tuple[bool, bool, str]:
    """`(lines and tokens match, rounded amounts match too, first difference)`."""
    stored = {_line_key(line): line for line in invoice.lines}
    exact = True
    for key in sorted(set(stored) | set(lines), key=repr):
        line, cells = stored.get(key), lines.get(key, {})
        counts = [sum(c.counts[i] for c in cells.values()) for i in range(4)]
        if line is None:
            return False, False, f"{sum(counts):,} tokens on {_describe(key)} are not invoiced"
        invoiced = [line.input_tokens, line.cached_tokens, line.output_tokens, line.unsplit_tokens]
        if counts != invoiced:
            return (
                False,
                False,
                (
                    f"{_describe(key)} has {sum(counts):,} tokens in the ledger, "
                    f"{sum(invoiced):,} on the invoice"
                ),
            )
        amounts = [c.exact for c in cells.values()]
        if any(a is None for a in amounts) != (line.amount_micros is None) and cells:
            return False, False, f"{_describe(key)} is priced differently from the invoice"
        if line.amount_micros is not None:
            exact_sum = sum((a for a in amounts if a is not None), Decimal(0))
            exact = exact and to_micros(exact_sum) == line.amount_micros
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
        f"run `chore run --org {invoice.org}` to rebuild the draft"
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
    amounts = {_line_key(line): line.amount_micros for line in invoice.lines}
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
                    (k, Fraction(sum(s.counts)))
                    for (k, _), (_, s) in zip(weights, members, strict=True)
                ]
            shares = list(largest_remainder(line_amount, weights))
        for ((_, day), s), share in zip(members, shares, strict=True):
            input_tokens, cached, output, unsplit = s.counts
            usage = Usage(
                input_tokens,
                cached,
                output,
                unsplit,
                amount_micros=share,
                unpriced_tokens=sum(s.counts) if share is None else 0,
            )
            cells.append(Cell(s.run, day, key, usage, s.exact))
    return Allocation(invoice, tuple(cells), pricing, exact)


# --- views ---------------------------------------------------------------------------------


def tier_of(cell: Cell) -> str:
    """`paid`, `free`, `byok`, or `unpriced` (usage nobody can charge yet)."""
    return "unpriced" if cell.usage.amount_micros is None else cell.line[1]


def _key(cell: Cell, by: By) -> str | None:
    if by == "run":
        return cell.run.runner_id
    if by == "session":
        return cell.run.session_id
    if by == "model":
        return cell.line[0]
    if by == "day":
        return cell.day.isoformat()
    return tier_of(cell)


def rows(cells: Iterable[Cell], by: By, filters: Filters | None = None) -> list[Row]:
    """Cells summed per `by` group: days in order, tiers paid/free/byok/unpriced, the
    rest by amount then tokens, largest first."""
    usage: dict[str | None, Usage] = defaultdict(Usage)
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


def total(table: Iterable[Row]) -> Usage:
    return sum((row.usage for row in table), Usage())


# --- run trees -----------------------------------------------------------------------------


@dataclass
class RunNode:
    """A runner with its subagents, or (`run` None) a session holding subagents whose
    spawning runner is not in the period."""

    session_id: str | None
    run: RunInfo | None
    own: Usage
    children: list[RunNode] = field(default_factory=list)
    total: Usage = field(default_factory=Usage)


def run_trees(cells: Iterable[Cell]) -> list[RunNode]:
    """Top-level runs (and orphan-holding sessions), costliest first, each with its tree."""
    nodes = {
        row.key: RunNode(row.run.session_id, row.run, row.usage)
        for row in rows(cells, "run")
        if row.key is not None and row.run is not None
    }
    sessions: dict[str | None, RunNode] = {}
    roots: list[RunNode] = []

    def hang_under_session(node: RunNode) -> None:
        holder = sessions.get(node.session_id)
        if holder is None:
            holder = sessions[node.session_id] = RunNode(node.session_id, None, Usage())
            roots.append(holder)
        holder.children.append(node)

    for runner, node in nodes.items():
        assert node.run is not None
        parent = node.run.parent_id
        if not node.run.subagent:
            roots.append(node)
        elif parent is not None and parent in nodes and parent != runner:
            nodes[parent].children.append(node)
        else:
            hang_under_session(node)
    # A parent chain that loops never reaches a root: cut it and hang it under its session.
    reached: set[int] = set()

    def reach(start: RunNode) -> None:
        stack = [start]
        while stack:
            node = stack.pop()
            reached.add(id(node))
            stack.extend(node.children)

    for root in list(roots):
        reach(root)
    for node in nodes.values():
        if id(node) not in reached:
            assert node.run is not None and node.run.parent_id is not None
            nodes[node.run.parent_id].children.remove(node)
            hang_under_session(node)
            reach(node)
    for node in _post_order(roots):
        node.total = sum((child.total for child in node.children), node.own)
        node.children.sort(key=_cost_order)
    return sorted(roots, key=_cost_order)


def _post_order(roots: Iterable[RunNode]) -> list[RunNode]:
    """Every node, children before parents (no recursion: trees may be deep)."""
    order: list[RunNode] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(node.children)
    return order[::-1]


def _cost_order(node: RunNode) -> tuple[Any, ...]:
    name = node.run.runner_id if node.run else f"session:{node.session_id}"
    return (-node.total.priced_micros, -node.total.tokens, name)


# --- I/O -----------------------------------------------------------------------------------

_ENTRY_FIELDS = {
    name: 1
    for name in (
        "runner_id",
        "seq",
        "model",
        "byok",
        "late",
        "usage_day",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "unsplit_tokens",
        "priced_as",
        "amount_micros_exact",
        "status",
        "session_id",
        "subagent",
        "parent_id",
    )
}


def read_period(
    collections: Collections,
    org: str,
    period: str,
    *,
    batch_size: int = 1000,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Invoice, list[EntryUsage]]:
    """The stored invoice of `(org, period)` and its ledger entries, summed.

    The entries are those `Invoices.usage_groups` builds the invoice from:
    booked into the period, or (drafts only) unbooked with usage in it.
    `on_progress(done, total)` is called as entries are read.
    """
    doc = collections.invoices.find_one({"_id": f"{org}:{period}"})
    if doc is None:
        raise InvoiceNotFound(
            f"no invoice for org {org!r} in {period}; run `chore run --org {org}` first"
        )
    invoice = Invoice.model_validate(doc)
    belongs: list[Doc] = [{"booked": period}]
    if invoice.status == "draft":
        belongs.append({"booked": None, "usage_period": period})
    query: Doc = {"org": {"$eq": org}, "$or": belongs}
    expected = collections.ledger.count_documents(query) if on_progress else 0
    entries: list[Doc] = []
    for entry in collections.ledger.find(query, _ENTRY_FIELDS, batch_size=batch_size):
        entries.append(entry)
        if on_progress is not None and len(entries) % batch_size == 0:
            on_progress(len(entries), max(expected, len(entries)))
    if on_progress is not None:
        on_progress(len(entries), len(entries))
    return invoice, entry_usages(entries)


def model_filter(names: Iterable[str], registry: Registry) -> frozenset[str]:
    """Case-folded names a `--model` filter admits: each name as given and its registry id."""
    admitted: set[str] = set()
    for name in names:
        admitted.add(name.casefold())
        entry = registry.resolve(name)
        if entry is not None:
            admitted.add(entry.id.casefold())
    return frozenset(admitted)
