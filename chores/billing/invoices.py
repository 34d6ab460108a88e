"""Drafts: built from the ledger while their period is open (`Invoices`).

Each build folds the ledger entries no draft holds yet into the draft's stored sums
(`drafts.DraftSums`) and writes drafts that only move forward: never over a final one,
never over a draft built on an older ticket. A settle rebuilds the dirty drafts and
sweeps late usage (`sweeper.Sweeper`). The document itself is `invoice.Invoice`; a
`finalizer.Finalizer` freezes it. docs/design.md has the protocol.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

import bson
from pydantic import TypeAdapter
from pymongo import DESCENDING
from typing_extensions import TypedDict

from chores.billing.drafts import TOKEN_FIELDS, DraftSums, LedgerUsage, has_usage
from chores.billing.invoice import (
    PAIR_FIELDS,
    Invoice,
    build_invoice,
    invoice_pair,
    latest_written,
    lines_need_review,
    not_before,
    totals,
)
from chores.billing.sweeper import Sweeper
from chores.core.db import Collections, Doc
from chores.core.documents import (
    Day,
    Flag,
    Integer,
    Period,
    Text,
    check_shape,
    holds,
    invoice_remedy,
    not_as_written,
    past_int64,
)
from chores.core.exceptions import InvoiceTooLarge
from chores.core.periods import period_of
from chores.core.settings import MAX_INT64
from chores.core.writes import update_where, upsert_as_written
from chores.metering.anomalies import AnomalyLog
from chores.metering.fields import describe_value
from chores.metering.ledger import (
    BOOKED_PERIOD,
    EMPTY_ENTRY,
    Ledger,
    check_pair_row,
    pair_of,
    refuse_malformed_entry,
)
from chores.metering.lines import InvoiceLine, UsageGroup, price_lines
from chores.metering.progress import Progress
from chores.metering.source import chunked
from pricing import Registry


def _as_written(value: Any) -> Any:
    """A stored value with the kind of each leaf, so that a count edited to 336622.0 or a
    flag to 1 differs from what the chore writes, as the strict readers see it (an Int64,
    how a server hands back a large count, is an int)."""
    if isinstance(value, dict):
        return {key: _as_written(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_as_written(item) for item in value]
    kind = bool if isinstance(value, bool) else int if isinstance(value, int) else type(value)
    return kind, value


def _priced_alike(stored: Doc, lines: Sequence[InvoiceLine]) -> bool:
    """Whether a stored draft's lines, total and unpriced tokens are these `lines` (what
    its sums price to today), compared by value and by kind (`_as_written`); else its lines
    or total were edited, or the registry changed since it was priced."""
    said = (stored.get("lines"), stored.get("total_micros"), stored.get("unpriced_tokens"))
    priced = ([line.model_dump() for line in lines], *totals(lines))
    return _as_written(said) == _as_written(priced)


class _Counter(TypedDict):
    value: Integer


_COUNTER = TypeAdapter(_Counter)
# `$type` also matches a list holding such a value: not one.
_WHOLE_NUMBER: Doc = {
    "$or": [{"value": {"$type": "int"}}, {"value": {"$type": "long"}}],
    "value": {"$not": {"$type": "array"}},
}
_SET_COUNTER = "remove it: the next build starts it again past every build_ticket of the invoices"
# Tickets a set-back counter (removed, or lowered by hand) may have handed out that runs
# still hold: the counter goes this far past the highest stored. At one build a second,
# 31 years of them.
TICKETS_IN_FLIGHT = 1_000_000_000


# What `$group` would skip in silence: counts that are not numbers, a runner id missing.
_SUMMABLE: Doc = {
    "$and": [
        *({"$isNumber": f"${name}"} for name in TOKEN_FIELDS),
        {"$ne": [{"$ifNull": ["$runner_id", None]}, None]},
    ]
}


class _UsageKey(TypedDict):
    org: Text
    period: Period
    model: Text | None
    byok: Flag
    late: Flag
    day: Day


class _UsageRow(TypedDict):
    """A row of `Invoices.ledger_usage`'s `$group`, from entries as written."""

    _id: _UsageKey
    input: Integer
    cached: Integer
    output: Integer
    unsplit: Integer
    runners: list[Text]
    entries: Integer
    unsummed: Literal[0]


