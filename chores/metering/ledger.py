"""The ledger: an append-only record of every delta billed, one entry per runner and step.

An entry's `_id` is `"<runner_id>:<seq>"`; entry `seq` holds the delta from the
high-water mark of entry `seq - 1` to its own. Because the id is unique, two
runs that computed the same next step can never both insert it, and a run that
crashed after inserting resumes from the entry it wrote: no transaction is
needed for exactly-once billing. Entries name their source runner and the
counters billed, so every charge traces back to a runner document.

An entry belongs to the invoice of its usage period while `booked` is null. A draft
holds an entry once the entry is *folded* (`fold` = the build that added it to the
draft's sums, `drafts`): each build reads only the unfolded entries, so a run costs
what changed, not the month. A finalize *stamps* every entry of the period it closes
(`booked` = the period, `fence` = its fencing token) and freezes the draft only if the
draft holds exactly the entries stamped with its token. After that, an entry of a final
period that is unbooked, or booked there under another token (a stale finalizer's, or a
late booker's that raced the freeze), is not on the final invoice: a sweep moves it, by
a conditional update, into the open period as late usage (`late: true`).
docs/design.md walks through why this holds under crash and overlap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, NoReturn, NotRequired, get_type_hints

from pydantic import TypeAdapter
from pymongo.collection import Collection
from typing_extensions import TypedDict

from chores.core.db import Collections, Doc
from chores.core.documents import (
    Day,
    DecimalText,
    Flag,
    Integer,
    Moment,
    Period,
    Text,
    check_shape,
    holds,
)
from chores.core.exceptions import MalformedDocument
from chores.core.writes import insert_ignoring_duplicates
from chores.metering.counters import Breakdown, Counters
from chores.metering.lines import Tier, UsageGroup, price_group
from chores.metering.rules import BookedLine, BookedOn, Delta, LedgerHead, add_to_lines
from chores.metering.source import chunked
from pricing import Registry


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
    line, amount = price_group(group, registry)
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
        "fence": None,
        "fold": None,
        "high_water": delta.high_water.as_dict(),
        "input_tokens": delta.tokens.input,
        "cached_tokens": delta.tokens.cached,
        "output_tokens": delta.tokens.output,
        "unsplit_tokens": delta.tokens.unsplit,
        "tokens": delta.tokens.tokens,
        "priced_as": {
            "model": line.model,
            "tier": line.tier,
            "price_valid_from": line.price_valid_from,
        },
        "amount_micros_exact": None if amount is None else str(amount),
        "status": delta.status,
        "session_id": delta.session_id,
        "subagent": delta.subagent,
        "parent_id": delta.parent_id,
        "billed_at": billed_at,
        "run_id": run_id,
    }


class _HighWater(TypedDict):
    total: Integer
    prompt: Integer
    completion: Integer
    cached: Integer


class _PricedAs(TypedDict):
    model: Text | None
    tier: Tier
    price_valid_from: Day | None


class _Entry(TypedDict):
    """An entry's fields as `entry_document` writes them, and a finalize and a sweep set
    them (`booked`, `late`, `fence`, `fold`). A reader checks those it reads
    (`entry_shape`): an entry edited by hand is a `MalformedDocument`, never a sum that
    skips it or a traceback."""

    runner_id: Text
    seq: Integer
    org: Text
    model: Text | None
    byok: Flag
    usage_time: Moment
    usage_day: Day
    usage_period: Period
    booked: Period | None
    late: Flag
    fence: Integer | None
    fold: Integer | None
    high_water: _HighWater
    input_tokens: Integer
    cached_tokens: Integer
    output_tokens: Integer
    unsplit_tokens: Integer
    tokens: Integer
    priced_as: _PricedAs | None
    amount_micros_exact: DecimalText | None
    status: Text | None
    session_id: Text | None
    subagent: Flag
    parent_id: Text | None
    billed_at: Moment
    run_id: Text


_ENTRY_TYPES = get_type_hints(_Entry, include_extras=True)
# Fields an entry written by an earlier version may lack (its readers take them with a
# default): the others every entry has held from the first.
ADDED_LATER = frozenset(
    {"priced_as", "amount_micros_exact", "subagent", "parent_id", "fence", "fold"}
)


def entry_shape(fields: Iterable[str]) -> TypeAdapter[Any]:
    """What an entry read with these fields projected must hold: each one, as written
    (one `ADDED_LATER` only when it is there)."""
    shape = {
        name: NotRequired[_ENTRY_TYPES[name]] if name in ADDED_LATER else _ENTRY_TYPES[name]
        for name in fields
        if name != "_id"
    }
    return TypeAdapter(TypedDict("LedgerEntry", shape))  # type: ignore[operator]


# An entry that only moved a high-water mark: no usage, no line, not counted on an invoice.
# The rules write one when only cached tokens beyond prompt moved: the mark must be kept
# (SPEC §1.5-1.6: a later drop is `counter_decreased`, and usage bills from the highest
# counters).
EMPTY_ENTRY: Doc = {"input_tokens": 0, "cached_tokens": 0, "output_tokens": 0, "unsplit_tokens": 0}


HEAD_FIELDS = {
    "runner_id": 1,
    "seq": 1,
    "org": 1,
    "high_water": 1,
    "model": 1,
    "byok": 1,
    "usage_time": 1,
    "usage_period": 1,
    "billed_at": 1,
    "input_tokens": 1,
    "cached_tokens": 1,
    "output_tokens": 1,
    "unsplit_tokens": 1,
}
HEAD_SHAPE = entry_shape(HEAD_FIELDS)


def _booked_on(entry: Doc) -> BookedOn | None:
    """The line an entry's tokens were priced on (its org, model, key source and usage
    time); None for an entry without them."""
    org, usage_time, period = entry.get("org"), entry.get("usage_time"), entry.get("usage_period")
    if not (isinstance(org, str) and isinstance(usage_time, datetime) and isinstance(period, str)):
        return None
    return BookedOn(org, entry.get("model"), entry.get("byok") is True, usage_time, period)


def _head(entries: list[Doc]) -> LedgerHead:
    """A runner's head from all its entries: the latest, and the tokens of each line."""
    entries.sort(key=lambda entry: entry["seq"])
    lines: tuple[BookedLine, ...] = ()
    for entry in entries:
        line = _booked_on(entry)
        if line is not None:
            lines = add_to_lines(lines, line, entry_tokens(entry))
    latest = entries[-1]
    billed_at = latest.get("billed_at")
    return LedgerHead(
        latest["seq"],
        Counters.from_dict(latest["high_water"]),
        _booked_on(latest),
        billed_at if isinstance(billed_at, datetime) else None,
        lines,
    )


