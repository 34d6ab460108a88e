"""Reconciliation: re-derive a period from the source documents and compare.

Each AI runner's own usage (its current counters minus its baseline) is compared with
everything the ledger billed it, under every org, so a difference is traced to a runner.
Where the two agree, the runner's usage is expected where the ledger placed it (the months
it was observed in while running, late lines of a finalized month, this org's share of a
runner whose org changed); where they do not, or the ledger never billed it, at its
`end_time` (at `now` while it runs), from the source alone, but for a runner other orgs
billed too (its org changed): where this org's ledger placed it, the runner listed as
disagreeing (which org's entries are wrong cannot be told here). A runner billed here whose
document names another org now (or none) is settled here: its share is expected as billed.
A runner the next run reads (on any pending list, or stamped within its scan of changed
runners) whose own counters all grew since its ledger head (that entry this org's, its
entries under every org adding up to it), or that no entry billed yet (written after every
run, or held by an anomaly since its start and fixed), is no disagreement: listed as not
metered yet, expected as billed so far. Its latest entry
lost is then seen only on the lines (the invoice holds it).
The expected lines, late ones included, are priced and compared line by line with the
stored invoice, whose total and unpriced tokens are checked against its own lines. The
runners' own `ai_cost` estimates are shown beside our amounts (informational: they are
never billed): a subagent's less what its spawn finding had (its copy of the spawning run's),
a run metered over several months shared by its tokens in each.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, computed_field

from chores.billing.invoice import Invoice, lines_need_review
from chores.billing.known_orgs import missing_invoice_hint
from chores.core.db import Doc
from chores.core.documents import check_shape, invoice_sum_problems
from chores.core.exceptions import InvoiceNotFound
from chores.core.periods import as_utc
from chores.metering.counters import Breakdown, Counters, add_tokens, breakdown
from chores.metering.ledger import EMPTY_ENTRY, entry_shape, entry_tokens
from chores.metering.lineage import own_org_spawns
from chores.metering.lines import (
    InvoiceLine,
    LineKey,
    UsageGroup,
    line_key,
    price_group,
    price_lines,
)
from chores.metering.progress import cursor_scope
from chores.metering.rules import Rules, org_of
from chores.metering.runner_keys import runner_key, source_id_of
from chores.metering.source import LOWEST_STAMP, chunked, stamp_of
from chores.run.pipeline import Pipeline
from pricing import Registry


class LineCheck(BaseModel):
    model: str | None
    tier: str
    price_valid_from: str | None
    late: bool = False
    expected_tokens: int
    invoiced_tokens: int
    expected_micros: int | None
    invoiced_micros: int | None
    runner_estimate_usd: float | None  # None: no runner of the line gave an estimate
    runners: int
    estimated_runners: int = 0  # how many of them gave an estimate (0: the display says –)
    # input, cached, output, unsplit: a line's split must fit its amount
    expected_split: tuple[int, int, int, int] = (0, 0, 0, 0)
    invoiced_split: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def matches(self) -> bool:
        return (self.expected_tokens, self.expected_micros, self.expected_split) == (
            self.invoiced_tokens,
            self.invoiced_micros,
            self.invoiced_split,
        )


class RunnerCheck(BaseModel):
    runner_id: str
    source_tokens: int
    ledger_tokens: int
    note: str


class Reconciliation(BaseModel):
    org: str
    period: str
    status: str
    # The invoice was priced with another registry version than today's (a final keeps
    # it; a draft until the next run reprices it).
    registry_changed: bool = False
    # Checked against the registry that priced it (its stored excerpt), not today's.
    checked_as_invoiced: bool = False
    lines: list[LineCheck]
    late_tokens: int
    runners: list[RunnerCheck]
    problems: list[str] = []  # where the invoice disagrees with its own lines
    # Runners the next run reads (pending, or stamped within its scan) whose documents are
    # ahead of the ledger by growth alone: the next run bills it. Expected as billed so
    # far; no mismatch.
    running: list[RunnerCheck] = []
    # Runners billed here whose documents name another org now (or none): what they were
    # billed here is their share, settled (no run of this org bills them again). Listed
    # for a person to see (a document edited by mistake looks the same); no mismatch.
    moved: list[RunnerCheck] = []

    @computed_field  # type: ignore[prop-decorator]  # in --json: reconciled (as the exit code)
    @property
    def ok(self) -> bool:
        return all(line.matches for line in self.lines) and not self.runners and not self.problems


MAX_ESTIMATE_USD = 1e9  # a runner's own estimate above this is garbage, not a cost


def _estimate(context: Any) -> float | None:
    """The runner's own cost estimate, None when it gave none (or not a plausible number of
    dollars: not finite, negative or above MAX_ESTIMATE_USD, so that sums stay finite)."""
    cost = context.get("ai_cost") if isinstance(context, Mapping) else None
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
        return float(cost) if 0 <= cost <= MAX_ESTIMATE_USD else None
    return None


def _own_estimate(doc: Mapping[str, Any], spawn_contexts: Any, org: str) -> float | None:
    """A subagent's own estimate: its `ai_cost` starts from its spawning run's at spawn (a
    copy of that context), so the spawn findings' estimate is taken off, as their counters
    are (`rules.read_spawn` takes the highest baseline)."""
    estimate = _estimate(doc.get("context"))
    if estimate is None:
        return None
    inherited = [_estimate(c) for c in own_org_spawns(spawn_contexts, org)]
    return max(estimate - max((e for e in inherited if e is not None), default=0.0), 0.0)


# How many times a comparison that does not reconcile is made again while the billing
# state it read changes under it (`reconcile`).
ATTEMPTS = 3
# The fields of an invoice every write of it changes (`_billing_state`).
INVOICE_STATE = {
    "status": 1,
    "build_ticket": 1,
    "updated_at": 1,
    "needs_review": 1,
    "total_micros": 1,
}


def reconcile(meter: Pipeline, org: str, period: str, *, now: datetime) -> Reconciliation:
    """Compare the invoice of `org` in `period` with the period re-derived from the source.

    Its reads are many, not one snapshot: a run, a finalize or a review writing the invoice
    while they go on (outside hunt: a run between its read of the ledger and of the run
    cursors said "a ledger entry was lost") could make it disagree with itself. One that
    does not reconcile is made again while the invoice or the run cursors changed during
    it, up to ATTEMPTS times; then it says so."""
    for _ in range(ATTEMPTS):
        before = _billing_state(meter, org, period)
        result = _compare(meter, org, period, now=now)
        if result.ok or _billing_state(meter, org, period) == before:
            return result
    written = (
        f"runs wrote this invoice or moved their cursors during each of {ATTEMPTS} "
        "comparisons: run it again once they have settled"
    )
    return result.model_copy(update={"problems": [*result.problems, written]})


def _billing_state(meter: Pipeline, org: str, period: str) -> tuple[Any, list[float]]:
    """What a write of the invoice or a run of the org changes: the invoice's status,
    build, time, flag and total, and the cursors `reconcile` reads."""
    invoice = meter.collections.invoices.find_one({"_id": f"{org}:{period}"}, INVOICE_STATE)
    return invoice, _cursors(meter, org)


def _compare(meter: Pipeline, org: str, period: str, *, now: datetime) -> Reconciliation:
    """One comparison (`reconcile`)."""
    # Its total is checked below with the rest (`_invoice_problems`): a mismatch to list.
    invoice = meter.invoices.get(org, period, own_sums=False)
    if invoice is None:
        hint = missing_invoice_hint(meter.collections, org, period)
        raise InvoiceNotFound(f"no invoice for org {org!r} in {period}; {hint}")
    registry = _pricing_registry(invoice, meter.registry)
    sources = _source_usage(meter, org, now)
    ledger = _ledger_usage(meter, invoice, org, period, set(sources))
    # A runner whose org changed: its usage is compared in all (what every org billed it);
    # each org's share on its lines is where that org's ledger placed it. One billed here
    # whose document now names another org (or none) is settled here: no run of this org
    # bills it again.
    moved_away = _now_elsewhere(meter, [r for r in ledger.here if r not in sources], org)
    groups: list[UsageGroup] = []
    runners_of_line: dict[LineKey, set[str]] = defaultdict(set)
    estimates: dict[LineKey, float] = defaultdict(float)
    estimated: dict[LineKey, int] = defaultdict(int)
    runner_checks = []
    running = []
    moved: list[RunnerCheck] = []
    cursors = _cursors(meter, org)
    ahead = [
        runner_id
        for runner_id, source in sources.items()
        if source.counters is not None and source.tokens != ledger.everywhere.get(runner_id)
    ]
    # When a claim on any org's pending list has a run read the runner again (one whose
    # document names another org now is handed over): at the next run, or at the hourly
    # re-read of an idle or held one (its `recheck_at`).
    claims: dict[str, datetime | None] = {}
    for ids in chunked(ahead, meter.settings.batch_size):
        claims |= meter.progress.claimed(ids)
    grown = _grown(meter, sources, ledger, ahead, claims, newest=max(cursors, default=None))
    # What the next run reads: a claimed runner, whatever its stamp, and one stamped where
    # its scan of changed runners starts or later. One that lost its claim and is stamped
    # behind the cursors may never be read (a metering gap, a mismatch here). From the
    # newest cursor: a scope that ran once and never since (an operator's `--all` beside
    # per-org workers) must not widen what "the next run reads" (review).
    since = max(cursors) - meter.settings.lookback_seconds if cursors else None
    # A run of this org alone with no cursor of its own yet reads every runner (outside
    # review: "no run but a full pass" was said of one `chore run --org` then billed).
    first_own_run = meter.progress.cursor(cursor_scope(org)) is None
    watched = {r for r in grown if r in claims or _read_by_changed_scan(sources[r].stamp, since)}
    for runner_id in sorted(set(sources) | set(ledger.here)):
        source = sources.get(runner_id)
        billed = ledger.everywhere.get(runner_id, Breakdown())  # under every org
        # one whose document moved away agrees with its share here (settled)
        agree = runner_id in moved_away if source is None else source.tokens == billed
        if source is None and runner_id in moved_away:
            now_of = moved_away[runner_id]
            named = f"names {now_of!r}" if now_of is not None else "names no org"
            share = sum(g.input + g.cached + g.output + g.unsplit for g in ledger.here[runner_id])
            moved.append(
                RunnerCheck(
                    runner_id=runner_id,
                    source_tokens=0,
                    ledger_tokens=share,
                    note=f"its document {named} now: billed here as its share (settled)",
                )
            )
        behind = runner_id in watched
        if behind and source is not None and (source.period == period or runner_id in ledger.here):
            running.append(
                RunnerCheck(
                    runner_id=runner_id,
                    source_tokens=source.tokens.tokens,
                    ledger_tokens=billed.tokens,
                    note=f"{'still running' if source.running else 'ended'}: "
                    f"{source.tokens.tokens - billed.tokens:,} tokens not metered yet "
                    f"({_when_read(claims.get(runner_id), now)})",
                )
            )
        if agree or behind:
            placed = ledger.here.get(runner_id, [])  # where the ledger put what it billed
        else:
            by_source = _placed_by_source(source, period)
            # A runner other orgs billed too: which org's entries are wrong cannot be told
            # from here, so its lines compare what this org's ledger placed (outside hunt:
            # the other org's tokens were expected on this org's line too; reviews: taking
            # its document less the other orgs' entries put their edits on this org's
            # correct lines). The runner's disagreement is listed either way.
            moved_here = runner_id in ledger.other_org
            placed = ledger.here.get(runner_id, []) if moved_here else by_source
            if runner_id in ledger.here or by_source:
                runner_checks.append(
                    RunnerCheck(
                        runner_id=runner_id,
                        source_tokens=source.tokens.tokens if source else 0,
                        ledger_tokens=billed.tokens,
                        note=_disagreement(
                            source,
                            billed,
                            ledger.other_org.get(runner_id),
                            read_next=source is not None
                            and _read_by_changed_scan(source.stamp, since),
                            first_own_run=first_own_run,
                        ),
                    )
                )
        for group in placed:
            groups.append(group)
            key, _amount = price_group(group, registry)
            runners_of_line[key].add(runner_id)
        if source is not None and source.estimate is not None and placed:
            # A run metered over several months: its estimate shared by the tokens each holds.
            here = sum(g.input + g.cached + g.output + g.unsplit for g in placed)
            whole = source.tokens.tokens
            key, _amount = price_group(placed[0], registry)
            estimates[key] += source.estimate * (here / whole if whole else 1.0)
            estimated[key] += 1

    expected = {line_key(ln): ln for ln in price_lines(groups, registry)}
    invoiced = {line_key(ln): ln for ln in invoice.lines}
    lines = []
    for key in sorted(set(expected) | set(invoiced), key=lambda k: tuple(str(p) for p in k)):
        exp, inv = expected.get(key), invoiced.get(key)
        lines.append(
            LineCheck(
                model=key.model,
                tier=key.tier,
                price_valid_from=key.price_valid_from,
                late=key.late,
                expected_tokens=exp.tokens if exp else 0,
                invoiced_tokens=inv.tokens if inv else 0,
                expected_micros=exp.amount_micros if exp else 0,
                invoiced_micros=inv.amount_micros if inv else 0,
                runner_estimate_usd=round(estimates[key], 6) if estimated.get(key) else None,
                runners=len(runners_of_line.get(key, ())),
                estimated_runners=estimated.get(key, 0),
                expected_split=_split(exp),
                invoiced_split=_split(inv),
            )
        )
    return Reconciliation(
        org=org,
        period=period,
        status=invoice.status,
        lines=lines,
        late_tokens=sum(ln.tokens for ln in invoice.lines if ln.late),
        runners=runner_checks,
        running=running,
        moved=moved,
        problems=_invoice_problems(invoice, org, period)
        + _ledger_problems(invoice, ledger)
        + _stored_sums_problems(meter, org, period)
        + _stranded_problems(meter, invoice)
        + _review_flag_problems(meter, invoice),
        registry_changed=invoice.registry != meter.registry.fingerprint,
        checked_as_invoiced=registry is not meter.registry,
    )


def _pricing_registry(invoice: Invoice, current: Registry) -> Registry:
    """What the expected lines are priced with: the registry that priced the invoice (its
    stored excerpt) when that is not today's. A final never changes, and a draft priced
    before a registry change is repriced by the next run: neither is a mismatch. Without
    an excerpt (none of its models was priced, or it predates excerpts): today's."""
    if invoice.registry != current.fingerprint and invoice.priced_with is not None:
        return Registry.model_validate(invoice.priced_with)
    return current