_USAGE_ROW = TypeAdapter(_UsageRow)


@dataclass(frozen=True)
class Rebuilt:
    """What a rebuild did: drafts written, and pairs it gave up on (refused at every try
    by other builds' commits; the next run builds them)."""

    written: list[str]
    unsettled: set[tuple[str, str]]
    # drafts rebuilt from their ledger (`from_ledger`) whose stored sums differed from it
    repaired: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Settled:
    """What a settle did: drafts written, orgs whose invoices it looked at, and the marks
    that may be deleted once the decisions built on them are written."""

    written: list[str]
    orgs: set[str]
    marks: list[str]
    repaired: list[str] = field(default_factory=list)  # `Rebuilt.repaired`


# A draft as stored, at most: MongoDB's 16 MiB a document, less room for the fields a
# finalize adds. Reached by about 130,000 usage groups (4,500 model names over a month).
MAX_DRAFT_BYTES = 16 * 1024 * 1024 - 64 * 1024


@dataclass
class DraftBuild:
    """One draft of a build pass: the ledger entries it folds in and its sums after them."""

    pair: tuple[str, str]  # (org, period)
    entries: list[Doc]
    after: DraftSums
    read_ticket: int | None  # the build ticket of the stored draft it replaces (None: none)
    read_draft: bool  # whether it read a stored draft (else it inserts one)
    read_updated_at: datetime | None = None  # when the draft it replaces says it was written

    @property
    def id(self) -> str:
        return f"{self.pair[0]}:{self.pair[1]}"

    @property
    def entry_ids(self) -> list[str]:
        return [entry["_id"] for entry in self.entries]

    def update(
        self,
        ticket: int,
        registry: Registry,
        *,
        anomalies_open: bool,
        now: datetime,
        latest: datetime,
    ) -> tuple[Doc, Doc, bool]:
        """The compare-and-set that commits it built on `ticket`: only over the very draft
        it read (`build_ticket` equal), never over a final, and an insert only if it read
        none (one removed meanwhile is not written back from what it held); its new entries
        recorded as `pending_fold` until they are flagged. `(filter, fields, insert)`.
        Its `updated_at` never goes back: a run whose `now` lags the draft's last writer's
        (a lagging host, a replay) adds what it found, stamped as late as the draft was."""
        org, period = self.pair
        now = not_before(now, self.read_updated_at, latest)
        invoice = build_invoice(
            org=org,
            period=period,
            groups=self.after.usage_groups(),
            runs=self.after.runs,
            entries=self.after.entries,
            anomalies_open=anomalies_open,
            registry=registry,
            now=now,
        )
        read = self.read_ticket if self.read_ticket is not None else {"$exists": False}
        where: Doc = {"_id": self.id, "status": "draft", "build_ticket": read}
        draft: Doc = {
            **invoice.document(),
            "build_ticket": ticket,
            "usage_groups": self.after.stored_groups(),
            "pending_fold": {"ids": self.entry_ids} if self.entries else None,
        }
        refuse_unstorable(draft)
        return where, draft, not self.read_draft


def refuse_unstorable(draft: Doc) -> None:
    """`InvoiceTooLarge` for a draft MongoDB cannot store: a number past 64 bits, or more
    than MAX_DRAFT_BYTES (pymongo would refuse the write, and every draft written with it)."""
    name = f"the invoice of {draft['org']!r} for {draft['period']}"
    too_large = past_int64(draft)
    if too_large is not None:
        where_in, value = too_large
        raise InvoiceTooLarge(
            f"{name} would hold {where_in} = {value:,}, past the largest number MongoDB "
            f"stores ({MAX_INT64:,}): not written, its usage stays in the ledger. Its prices "
            "(REGISTRY_PATH) or MAX_TOKENS_PER_RUN are far beyond real usage: correct them, "
            "then run again"
        )
    size = len(bson.encode(draft))
    if size > MAX_DRAFT_BYTES:
        raise InvoiceTooLarge(
            f"{name} would take {size:,} bytes, past the {MAX_DRAFT_BYTES:,} a MongoDB "
            f"document may: {len(draft['lines']):,} lines, {len(draft['usage_groups']):,} "
            "usage groups (one per model name, key source and day). Not written, its usage "
            "stays in the ledger: its runners report thousands of model names"
        )


