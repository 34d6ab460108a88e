"""The ledger of one invoice period, as breakdowns read it: entries summed per runner.

`read_period` is the only I/O of the breakdowns: it reads one stored invoice
and the ledger entries it was built from. `entry_usages` (pure) sums those
entries per runner, raw model, key source, lateness, day and billed price into
`EntryUsage`s, each carrying what the ledger knows of its runner (`RunInfo`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, cast

from chores.billing.invoice import Invoice
from chores.billing.known_orgs import missing_invoice_hint
from chores.core.db import Collections, Doc
from chores.core.documents import check_shape
from chores.core.exceptions import InvoiceNotFound
from chores.metering.ledger import EMPTY_ENTRY, entry_shape
from chores.metering.lines import EXACT, LineKey, Tier, TokenSums, UsageGroup
from chores.metering.rules import MAX_LABEL
from chores.metering.runner_keys import runner_key, source_id_of
from chores.metering.source import chunked


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


# --- reading the ledger (pure) -------------------------------------------------------------


@dataclass
class _Summed:
    """The entries of one `EntryUsage`, summed: their tokens and exact amount (None as soon
    as one of them is unpriced)."""

    exact: Decimal | None
    tokens: TokenSums = field(default_factory=TokenSums)


def entry_usages(
    entries: Iterable[Mapping[str, Any]], statuses: Mapping[str, str] | None = None
) -> list[EntryUsage]:
    """Ledger entries summed per runner, raw model, key source, lateness, day and billed price.

    A runner's session and parent are those of its latest entry; its status is the one in
    `statuses` (its document's now, `source_statuses`), else its latest entry's: a run's
    last write often adds no tokens, so no entry records how it ended.
    """
    sums: dict[tuple[Any, ...], _Summed] = {}
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
            billed = LineKey(
                priced.get("model"), tier, priced.get("price_valid_from"), bool(entry["late"])
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
        summed = sums.get(key)
        if summed is None:
            summed = sums[key] = _Summed(exact=amount)
        elif summed.exact is not None:
            summed.exact = None if amount is None else EXACT.add(summed.exact, amount)
        summed.tokens.add(
            TokenSums(
                entry["input_tokens"],
                entry["cached_tokens"],
                entry["output_tokens"],
                entry["unsplit_tokens"],
            )
        )

    statuses = statuses or {}
    runs = {
        runner: _run_info(runner, entry, statuses.get(runner)) for runner, entry in latest.items()
    }
    return [
        EntryUsage(
            run=runs[runner],
            model=model,
            byok=byok,
            late=late,
            day=date.fromisoformat(day),
            input=summed.tokens.input,
            cached=summed.tokens.cached,
            output=summed.tokens.output,
            unsplit=summed.tokens.unsplit,
            billed_line=billed,
            billed_exact=summed.exact,
        )
        for (runner, model, byok, late, day, billed), summed in sums.items()
    ]


def _run_info(runner: str, entry: Mapping[str, Any], status: str | None) -> RunInfo:
    def text(name: str) -> str | None:
        value = entry.get(name)
        return value if isinstance(value, str) else None

    return RunInfo(
        runner_id=runner,
        model=text("model"),
        session_id=text("session_id"),
        subagent=entry.get("subagent") is True,
        parent_id=text("parent_id"),
        status=status or text("status"),
    )


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
        "org",  # an org edited into a list holding it still matches the query
    )
}
_ENTRY_SHAPE = entry_shape(_ENTRY_FIELDS)


def stored_invoice(collections: Collections, org: str, period: str) -> Invoice:
    """The stored invoice of `(org, period)`; `InvoiceNotFound` saying what to do if none."""
    doc = collections.invoices.find_one({"_id": f"{org}:{period}"})
    if doc is None:
        hint = missing_invoice_hint(collections, org, period)
        raise InvoiceNotFound(f"no invoice for org {org!r} in {period}; {hint}")
    return Invoice.read(doc, collections)


def read_period(
    collections: Collections,
    org: str,
    period: str,
    *,
    batch_size: int = 1000,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[Invoice, list[EntryUsage]]:
    """The stored invoice of `(org, period)` and its ledger entries, summed.

    The entries are those `Invoices.ledger_usage` sums the invoice from:
    booked into the period, or (drafts only) unbooked with usage in it.
    `on_progress(done, total)` is called as entries are read.
    """
    invoice = stored_invoice(collections, org, period)
    belongs: list[Doc] = [{"booked": period}]
    if invoice.status == "draft":
        belongs.append({"booked": None, "usage_period": period})
    # As the draft is built: an entry that only moved a high-water mark is no usage, no run.
    query: Doc = {"org": {"$eq": org}, "$or": belongs, "$nor": [EMPTY_ENTRY]}
    expected = collections.ledger.count_documents(query) if on_progress else 0
    entries: list[Doc] = []
    for entry in collections.ledger.find(query, _ENTRY_FIELDS, batch_size=batch_size):
        check_shape(_ENTRY_SHAPE, entry, collection=collections.ledger.name)
        entries.append(entry)
        if on_progress is not None and len(entries) % batch_size == 0:
            on_progress(len(entries), max(expected, len(entries)))
    if on_progress is not None:
        on_progress(len(entries), len(entries))
    runners = sorted({str(entry["runner_id"]) for entry in entries})
    return invoice, entry_usages(entries, source_statuses(collections, runners, batch_size))


def source_statuses(
    collections: Collections, runner_ids: Iterable[str], batch_size: int = 1000
) -> dict[str, str]:
    """The status each runner's document has now, by runner id (one read per batch): for
    the views only; a runner whose document is gone, or whose key does not show its `_id`
    (a digest), keeps its ledger's."""
    source_ids = [i for i in map(source_id_of, runner_ids) if i is not None]
    found: dict[str, str] = {}
    for batch in chunked(source_ids, batch_size):
        for doc in collections.tasks.find({"_id": {"$in": batch}}, {"status": 1}):
            status = doc.get("status")
            if type(status) is str and len(status) <= MAX_LABEL:
                found[runner_key(doc["_id"])] = status
    return found