def _disagreement(
    source: _SourceUsage | None,
    billed: Breakdown,
    other_org: Breakdown | None,
    *,
    read_next: bool,
    first_own_run: bool = False,
) -> str:
    """Why a runner's source and ledger may differ, for the person reading the report
    (`other_org`: what other orgs billed the runner, if any; `first_own_run`: its org has
    no cursor of its own yet, so `chore run --org ORG` reads every runner)."""
    moved = other_org is not None
    elsewhere = " (billed under another org too: its org changed)" if moved else ""
    if source is None:
        return "billed, but no longer an AI runner of this org in the source" + elsewhere
    if source.note:
        return source.note + elsewhere
    # `billed`: under every org. Tokens another org billed that changed kind since are
    # left as it billed them (org_changed): the same tokens, split otherwise.
    if sum(source.tokens) < sum(billed):
        return (
            "the ledger holds more tokens than the source shows: its counters went down (a "
            "counter_decreased anomaly says so) or a ledger entry was added or edited" + elsewhere
        )
    if sum(source.tokens) == sum(billed):
        return (
            "the same tokens, split by kind otherwise than the source shows: a ledger entry "
            "was edited, or tokens changed kind after its org changed (org_changed)"
            if moved
            else "the same tokens, split by kind otherwise than the source shows: a ledger "
            "entry was edited"
        )
    if not _kinds_at_least(source.tokens, other_org):
        return (
            "the source shows more tokens than were billed, and tokens another org billed "
            "changed kind since (org_changed): they stay as it billed them, so the split "
            "here cannot agree with the source"
        )
    if read_next and moved:  # its latest entry another org's: grown since, or one lost
        return (
            "the source shows more tokens than were billed, and the next run reads it: its "
            "org changed since another org billed it (the next run bills here what it used "
            "since, and this goes away), or a ledger entry of this org was lost"
        )
    if read_next:  # stamped within the next scan, yet not only grown since billed
        return (
            "the source shows more tokens than were billed, though the next run reads it: a "
            "ledger entry was lost, or it was written behind the cursor since a run read it"
        )
    if first_own_run:
        return (
            "the source shows more tokens than were billed, and only a full pass (`chore run "
            "--full`) or this org's first run of its own (`chore run --org`, which reads every "
            "runner) reads it again (it is on no pending list, stamped before the runs' "
            "cursors)" + elsewhere
        )
    return (
        "the source shows more tokens than were billed, and no run but a full pass (`chore run "
        "--full`) reads it again (it is on no pending list, stamped before the runs' cursors)"
        + elsewhere
    )