def entry_tokens(entry: Doc) -> Breakdown:
    """The tokens a ledger entry booked, by kind."""
    return Breakdown(
        entry.get("input_tokens", 0),
        entry.get("cached_tokens", 0),
        entry.get("output_tokens", 0),
        entry.get("unsplit_tokens", 0),
    )


class Ledger:
    def __init__(self, collections: Collections, *, batch_size: int):
        self._entries = collections.ledger
        self._batch_size = batch_size

    def heads(self, runner_ids: Sequence[str]) -> dict[str, LedgerHead]:
        """The latest entry of each runner, with the tokens all its entries booked on each
        line (one query per batch of runners)."""
        entries: dict[str, list[Doc]] = {}
        for batch in chunked(runner_ids, self._batch_size):
            for entry in self._entries.find({"runner_id": {"$in": batch}}, HEAD_FIELDS):
                check_shape(HEAD_SHAPE, entry, collection=self._entries.name)
                entries.setdefault(entry["runner_id"], []).append(entry)
        return {runner: _head(its) for runner, its in entries.items()}

    def append(self, entries: Sequence[Doc]) -> list[Doc]:
        """Insert entries in one round trip; the ones another run already wrote are skipped.

        Returns the entries this call wrote. Any error but a duplicate key propagates.
        """
        lost = insert_ignoring_duplicates(self._entries, entries)
        return [entry for i, entry in enumerate(entries) if i not in lost]

    def append_steps(self, entries: Sequence[Doc]) -> list[Doc]:
        """Insert entries in waves, a runner's in sequence order, each only once this call
        wrote the one before it: the entry after one another run wrote first was computed
        from a mark that is not the ledger's, and is left out (the runner is read again).
        One round trip per wave: one as a rule, one more per line a step moves reclassified
        tokens on (`rules.reclassify`). Returns the entries this call wrote."""
        chains: dict[str, list[Doc]] = {}
        for entry in sorted(entries, key=lambda e: e["seq"]):
            chains.setdefault(entry["runner_id"], []).append(entry)
        written: list[Doc] = []
        next_of = dict.fromkeys(chains, 0)  # each runner's next entry to insert
        wave = [chain[0] for chain in chains.values()]
        while wave:
            landed = self.append(wave)
            written += landed
            wave = []
            for entry in landed:
                runner = entry["runner_id"]
                next_of[runner] += 1
                if next_of[runner] < len(chains[runner]):
                    wave.append(chains[runner][next_of[runner]])
        return written

    def stamp(self, org: str, period: str, fence: int) -> None:
        """Claim every entry of `period` for a finalize holding token `fence`.

        Entries stamped by an older token are taken over; a newer token's are left
        alone, so a stale finalizer can only stamp entries that nobody holds.
        """
        older: Doc = {"$or": [{"fence": None}, {"fence": {"$lt": fence}}]}
        self._entries.update_many(
            {"org": {"$eq": org}, "booked": period, **older}, {"$set": {"fence": fence}}
        )
        self._entries.update_many(
            {"org": {"$eq": org}, "usage_period": period, "booked": None},
            {"$set": {"booked": period, "late": False, "fence": fence}},
        )

    def highest_stamp(self, org: str, period: str) -> int | None:
        """The highest finalize token any entry booked into `period` carries (None: none)."""
        stamped = self._entries.find_one(
            {"org": {"$eq": org}, "booked": period, "fence": {"$ne": None}},
            {"fence": 1},
            sort=[("fence", -1)],
        )
        return None if stamped is None else int(stamped["fence"])

    def count_stamped(self, org: str, period: str, fence: int) -> int:
        """Entries with usage that carry this finalize's stamp (what a draft counts)."""
        return self._entries.count_documents(
            {"org": {"$eq": org}, "booked": period, "fence": fence, "$nor": [EMPTY_ENTRY]}
        )

    def unfolded(self, pairs: set[tuple[str, str]], *, limit: int) -> list[Doc]:
        """Up to `limit` entries of these `(org, period)` invoices that no draft holds yet
        (one indexed query: what changed since the drafts were built, not the month)."""
        if not pairs:
            return []
        clauses: list[Doc] = []
        for period, orgs in sorted(_orgs_by_period(pairs).items()):
            clauses.append({"org": {"$in": orgs}, "booked": period})
            clauses.append({"org": {"$in": orgs}, "booked": None, "usage_period": period})
        found = list(self._entries.find({"fold": None, "$or": clauses}, FOLD_FIELDS, limit=limit))
        for entry in found:
            check_shape(FOLD_SHAPE, entry, collection=self._entries.name)
        return found

    def flag_folded(self, folded: Sequence[tuple[tuple[str, str], Sequence[str], int]]) -> None:
        """Mark entries as held by the drafts of their pairs: `(pair, entry ids, the build
        that committed them)` each, one round trip per period and build.

        Only entries still unfolded and still in that pair: a sweep may have moved one
        out of a final period since (it unfolds what it moves), and a late flag must not
        hide it from the draft it moved to.
        """
        by_period_and_build: dict[tuple[str, int], list[str]] = {}
        for (_, period), ids, build in folded:
            by_period_and_build.setdefault((period, build), []).extend(ids)
        for (period, build), ids in sorted(by_period_and_build.items()):
            if ids:
                self._entries.update_many(
                    {"_id": {"$in": ids}, "fold": None, "booked": {"$in": [None, period]}},
                    {"$set": {"fold": build}},
                )

    def runners_held(self, entries: Sequence[Doc]) -> set[tuple[str, str, str]]:
        """`(org, period, runner_id)` of these entries' runners that some folded entry with
        usage already puts on the draft of that pair (a run is counted once per invoice)."""
        runners = sorted({entry["runner_id"] for entry in entries})
        held: set[tuple[str, str, str]] = set()
        for batch in chunked(runners, self._batch_size):
            query: Doc = {"runner_id": {"$in": batch}, "fold": {"$ne": None}, "$nor": [EMPTY_ENTRY]}
            for entry in self._entries.find(query, FOLD_FIELDS):
                check_shape(FOLD_SHAPE, entry, collection=self._entries.name)
                held.add((*pair_of(entry), entry["runner_id"]))
        return held

    def count_stamped_unfolded(self, org: str, period: str, fence: int) -> int:
        """Entries with usage stamped by this finalize that no draft holds yet."""
        return self._entries.count_documents(
            {
                "org": {"$eq": org},
                "booked": period,
                "fence": fence,
                "fold": None,
                "$nor": [EMPTY_ENTRY],
            }
        )

    def with_stragglers(
        self, finals: Sequence[tuple[str, str, int | None]]
    ) -> set[tuple[str, str]]:
        """Which of these final periods, `(org, period, the token that froze it)`, have
        entries their invoice does not hold: one grouped read per batch of periods, so
        that checking every final period of a long history stays a few round trips."""
        found: set[tuple[str, str]] = set()
        for batch in chunked(finals, self._batch_size):
            clauses = [c for org, period, fence in batch for c in _stragglers(org, period, fence)]
            pipeline: list[Doc] = [
                {"$match": {"$or": clauses}},
                {"$group": {"_id": {"org": "$org", "period": BOOKED_PERIOD}}},
            ]
            rows = list(self._entries.aggregate(pipeline, allowDiskUse=True))
            for row in rows:
                check_pair_row(self._entries, row, {"$or": clauses})
                found.add((row["_id"]["org"], row["_id"]["period"]))
        return found & {(org, period) for org, period, _ in finals}

    def sweep(self, org: str, period: str, closed_fence: int | None, into: str) -> None:
        """Move the entries of the final `period` that its invoice does not hold
        (`_stragglers`) into `into`, late, and unfolded: the draft of `into` adds them at
        its next build."""
        self._entries.update_many(
            {"$or": _stragglers(org, period, closed_fence)},
            {"$set": {"booked": into, "late": True, "fence": None, "fold": None}},
        )