class Invoices:
    def __init__(
        self,
        collections: Collections,
        registry: Registry,
        ledger: Ledger,
        anomalies: AnomalyLog,
        progress: Progress,
    ):
        self._c = collections
        self._registry = registry
        self._ledger = ledger
        self._anomalies = anomalies
        self._progress = progress
        self._sweeper = Sweeper(collections, ledger, progress)
        # Drafts not written, each one MongoDB cannot store (`refuse_unstorable`): the
        # others are written, these keep a mark, and the run raises the first at its end.
        self.too_large: dict[tuple[str, str], InvoiceTooLarge] = {}

    # reading ---------------------------------------------------------------
    def final_periods(self, orgs: Iterable[str]) -> dict[str, set[str]]:
        """org -> its final periods (empty for an org without one)."""
        finals: dict[str, set[str]] = defaultdict(set)
        for org, periods in self._sweeper.final_fences(orgs).items():
            finals[org] = set(periods)
        return finals

    def final_flags(self, orgs: Iterable[str]) -> dict[str, dict[str, bool]]:
        """org -> {final period -> whether it was frozen needing review}."""
        flags: dict[str, dict[str, bool]] = defaultdict(dict)
        wanted = sorted(set(orgs))
        if wanted:
            query = {"org": {"$in": wanted}, "status": "final"}
            for doc in self._c.invoices.find(query, {**PAIR_FIELDS, "needs_review": 1}):
                org, period = invoice_pair(doc, self._c)
                flags[org][period] = bool(doc.get("needs_review"))
        return flags

    def get(self, org: str, period: str, *, own_sums: bool = True) -> Invoice | None:
        """The invoice of `org` in `period`, if any (`Invoice.read`)."""
        doc = self._c.invoices.find_one({"_id": f"{org}:{period}"})
        return Invoice.read(doc, self._c, own_sums=own_sums) if doc else None

    def ledger_usage(
        self, pairs: set[tuple[str, str]], *, only: Doc | None = None
    ) -> dict[tuple[str, str], LedgerUsage]:
        """Every ledger entry of these `(org, period)` invoices (those that also match
        `only`, when given), summed in the database: the whole period, as a full rebuild
        reads it. It is the check that a draft's folded sums are what its ledger holds
        (`check_drafts`); a build calls it only for a draft that was removed."""
        usage: dict[tuple[str, str], LedgerUsage] = defaultdict(LedgerUsage)
        if not pairs:
            return usage
        orgs = sorted({org for org, _ in pairs})
        periods = sorted({period for _, period in pairs})
        belongs: list[Doc] = [
            {"booked": {"$in": periods}},
            {"booked": None, "usage_period": {"$in": periods}},
        ]
        match: Doc = {"org": {"$in": orgs}, "$or": belongs, "$nor": [EMPTY_ENTRY], **(only or {})}
        pipeline: list[Doc] = [
            # An entry that only moved a high-water mark is no usage: no line, no run.
            {"$match": match},
            {
                "$group": {
                    "_id": {
                        "org": "$org",
                        "period": BOOKED_PERIOD,
                        "model": "$model",
                        "byok": "$byok",
                        "late": "$late",
                        "day": "$usage_day",
                    },
                    "input": {"$sum": "$input_tokens"},
                    "cached": {"$sum": "$cached_tokens"},
                    "output": {"$sum": "$output_tokens"},
                    "unsplit": {"$sum": "$unsplit_tokens"},
                    "runners": {"$addToSet": "$runner_id"},
                    "entries": {"$sum": 1},
                    # $sum skips what is not a number: an entry edited so is refused
                    "unsummed": {"$sum": {"$cond": [_SUMMABLE, 0, 1]}},
                }
            },
        ]
        # Allowed to spill to disk, as every `$group` here: a server before 6.0 fails a stage
        # past 100 MB otherwise (a full pass groups every runner of a month).
        rows = list(self._c.ledger.aggregate(pipeline, allowDiskUse=True))
        if not all(holds(_USAGE_ROW, row) for row in rows):
            refuse_malformed_entry(self._c.ledger, match)
        for row in rows:
            key = row["_id"]
            pair = (key["org"], key["period"])
            if pair not in pairs:
                continue
            period_usage = usage[pair]
            period_usage.groups.append(
                UsageGroup(
                    model=key["model"],
                    byok=bool(key["byok"]),
                    late=bool(key["late"]),
                    day=date.fromisoformat(key["day"]),
                    input=row["input"],
                    cached=row["cached"],
                    output=row["output"],
                    unsplit=row["unsplit"],
                )
            )
            period_usage.runners.update(row["runners"])
            period_usage.entries += row["entries"]
        return usage

    def check_drafts(self, pairs: set[tuple[str, str]]) -> list[str]:
        """The drafts among `pairs` whose stored sums differ from a full rebuild of their
        ledger (`ledger_usage`), one line each; empty when every draft is exact. Final
        invoices are left out (a final holds what it held when frozen)."""
        ids = [f"{org}:{period}" for org, period in pairs]
        stored = {d["_id"]: d for d in self._c.invoices.find({"_id": {"$in": ids}})}
        full = self.ledger_usage(pairs)
        problems = []
        for org, period in sorted(pairs):
            doc = stored.get(f"{org}:{period}")
            if doc is not None and doc.get("status") != "draft":
                continue
            held = DraftSums.of(doc)
            usage = full[(org, period)]
            expected = (sorted(usage.groups), len(usage.runners), usage.entries)
            actual = (sorted(held.usage_groups()), held.runs, held.entries)
            if expected != actual:
                problems.append(
                    f"{org}:{period}: draft holds {held.entries} entries of {held.runs} runs,"
                    f" the ledger {usage.entries} of {len(usage.runners)}"
                    + ("" if expected[1:] != actual[1:] else " (token sums differ)")
                )
        return problems

    def stored_sums_problem(self, org: str, period: str) -> str | None:
        """Where a draft's stored sums (`usage_groups`, `runs`, `entries`), which each build
        adds to, differ from the ledger entries it folded (flagged, or committed and not
        flagged yet: `pending_fold`), in one line; None when they agree, or for a final or
        a draft written before drafts kept sums. Entries not folded yet are no difference:
        the next run adds them. A difference is an edit of the draft or of its entries'
        fold flags, which the next full pass repairs (`rebuild`, `from_ledger`)."""
        doc = self._c.invoices.find_one({"_id": f"{org}:{period}"})
        if doc is None or doc.get("status") != "draft":
            return None
        held = DraftSums.of(doc)
        if not held.kept_sums:
            if held.ticket is None:
                return None  # written before drafts kept sums: its next build folds the period
            why = (
                "a draft written before drafts kept them (a build with a ticket), or an edit"
                if "usage_groups" not in doc
                else "an edit"
            )
            return (
                f"its stored sums (usage_groups) are {describe_value(doc.get('usage_groups'))}: "
                f"{why} (the next run starts the draft from its ledger)"
            )
        folded_or_pending = [{"fold": {"$ne": None}}, {"_id": {"$in": held.pending}}]
        folded: Doc = {"$and": [{"$or": folded_or_pending}]}  # `ledger_usage` has an $or
        usage = self.ledger_usage({(org, period)}, only=folded)[(org, period)]
        ledger = DraftSums.holding(usage)
        if held.holds_the_same(ledger):
            return None
        tokens = "" if held.groups == ledger.groups else ", and other token sums"
        return (
            f"its stored sums hold {held.entries:,} entries of {held.runs:,} runs, the ledger "
            f"entries it folded {ledger.entries:,} of {ledger.runs:,}{tokens}: an edit of the "
            f"draft or of its entries' fold flags (`chore run --full --org {org}` rebuilds it "
            "from its ledger), or a run settling it right now (reconcile again)"
        )

    # writing ---------------------------------------------------------------
    # Entries one build pass folds at most: keeps a draft's `pending_fold` small. A larger
    # backlog (a deployment's first run) is folded in as many passes as it takes.
    FOLD_LIMIT = 5_000
    # Passes in a row that another build's commit refused before a rebuild gives up (and
    # the settle keeps its marks for the next run).
    REFUSALS = 3

    def rebuild(
        self,
        pairs: set[tuple[str, str]],
        now: datetime,
        *,
        from_ledger: frozenset[tuple[str, str]] = frozenset(),
    ) -> Rebuilt:
        """Bring the drafts of these `(org, period)` pairs up to date with the ledger.

        Each pass folds what the drafts do not hold yet into their stored sums
        (`drafts`): a run costs what changed, not the month. A draft only moves forward:
        each pass takes a ticket before it reads anything and commits only over the
        draft it read, if that was built on an older ticket, never over a final one. A
        pass refused by another build's commit reads again. Returns the ids written, and
        the pairs given up on.

        The drafts of `from_ledger` (a full pass's) start instead from the entries their
        ledger says they hold, summed in the database, as a removed draft does: a draft
        whose stored sums were edited, or whose entries' fold flags were, is made exact
        again (`Rebuilt.repaired` names those that differed). Those not among `pairs` are
        written only then, or when they have new entries.
        """
        todo = set(pairs) | from_ledger
        optional = from_ledger - pairs
        written: set[str] = set()
        repaired: set[str] = set()
        refusals = 0
        while todo and refusals < self.REFUSALS:
            committed, todo, differed = self._build_pass(todo, now, from_ledger, optional)
            written.update(committed)
            repaired.update(differed)
            refusals = 0 if committed else refusals + 1
        unsettled = todo | set(self.too_large)
        return Rebuilt(written=sorted(written), unsettled=unsettled, repaired=sorted(repaired))

    def _build_pass(
        self,
        pairs: set[tuple[str, str]],
        now: datetime,
        from_ledger: frozenset[tuple[str, str]],
        optional: frozenset[tuple[str, str]],
    ) -> tuple[set[str], set[tuple[str, str]], set[str]]:
        """One build of these drafts: (ids committed, pairs to build again, ids of drafts
        of `from_ledger` committed whose stored sums differed from their ledger). A draft
        of `optional` that is exact and has nothing new is left as it is."""
        ticket = self._ticket()
        review, sums = self._read_drafts(pairs)
        if self._set_back(ticket, (held.ticket for held in sums.values())):
            ticket = self._past_stored_tickets(ticket)
            review, sums = self._read_drafts(pairs)  # read after the ticket, as always
        # Final: not ours to build (the settle sweeps it). Built on a later ticket: that
        # build read the ledger after ours would have, and left nothing for us.
        live = {
            pair
            for pair, held in sums.items()
            if held.status != "final" and (held.ticket is None or held.ticket < ticket)
        } - set(self.too_large)  # refused for its size this run: not read again
        # Entries a build committed and did not live to flag: flagged first, never re-read.
        self._ledger.flag_folded(
            [(pair, sums[pair].pending, sums[pair].ticket or 0) for pair in live]
        )
        new = self._ledger.unfolded(live, limit=self.FOLD_LIMIT)
        by_pair: dict[tuple[str, str], list[Doc]] = defaultdict(list)
        for entry in new:
            by_pair[pair_of(entry)].append(entry)
        with_usage = [entry for entry in new if has_usage(entry)]
        held_runners = self._ledger.runners_held(with_usage) if with_usage else set()
        # A removed draft, or one to rebuild from its ledger: the sums of what it holds.
        from_folded = {
            pair
            for pair in live
            if pair in from_ledger or not sums[pair].exists or not sums[pair].kept_sums
        }
        folded = self._folded_usage(from_folded, new)
        priced = self._priced(live & from_ledger)
        builds = []
        differed: set[str] = set()
        for pair in sorted(live):
            entries = by_pair.get(pair, [])
            read = sums[pair]
            runners = {e["runner_id"] for e in entries if has_usage(e)}
            if pair in from_folded:
                base = DraftSums.holding(folded[pair])
                added = runners - folded[pair].runners
                exact = read.holds_the_same(base)
                if read.ticket is not None and not exact:  # a draft a build wrote its sums on
                    differed.add(f"{pair[0]}:{pair[1]}")
                # Its lines and total, against what its (exact) sums price to: a draft with
                # new usage is checked too, before they are added (review: rebuilt unnamed).
                stored = priced.get(pair) if exact else None
                lines = [] if stored is None else price_lines(base.usage_groups(), self._registry)
                edited = stored is not None and not _priced_alike(stored, lines)
                if edited and stored and stored.get("registry") == self._registry.fingerprint:
                    differed.add(f"{pair[0]}:{pair[1]}")  # its lines or total edited
                # Its flag, against its open anomalies and lines: written again, not named
                # (two overlapping runs can leave one behind: a run's draft built while an
                # anomaly was on its month, inserted after another run moved it away; and
                # an anomaly this run recorded or healed changes it too).
                review_flag = pair in review or lines_need_review(lines)
                stale_flag = stored is not None and stored.get("needs_review") is not review_flag
                if pair in optional and exact and not entries and not edited and not stale_flag:
                    continue
            else:
                base = read
                added = {r for r in runners if (*pair, r) not in held_runners}
            if not (entries or read.exists or base.entries or pair in review):
                continue  # an empty invoice is only written over one, or to flag a review
            after = base.plus(entries, len(added))
            builds.append(
                DraftBuild(
                    pair,
                    entries,
                    after,
                    read.ticket,
                    read_draft=read.exists,
                    read_updated_at=read.updated_at,
                )
            )
        updates, writable = [], []
        for build in builds:
            try:
                update = build.update(
                    ticket,
                    self._registry,
                    anomalies_open=build.pair in review,
                    now=now,
                    latest=latest_written(self._c),
                )
            except InvoiceTooLarge as exc:  # one org's absurd sums never stop the others'
                self.too_large[build.pair] = exc
                continue
            updates.append(update)
            writable.append(build)
        builds = writable
        refused, unmatched = update_where(self._c.invoices, updates)
        if unmatched:  # a draft read was replaced or removed meanwhile: which ones?
            refused |= self._not_written(builds, ticket)
        committed = [build for i, build in enumerate(builds) if i not in refused]
        self._ledger.flag_folded([(build.pair, build.entry_ids, ticket) for build in committed])
        flagged = [build.id for build in committed if build.entries]
        if flagged:
            self._c.invoices.update_many(
                {"_id": {"$in": flagged}, "status": "draft", "build_ticket": ticket},
                {"$set": {"pending_fold": None}},
            )
        again = {builds[i].pair for i in refused}
        if len(new) >= self.FOLD_LIMIT:  # more may be waiting, for any pair of this pass
            again |= live - set(self.too_large)
        ids_committed = {build.id for build in committed}
        return ids_committed, again, differed & ids_committed

    def _priced(self, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Doc]:
        """The priced part of these stored drafts (lines, total, unpriced tokens, review
        flag, and the registry that priced them), by pair: a full pass compares it with
        what their sums price to (`_priced_alike`) and their open anomalies flag."""
        if not pairs:
            return {}
        ids = {f"{org}:{period}": (org, period) for org, period in pairs}
        fields = {
            "lines": 1,
            "total_micros": 1,
            "unpriced_tokens": 1,
            "needs_review": 1,
            "registry": 1,
        }
        found = self._c.invoices.find({"_id": {"$in": sorted(ids)}, "status": "draft"}, fields)
        return {ids[doc["_id"]]: doc for doc in found}

    def _not_written(self, builds: list[DraftBuild], ticket: int) -> set[int]:
        """The indexes of the builds over a stored draft that `ticket` did not write."""
        over = {build.id: i for i, build in enumerate(builds) if build.read_draft}
        found = self._c.invoices.find({"_id": {"$in": sorted(over)}}, {"build_ticket": 1})
        written = {doc["_id"] for doc in found if doc.get("build_ticket") == ticket}
        return {i for draft_id, i in over.items() if draft_id not in written}

    def _folded_usage(
        self, pairs: set[tuple[str, str]], unfolded: list[Doc]
    ) -> dict[tuple[str, str], LedgerUsage]:
        """The usage of the entries of these pairs that earlier builds folded (none for a
        new month): where a removed draft's next build starts, so that it holds the whole
        period again, and a draft rebuilt from its ledger. Leaves out the entries this
        pass read unfolded (a build of a removed draft may flag them meanwhile): they are
        added once, as new. A round trip only when some pair needs it."""
        usage: dict[tuple[str, str], LedgerUsage] = defaultdict(LedgerUsage)
        if pairs:
            besides = [entry["_id"] for entry in unfolded]
            only: Doc = {"fold": {"$ne": None}, "_id": {"$nin": besides}}
            usage.update(self.ledger_usage(pairs, only=only))
        return usage

    def _read_drafts(
        self, pairs: set[tuple[str, str]]
    ) -> tuple[set[tuple[str, str]], dict[tuple[str, str], DraftSums]]:
        """What a pass reads before the ledger: the pairs with open anomalies (to review),
        and the stored drafts as sums (a pair without one: empty sums)."""
        review = self._anomalies.open_periods(pairs)
        ids = {f"{org}:{period}": (org, period) for org, period in pairs}
        found = self._c.invoices.find({"_id": {"$in": sorted(ids)}}, {"lines": 0, "priced_with": 0})
        sums = {pair: DraftSums() for pair in pairs}
        for doc in found:
            sums[ids[doc["_id"]]] = DraftSums.of(doc)
        return review, sums

    def _ticket(self) -> int:
        """The next draft-build ticket (one round trip per build pass, whatever its size).
        Only a whole number is incremented: a value edited to text, null or a double (as
        a shell writes numbers) is refused, never bumped (`upsert_as_written`). A new
        counter (the first build of this database, or its document removed by hand) first
        goes past every ticket stored (`_past_stored_tickets`)."""
        ticket = self._counter({"$inc": {"value": 1}})
        return self._past_stored_tickets(ticket) if ticket == 1 else ticket

    def _set_back(self, ticket: int, read: Iterable[int | None]) -> bool:
        """Whether a draft read holds a ticket the counter did not hand out after `ticket`:
        `ticket` itself, or one above the counter's value. The counter was then set back by
        hand, and this pass would skip those drafts as built after it, their new usage left
        off until a full pass. Free unless a draft read holds `ticket` or a later one: then
        one read of the counter (a later ticket it handed out is a build beside this one,
        rightly skipped)."""
        later = [held for held in read if held is not None and held >= ticket]
        if not later:
            return False
        counter = self._c.counters.find_one({"_id": "draft_builds"}) or {"value": 0}
        check_shape(_COUNTER, counter, collection=self._c.counters.name, remedy=_SET_COUNTER)
        return ticket in later or max(later) > counter["value"]

    def _past_stored_tickets(self, ticket: int) -> int:
        """`ticket`, or when a draft holds it or a later one, a new ticket past every one
        stored, with room for TICKETS_IN_FLIGHT more: those a set-back counter handed out
        before and runs still hold, not written yet (never to be handed out again: a build
        tells its own commit by its ticket). A read, and two writes when a draft holds
        such a ticket. A ticket edited past what the counter can go beyond is refused,
        naming its draft."""
        stored = self._c.invoices.find_one(
            {
                "$or": [{"build_ticket": {"$type": "int"}}, {"build_ticket": {"$type": "long"}}],
                "build_ticket": {"$not": {"$type": "array"}},  # `$type` matches one holding it
            },
            {"build_ticket": 1, "status": 1, "org": 1},
            sort=[("build_ticket", DESCENDING)],
        )
        highest = int(stored["build_ticket"]) if stored is not None else 0
        if stored is None or highest < ticket:
            return ticket
        if highest > MAX_INT64 - 2 * TICKETS_IN_FLIGHT:
            raise not_as_written(
                self._c.invoices.name,
                stored["_id"],
                f"build_ticket {highest:,} leaves the draft-build counter no room",
                invoice_remedy(stored),
            )
        self._counter({"$max": {"value": highest + TICKETS_IN_FLIGHT}})
        return self._counter({"$inc": {"value": 1}})

    def _counter(self, update: Doc) -> int:
        """The draft-build counter's value after `update`."""
        counter = upsert_as_written(
            self._c.counters,
            "draft_builds",
            _WHOLE_NUMBER,
            update,
            shape=_COUNTER,
            remedy=_SET_COUNTER,
        )
        return int(counter["value"])

    def settle(self, now: datetime, org: str | None = None, *, full: bool = False) -> Settled:
        """Rebuild every dirty or stale draft in scope, and move what final invoices do not
        hold into the open period as late usage. `full` (a full pass) also rebuilds every
        invoice of the ledger that was removed from the database, usage or not since.

        The marks it may delete (those read *closed* or expired) are returned, not
        deleted: the caller deletes them once everything derived from the drafts (the
        quota decisions) is written, so a crash before that leaves them for the next run.
        """
        deletable, pairs = self._progress.dirty(org)
        pairs |= self._stale_drafts(org)
        from_ledger: frozenset[tuple[str, str]] = frozenset()
        if full:
            pairs |= self._without_invoice(org, now)
            from_ledger = frozenset(self._drafts(org))
        orgs = {o for o, _ in pairs}
        written: set[str] = set()
        repaired: set[str] = set()
        unsettled: set[tuple[str, str]] = set()
        late_marks: list[str] = []
        swept_to: set[tuple[str, str]] = set()
        found_final: set[tuple[str, str]] = set()  # final when a sweep of this settle read it
        for _ in range(3):  # a draft finalized under our feet: sweep it, then its target
            swept = self._sweeper.sweep(pairs, now)
            late_marks += swept.marks
            targets = swept.targets
            swept_to |= targets
            found_final |= swept.finals
            rebuilt = self.rebuild(pairs | targets, now, from_ledger=from_ledger)
            written.update(rebuilt.written)
            repaired.update(rebuilt.repaired)
            unsettled |= rebuilt.unsettled
            refused = {(o, p) for o, p in pairs | targets if f"{o}:{p}" not in rebuilt.written}
            finals = self.final_periods(o for o, _ in refused)
            # Those finalized since a sweep read them need another; one read final was swept.
            refused_finals = {(o, p) for o, p in refused if p in finals[o]}
            pairs = refused_finals - found_final
            if not pairs:
                break
        # A draft given up on keeps every mark: the next run builds it again. One refused
        # for its size keeps one of its own (the next run tries it again, and says so),
        # not the others': they would pile up, one a finalize, one a run.
        too_large = set(self.too_large)
        marks: list[str] = []
        if not unsettled - too_large:
            kept = {pair: mark for mark, pair in sorted(deletable.items()) if pair in too_large}
            marks = [mark for mark in deletable if mark not in kept.values()]
            if not swept_to & too_large:
                marks += late_marks
        return Settled(written=sorted(written), orgs=orgs, marks=marks, repaired=sorted(repaired))

    def _drafts(self, org: str | None) -> set[tuple[str, str]]:
        """The `(org, period)` pairs of every draft in scope."""
        query: Doc = {"status": "draft"}
        if org is not None:
            query["org"] = {"$eq": org}
        found = self._c.invoices.find(query, PAIR_FIELDS)
        return {invoice_pair(d, self._c) for d in found}

    def _stale_drafts(self, org: str | None) -> set[tuple[str, str]]:
        """Drafts priced with another registry than the current one, or written before
        drafts kept their build ticket and sums (a finalize waits for those)."""
        query: Doc = {
            "status": "draft",
            "$or": [
                {"registry": {"$ne": self._registry.fingerprint}},
                {"build_ticket": {"$exists": False}},
                {"usage_groups": {"$not": {"$type": "array"}}},  # missing too
            ],
        }
        if org is not None:
            query["org"] = {"$eq": org}
        return {invoice_pair(d, self._c) for d in self._c.invoices.find(query, PAIR_FIELDS)}

    def _without_invoice(self, org: str | None, now: datetime) -> set[tuple[str, str]]:
        """The `(org, period)` pairs the ledger bills usage to, or an anomaly nobody reviewed
        flags, that have no invoice: each a draft (or a final) removed from the database.
        Reads the whole ledger in scope, in the database (one `$group`), which only a full
        pass does."""
        match: Doc = {"$nor": [EMPTY_ENTRY]}
        if org is not None:
            match["org"] = {"$eq": org}
        pipeline: list[Doc] = [
            {"$match": match},
            {"$group": {"_id": {"org": "$org", "period": BOOKED_PERIOD}}},
        ]
        billed: set[tuple[str, str]] = set()
        for row in self._c.ledger.aggregate(pipeline, allowDiskUse=True):
            check_pair_row(self._c.ledger, row, match)
            billed.add((row["_id"]["org"], row["_id"]["period"]))
        billed |= self._anomalies.flagged_pairs(org, through=period_of(now))
        ids = sorted(f"{o}:{p}" for o, p in billed)
        found: set[str] = set()
        for batch in chunked(ids, 1000):
            found.update(
                d["_id"] for d in self._c.invoices.find({"_id": {"$in": batch}}, {"_id": 1})
            )
        return {(o, p) for o, p in billed if f"{o}:{p}" not in found}