def _grown(
    meter: Pipeline,
    sources: dict[str, _SourceUsage],
    ledger: _LedgerUsage,
    ahead: list[str],
    claims: dict[str, datetime | None],
    *,
    newest: float | None,
) -> list[str]:
    """Of the runners whose documents are `ahead` of the ledger, those ahead by growth
    alone: usage since the last run, which the next run bills if it reads them. One billed
    before: its own counters all at least those its complete ledger (no entry missing)
    billed up to. One no entry of any org billed: claimed (read while it had no tokens, or
    held), a version no run read yet (stamped at or after the `newest` cursor, or never stamped),
    or held by an anomaly still open. Any other runner without an entry may have lost its
    only one, which the draft still holds: a mismatch."""
    grown = []
    never_billed = []
    for runner_id in ahead:
        if runner_id not in ledger.head:
            never_billed.append(runner_id)
        elif _grown_since_billed(
            sources[runner_id].counters, ledger.billed_up_to(runner_id)
        ) and _kinds_at_least(sources[runner_id].tokens, ledger.other_org.get(runner_id)):
            grown.append(runner_id)
    unread = [r for r in never_billed if r in claims or _unread(sources[r].stamp, newest=newest)]
    held = meter.anomalies.open_for([r for r in never_billed if r not in unread])
    return [*grown, *unread, *(r for r in never_billed if r in held)]