# What a draft build reads of an entry.
FOLD_FIELDS: Doc = {
    "org": 1,
    "runner_id": 1,
    "usage_period": 1,
    "booked": 1,
    "model": 1,
    "byok": 1,
    "late": 1,
    "usage_day": 1,
    "input_tokens": 1,
    "cached_tokens": 1,
    "output_tokens": 1,
    "unsplit_tokens": 1,
}
FOLD_SHAPE = entry_shape(FOLD_FIELDS)


class _Pair(TypedDict):
    org: Text
    period: Period


class _PairRow(TypedDict):
    _id: _Pair


_PAIR_ROW = TypeAdapter(_PairRow)  # a `$group` by (org, BOOKED_PERIOD)


def check_pair_row(entries: Collection[Doc], row: Doc, match: Doc) -> None:
    """Refuse a row of a `$group` of the entries matching `match` by `(org, BOOKED_PERIOD)`
    unless it names an org and a period (`refuse_malformed_entry` says which entry)."""
    if not holds(_PAIR_ROW, row):
        refuse_malformed_entry(entries, match)


def refuse_malformed_entry(entries: Collection[Doc], match: Doc) -> NoReturn:
    """Raise the `MalformedDocument` of the first entry matching `match` that is not as
    written: a `$group` of them showed one (reads them all, on this error path only)."""
    for entry in entries.find(match, FOLD_FIELDS):
        check_shape(FOLD_SHAPE, entry, collection=entries.name)
    raise MalformedDocument(f"the {entries.name} collection sums to what no entry holds")


