"""The ledger: an append-only record of every delta billed, one entry per runner and step.

An entry's `_id` is `"<runner_id>:<seq>"`; entry `seq` holds the delta from the
high-water mark of entry `seq - 1` to its own. Because the id is unique, two
runs that computed the same next step can never both insert it, and a run that
crashed after inserting resumes from the entry it wrote: no transaction is
needed for exactly-once billing. Entries name their source runner and the
counters billed, so every charge traces back to a runner document.

An entry is later *booked* once into an invoice period: `booked` stays null
while its usage period is open (the entry belongs to that period), and is set
exactly once, by a conditional update, when a period is finalized or when the
entry arrived too late for a final period (then `late: true`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from pricing import Registry

from ._db import Collections, Doc
from ._lines import UsageGroup, price_group
from ._source import chunked
from ._usage import Counters, Delta, LedgerHead
from ._writes import insert_ignoring_duplicates


def entry_document(delta: Delta, *, billed_at: datetime, run_id: str, registry: Registry) -> Doc:
    """The ledger entry of a delta, with the price it had when billed (kept for the
    per-run views; invoices re-price drafts from `model` and `usage_day`)."""
    usage_time = delta.usage_time
    group = UsageGroup(
        model=delta.model,
        byok=delta.byok,
        late=False,
        day=usage_time.date(),
        input=delta.tokens.input,
        cached=delta.tokens.cached,
        output=delta.tokens.output,
        unsplit=delta.tokens.unsplit,
    )
    (line_model, tier, price_valid_from, _), amount = price_group(group, registry)
    return {
        "_id": f"{delta.runner_id}:{delta.seq}",
        "runner_id": delta.runner_id,
        "seq": delta.seq,
        "org": delta.org,
        "model": delta.model,
        "byok": delta.byok,
        "usage_time": usage_time,
        "usage_day": usage_time.date().isoformat(),
        "usage_period": delta.period,
        "booked": None,
        "late": False,
        "high_water": delta.high_water.as_dict(),
        "input_tokens": delta.tokens.input,
        "cached_tokens": delta.tokens.cached,
        "output_tokens": delta.tokens.output,
        "unsplit_tokens": delta.tokens.unsplit,
        "tokens": delta.tokens.tokens,
        "priced_as": {"model": line_model, "tier": tier, "price_valid_from": price_valid_from},
        "amount_micros_exact": None if amount is None else str(amount),
        "status": delta.status,
        "session_id": delta.session_id,
        "subagent": delta.subagent,
        "parent_id": delta.parent_id,
        "billed_at": billed_at,
        "run_id": run_id,
    }


class Ledger:
    def __init__(self, collections: Collections, *, batch_size: int):
        self._entries = collections.ledger
        self._batch_size = batch_size

    def heads(self, runner_ids: Sequence[str]) -> dict[str, LedgerHead]:
        """The latest entry of each runner (one query per batch of runners)."""
        heads: dict[str, LedgerHead] = {}
        for batch in chunked(runner_ids, self._batch_size):
            cursor = self._entries.find(
                {"runner_id": {"$in": batch}}, {"runner_id": 1, "seq": 1, "high_water": 1}
            )
            for entry in cursor:
                known = heads.get(entry["runner_id"])
                if known is None or entry["seq"] > known.seq:
                    heads[entry["runner_id"]] = LedgerHead(
                        entry["seq"], Counters.from_dict(entry["high_water"])
                    )
        return heads

    def append(self, entries: Sequence[Doc]) -> list[Doc]:
        """Insert entries in one round trip; the ones another run already wrote are skipped.

        Returns the entries this call wrote. Any error but a duplicate key propagates.
        """
        lost = insert_ignoring_duplicates(self._entries, entries)
        return [entry for i, entry in enumerate(entries) if i not in lost]

    def book_late(self, org: str, final_periods: Iterable[str], into: str) -> int:
        """Book unbooked entries of final periods into the open period `into` as late."""
        finals = sorted(set(final_periods))
        if not finals:
            return 0
        result = self._entries.update_many(
            {"org": {"$eq": org}, "usage_period": {"$in": finals}, "booked": None},
            {"$set": {"booked": into, "late": True}},
        )
        return result.modified_count

    def book_period(self, org: str, period: str) -> int:
        """Claim every unbooked entry of `period` for its (about to be final) invoice."""
        result = self._entries.update_many(
            {"org": {"$eq": org}, "usage_period": period, "booked": None},
            {"$set": {"booked": period, "late": False}},
        )
        return result.modified_count