def _kinds_at_least(tokens: Breakdown, elsewhere: Breakdown | None) -> bool:
    """Whether a runner's tokens of each kind are at least what other orgs billed it of
    that kind: tokens another org billed that changed kind since stay as it billed them
    (`org_changed`), so the next run cannot make the two agree (review: listed as not
    metered yet before that run, a mismatch after it)."""
    return elsewhere is None or all(
        mine >= theirs for mine, theirs in zip(tokens, elsewhere, strict=True)
    )


def _when_read(recheck_at: datetime | None, now: datetime) -> str:
    """When the next run that reads a runner ahead of the ledger bills it: its claim's
    hourly re-read when that is later than `now`."""
    if recheck_at is not None and as_utc(recheck_at) > now:
        return f"its hourly re-read at {as_utc(recheck_at):%H:%M} UTC bills them"
    return "the next run reads it and bills them"


def _grown_since_billed(counters: Counters | None, billed_up_to: Counters | None) -> bool:
    """Counters all at least those a runner's complete ledger billed up to (tokens that
    changed kind, as a split or a cached count catches up, included)."""
    return (
        counters is not None
        and billed_up_to is not None
        and all(now >= then for now, then in zip(counters, billed_up_to, strict=True))
    )


def _unread(stamp: float | None, *, newest: float | None) -> bool:
    """Whether a runner stamped `stamp` may not have been read by a run yet: stamped at
    the newest cursor or after it (no run yet: `newest` None; a batch moves its run's
    cursor to its newest stamp, and the next batch, or the next run, starts from that
    stamp: outside review, a full pass paused between two batches had a runner stamped at
    the cursor called lost), or never stamped at all (a first write)."""
    return newest is None or stamp is None or stamp >= newest