def pair_of(entry: Doc) -> tuple[str, str]:
    """The invoice `(org, period)` an entry belongs to: where it is booked, else its
    usage period."""
    return entry["org"], entry["booked"] or entry["usage_period"]


def _orgs_by_period(pairs: set[tuple[str, str]]) -> dict[str, list[str]]:
    orgs: dict[str, list[str]] = {}
    for org, period in sorted(pairs):
        orgs.setdefault(period, []).append(org)
    return orgs


# The period an entry is billed in: where it was booked, else its usage period.
BOOKED_PERIOD: Doc = {"$ifNull": ["$booked", "$usage_period"]}


def _stragglers(org: str, period: str, closed_fence: int | None) -> list[Doc]:
    """The entries of the final `period`, frozen by `closed_fence`, that it does not hold,
    as the branches of an `$or`: unbooked and unfolded (arrived after its stamp), or booked
    there unstamped (swept in after it) or under an older token (a stale finalizer's).
    Never one a draft folded, nor one a newer token stamped: those can only be there if the
    final was removed and its month rebuilt since this final was read, and they belong to
    that draft or final.

    Each branch names the org and is bounded by an index on its own (`org_usage_booked`,
    `org_booked_fence`): a month's stragglers are found without reading the month, nor
    relying on the server to push the org into a nested `$or`."""
    if closed_fence is None:  # frozen before tokens: it holds the entries booked unstamped
        not_held: list[Doc] = [{"booked": period, "fence": {"$ne": None}}]
    else:
        not_held = [
            {"booked": period, "fence": None},
            {"booked": period, "fence": {"$lt": closed_fence}},
        ]
    unbooked = {"booked": None, "usage_period": period, "fold": None}
    return [{"org": {"$eq": org}, **branch} for branch in (unbooked, *not_held)]