def _cursors(meter: Pipeline, org: str) -> list[float]:
    """The cursors of the runs of `org` and of every org that ran before: the newest stamp
    each read (`run_chore` scans from its cursor less LOOKBACK_SECONDS)."""
    cursors = [meter.progress.cursor(cursor_scope(scope)) for scope in (org, None)]
    return [cursor for cursor in cursors if cursor is not None]


def _read_by_changed_scan(stamp: Any, since: float | None) -> bool:
    """Whether a runner stamped `stamp` (its `last_updated_db`, read by `stamp_of`) is read by
    a scan of changed runners from `since` (`Source.changed_runners`): from its stamp on,
    and every runner without a stamp at least LOWEST_STAMP (missing, NaN, -inf, no number)."""
    return since is None or stamp is None or not stamp >= LOWEST_STAMP or stamp >= since


def _counters_of(high_water: Any) -> Counters | None:
    """The counters an entry billed up to; None when unreadable."""
    try:
        return Counters.from_dict(high_water)
    except (KeyError, TypeError, ValueError, OverflowError):  # an infinity is no count
        return None


def _placed_by_source(source: _SourceUsage | None, period: str) -> list[UsageGroup]:
    """A runner's usage in `period` by its document alone: all of it, in the month of its
    end time (of `now` while it runs)."""
    if source is None or source.group is None or source.period != period:
        return []
    return [source.group]


def _closed_fence(meter: Pipeline, invoice: Invoice) -> int | Literal["draft"] | None:
    """`"draft"` for a draft; for a final, the token of the finalize that froze it (None: one
    frozen before tokens)."""
    if invoice.status == "draft":
        return "draft"
    doc = meter.collections.invoices.find_one({"_id": invoice.id}, {"closed_fence": 1})
    return None if doc is None else doc.get("closed_fence")


def _on_invoice(entry: Doc, period: str, closed_fence: int | Literal["draft"] | None) -> bool:
    """Whether a ledger entry is on the invoice of `period`: booked into it, or (a draft's,
    `closed_fence="draft"`) unbooked with usage in it; on a final, only if stamped by the
    finalize that froze it (another token's is swept out by the next run, `Sweeper`)."""
    booked = entry.get("booked")
    if closed_fence == "draft":
        return booked == period or (booked is None and entry.get("usage_period") == period)
    return booked == period and entry.get("fence") == closed_fence


def _split(line: InvoiceLine | None) -> tuple[int, int, int, int]:
    if line is None:
        return (0, 0, 0, 0)
    return (line.input_tokens, line.cached_tokens, line.output_tokens, line.unsplit_tokens)


def _invoice_problems(invoice: Invoice, org: str, period: str) -> list[str]:
    """Where the invoice disagrees with its own id and its own lines."""
    problems = [
        f"its {name} field says {said!r}, its id {meant!r}"
        for name, said, meant in (("org", invoice.org, org), ("period", invoice.period, period))
        if said != meant
    ]
    return problems + invoice_sum_problems(invoice.document())


def _stored_sums_problems(meter: Pipeline, org: str, period: str) -> list[str]:
    """A draft's stored sums, which the next build adds to, against its ledger
    (`Invoices.stored_sums_problem`): its lines may still be right while they are not."""
    problem = meter.invoices.stored_sums_problem(org, period)
    return [] if problem is None else [problem]


def _review_flag_problems(meter: Pipeline, invoice: Invoice) -> list[str]:
    """A draft's `needs_review` against its open anomalies and its lines (a final's was
    frozen as it stood). Two overlapping runs can leave a flag behind: a run's draft built
    while an anomaly was on its month, inserted after another run moved the anomaly away."""
    if invoice.status != "draft":
        return []
    pair = (invoice.org, invoice.period)
    meant = bool(meter.anomalies.open_periods({pair})) or lines_need_review(invoice.lines)
    if invoice.needs_review == meant:
        return []
    return [
        f"its needs_review is {str(invoice.needs_review).lower()}, its open anomalies and "
        f"lines say {str(meant).lower()}: a run or a review (`chore anomaly review`) not "
        f"settled yet, two runs that overlapped, or an edit (`chore run --full --org "
        f"{invoice.org}` writes it again)"
    ]


def _stranded_problems(meter: Pipeline, invoice: Invoice) -> list[str]:
    """Entries with usage of a final's month that no draft may fold and no sweep moves:
    unbooked (not stamped by a finalize) yet flagged folded. Only a build of a draft of
    that month flags such an entry, and a month with one is not frozen (its draft then
    holds more entries than were stamped), so on a standing final it is an edit of a
    fold flag: its usage is on no invoice."""
    if invoice.status != "final":
        return []
    stranded = meter.collections.ledger.count_documents(
        {
            "org": {"$eq": invoice.org},
            "usage_period": invoice.period,
            "booked": None,
            "fold": {"$ne": None},
            "$nor": [EMPTY_ENTRY],
        }
    )
    if not stranded:
        return []
    return [
        f"{stranded:,} ledger entries of its month are unbooked yet flagged folded: on no "
        "invoice (an edit of their fold flags; setting `fold` back to null lets the next run "
        "move them to the open month as late usage)"
    ]


def _ledger_problems(invoice: Invoice, ledger: _LedgerUsage) -> list[str]:
    """Where the invoice's counts disagree with the ledger entries it holds (its `entries`
    only when it has one: an invoice built before drafts counted them has none), and its
    entries whose `tokens` (the total a run's report counts) is not the sum of their kinds."""
    problems = list(ledger.bad_totals)
    counts = [("runs", invoice.runs, len(ledger.here))]
    if invoice.entries is not None:
        counts.append(("entries", invoice.entries, ledger.entries_here))
    why = (
        "a run not settled yet (the next run folds it in), or an edit (`chore run --full "
        f"--org {invoice.org}` rebuilds the draft from its ledger)"
        if invoice.status == "draft"
        else "an edit"
    )
    for name, said, counted in counts:
        if said != counted:
            problems.append(f"it counts {said:,} {name}, its ledger entries {counted:,}: {why}")
    return problems


class _SourceUsage(NamedTuple):
    """A runner's usage as its document says, placed by its end time (by `now` while it
    runs; None when a held anomaly bills nothing), and its own cost estimate."""

    tokens: Breakdown
    group: UsageGroup | None
    period: str | None
    estimate: float | None
    note: str
    running: bool = False  # still running, its usage billed by every run until it ends
    counters: Counters | None = None  # its own counters (less a subagent's baseline)
    stamp: float | None = None  # its `last_updated_db` (`stamp_of`)


def _rules(meter: Pipeline, now: datetime) -> Rules:
    return Rules(
        now=now,
        max_tokens_per_run=meter.settings.max_tokens_per_run,
        future_skew_seconds=meter.settings.future_skew_seconds,
    )


def _now_elsewhere(meter: Pipeline, runner_ids: list[str], org: str) -> dict[str, str | None]:
    """Of these runners, billed under `org` and not among its AI runners in the source,
    those whose documents are AI runners that now name another org or none, with that org
    (one read, only when there are any). Those gone from the source are not."""
    source_ids = [sid for r in runner_ids if (sid := source_id_of(r)) is not None]
    found: dict[str, str | None] = {}
    for ids in chunked(source_ids, meter.settings.batch_size):
        for doc in meter.source.runners_by_id(ids, None):
            context = doc.get("context")
            now_of = org_of(context if isinstance(context, Mapping) else {})
            if now_of != org:
                found[runner_key(doc.get("_id"))] = now_of
    return found


def _source_usage(meter: Pipeline, org: str, now: datetime) -> dict[str, _SourceUsage]:
    """Every AI runner of `org` in the source: its whole usage (no ledger head), or none
    when a held anomaly bills nothing (with a note saying why)."""
    rules = _rules(meter, now)
    usage: dict[str, _SourceUsage] = {}
    for batch in _batches(meter, org):
        for doc, spawn in zip(batch, meter.source.spawns_of(batch), strict=True):
            result = rules.assess(doc, spawn_contexts=spawn, head=None)
            if result.org != org:
                continue
            delta = result.delta
            if delta is None:  # no usage now: zero counters, or held by an anomaly
                held = [a.kind for a in result.anomalies if a.kind != "total_below_split"]
                note = "held: " + ", ".join(held) if held else ""
                usage[result.runner_id] = _SourceUsage(Breakdown(), None, None, None, note)
                continue
            tokens = delta.tokens
            usage[result.runner_id] = _SourceUsage(
                tokens,
                UsageGroup(
                    model=delta.model,
                    byok=delta.byok,
                    late=False,
                    day=delta.usage_time.date(),
                    input=tokens.input,
                    cached=tokens.cached,
                    output=tokens.output,
                    unsplit=tokens.unsplit,
                ),
                delta.period,
                _own_estimate(doc, spawn, org) if delta.subagent else _estimate(doc.get("context")),
                "",
                running=result.pending,
                counters=delta.high_water,
                stamp=stamp_of(doc),
            )
    return usage


def _batches(meter: Pipeline, org: str) -> Any:
    return chunked(meter.source.changed_runners(org, None), meter.settings.batch_size)


class _LedgerUsage:
    """What the ledger billed each runner: its tokens in all (every period), and its usage
    on this invoice, as the draft build groups it."""

    def __init__(self) -> None:
        self.everywhere: dict[str, Breakdown] = {}  # its tokens under every org
        self.here: dict[str, list[UsageGroup]] = defaultdict(list)
        # Each runner's ledger head, as the next run reads it: its latest entry of any org.
        self.head: dict[str, _Head] = {}
        self.other_org: dict[str, Breakdown] = {}  # runners billed under another org too
        self.entries_here = 0  # entries with usage on this invoice
        self.bad_totals: list[str] = []  # entries whose `tokens` is not the sum of its kinds

    def billed_up_to(self, runner_id: str) -> Counters | None:
        """The counters the runner's head billed up to, when its head is of this org and
        its entries of every org add up to it (an entry lost before the latest would leave
        them short); else None. Of this org: the latest entry lost leaves an older head
        whose sums agree, which only the invoice lines holding it show, and another org's
        lines are not checked here (review: a moved runner's lost entry was billed twice
        while this org reconciled). None too for a runner with no entry: a lost only entry
        looks the same as a runner no run has read yet."""
        head = self.head.get(runner_id)
        if head is None or not head.this_org or head.high_water is None:
            return None
        if breakdown(head.high_water) != self.everywhere.get(runner_id):
            return None
        return head.high_water


class _Head(NamedTuple):
    seq: int
    high_water: Counters | None  # None when unreadable
    this_org: bool


_LEDGER_FIELDS = {
    name: 1
    for name in (
        "runner_id",
        "booked",
        "usage_period",
        "usage_day",
        "late",
        "model",
        "byok",
        "input_tokens",
        "cached_tokens",
        "output_tokens",
        "unsplit_tokens",
        "seq",
        "high_water",
        "org",
        "tokens",
        "fence",
    )
}
# Its counters and sequence are reported when unreadable (`_counters_of`), not refused.
_LEDGER_SHAPE = entry_shape(set(_LEDGER_FIELDS) - {"high_water", "seq"})
_RUNNER_SHAPE = entry_shape(["runner_id"])
_NO_HEAD = _Head(-1, None, False)


def _ledger_usage(
    meter: Pipeline, invoice: Invoice, org: str, period: str, runners: set[str]
) -> _LedgerUsage:
    """The ledger's usage of `runners` and of every runner on `invoice`, the one of `org`
    and `period` (`_on_invoice`)."""
    usage = _LedgerUsage()
    entries = meter.collections.ledger
    fence = _closed_fence(meter, invoice)
    belongs: list[Doc] = [{"booked": period}]
    if fence == "draft":
        belongs.append({"booked": None, "usage_period": period})
    on_invoice = {"org": {"$eq": org}, "$or": belongs, "$nor": [EMPTY_ENTRY]}
    here: set[str] = set()
    for entry in entries.find(on_invoice, {"runner_id": 1}):
        check_shape(_RUNNER_SHAPE, entry, collection=entries.name)
        here.add(entry["runner_id"])
    for batch in chunked(sorted(runners | here), meter.settings.batch_size):
        # Every org's entries of these runners: the heads, and each runner's tokens under
        # every org (another org's: rare, a runner whose org changed).
        for entry in entries.find({"runner_id": {"$in": batch}}, _LEDGER_FIELDS):
            check_shape(_LEDGER_SHAPE, entry, collection=entries.name)
            runner_id = entry["runner_id"]
            seq = entry.get("seq")
            if isinstance(seq, int) and seq >= usage.head.get(runner_id, _NO_HEAD).seq:
                high_water = _counters_of(entry.get("high_water"))
                usage.head[runner_id] = _Head(seq, high_water, entry.get("org") == org)
            tokens = entry_tokens(entry)
            usage.everywhere[runner_id] = add_tokens(
                usage.everywhere.get(runner_id, Breakdown()), tokens
            )
            if entry.get("org") != org:
                usage.other_org[runner_id] = add_tokens(
                    usage.other_org.get(runner_id, Breakdown()), tokens
                )
                continue
            if not _on_invoice(entry, period, fence):
                continue
            if entry.get("tokens") != tokens.tokens:
                usage.bad_totals.append(
                    f"ledger entry {entry['_id']!r}: tokens {entry.get('tokens')!r} is not the"
                    f" sum of its kinds, {tokens.tokens:,}"
                )
            if any(tokens):
                usage.entries_here += 1
                usage.here[runner_id].append(
                    UsageGroup(
                        model=entry["model"],
                        byok=bool(entry["byok"]),
                        late=bool(entry.get("late")),
                        day=date.fromisoformat(entry["usage_day"]),
                        input=tokens.input,
                        cached=tokens.cached,
                        output=tokens.output,
                        unsplit=tokens.unsplit,
                    )
                )
    return usage
