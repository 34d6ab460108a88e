"""The metering rules, pure: a runner document in, its new usage and anomalies out.

The rules of SPEC §1 on one observation of a runner: who it bills (its org), when (its
usage time and period), what (its model and key source), from which baseline (a
subagent's spawn findings, `read_spawn`), and the delta from its ledger head, with the
anomalies that hold or flag it. The counters' arithmetic and its vocabulary are in
`counters`, the pairing of a document with its spawn findings in `lineage`.

No I/O here. A run builds one `Rules` (its `now`, ceiling and allowed skew) and calls
`Rules.assess` per document.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import Any, NamedTuple

from chores.core.orgs import MAX_ORG, NOT_UTF8
from chores.core.periods import as_utc, period_of
from chores.metering.counters import (
    ZERO,
    Breakdown,
    Counters,
    add_tokens,
    billable_tokens,
    decreased,
    highest,
    new_usage,
    own_counters,
    parse_counters,
    reclassified_mark,
)
from chores.metering.fields import bson_string, describe_value, is_mapping
from chores.metering.lineage import is_subagent_context, own_org_spawns, spawner_ids
from chores.metering.runner_keys import runner_key

TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"})
MAX_MODEL_NAME = 256
MAX_LABEL = 256  # characters of a status or session id copied into a ledger entry
# An end_time outside these bounds is garbage (a period that cannot be invoiced).
EARLIEST_END = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_END = timedelta(days=366)
# Between `now + future skew` (Settings.future_skew_seconds) and `now + LATEST_END`, an
# end_time is not garbage but not yet plausible either: held as FUTURE_END_TIME.


class Anomaly:
    """Kinds of anomalies; *held* kinds bill nothing until the document is fixed."""

    NO_ORG = "no_org"
    MALFORMED_COUNTERS = "malformed_counters"
    BAD_MODEL = "bad_model"
    BAD_KEY_SOURCE = "bad_key_source"
    BAD_END_TIME = "bad_end_time"
    FUTURE_END_TIME = "future_end_time"
    BASELINE_MISSING = "baseline_missing"
    BASELINE_MALFORMED = "baseline_malformed"
    BASELINE_CONFLICT = "baseline_conflict"
    TOTAL_BELOW_SPLIT = "total_below_split"
    COUNTER_DECREASED = "counter_decreased"
    OVER_CEILING = "over_ceiling"
    BAD_ID = "bad_id"  # a string `_id` that is not UTF-8: no ledger key of its own
    # Tokens billed under another org change kind: left as that org was billed (SPEC §4).
    ORG_CHANGED = "org_changed"

    # Resolved automatically once the runner bills cleanly again (`no_org`: under the org
    # its document names now); the others stay open for a person to review (`chore
    # anomaly review`).
    SELF_HEALING = frozenset(
        {
            NO_ORG,
            MALFORMED_COUNTERS,
            BAD_MODEL,
            BAD_KEY_SOURCE,
            BAD_END_TIME,
            FUTURE_END_TIME,
            BASELINE_MISSING,
            BASELINE_MALFORMED,
        }
    )
    # Billed all the same, the invoice they land on flagged: one record per runner, kind,
    # org and usage period (`anomalies.anomaly_id`), so that each month that holds tokens
    # billed with one stays flagged for it (a runner running on into the next month, still
    # below its split, flags both; one record following it left the first unflagged).
    BILLED_FLAGGED = frozenset(
        {BASELINE_CONFLICT, TOTAL_BELOW_SPLIT, COUNTER_DECREASED, ORG_CHANGED}
    )
    # Hold the runner: nothing of it is billed until the document is fixed (those without
    # an end time, an id or an org that can be billed are recorded in the month of `now`).
    HELD = SELF_HEALING | {OVER_CEILING, BAD_ID}
    # Recorded in the month of `now` whatever the document says: no usage month of its own.
    OF_THE_CLOCK = frozenset({BAD_ID, BAD_END_TIME, FUTURE_END_TIME})


# Every kind, in the order `Anomaly` declares them.
ANOMALY_KINDS = tuple(
    value for name, value in vars(Anomaly).items() if name.isupper() and isinstance(value, str)
)


class AnomalyRecord(NamedTuple):
    runner_id: str
    kind: str
    org: str | None
    period: str | None  # of the invoice it flags (`placement.place` may move it)
    detail: str
    usage_period: str | None = None  # of the usage seen with it (`Anomaly.BILLED_FLAGGED`)


class Delta(NamedTuple):
    """New usage of one runner: the next ledger entry."""

    runner_id: str
    seq: int
    org: str
    model: str | None
    byok: bool
    usage_time: datetime
    period: str  # of the usage time
    high_water: Counters
    tokens: Breakdown
    status: str | None
    session_id: str | None
    subagent: bool = False
    parent_id: str | None = None  # the spawning runner, when its spawn finding names it


class Assessment(NamedTuple):
    """What one observation of a runner document means for billing: the new usage
    (`delta`), preceded by the reclassification of tokens already billed, one entry per
    line that charged them (`reclassified`, `reclassify`), each a ledger entry."""

    runner_id: str
    org: str | None = None
    period: str | None = None
    pending: bool = False
    delta: Delta | None = None
    anomalies: tuple[AnomalyRecord, ...] = ()
    billed_cleanly: bool = False
    reclassified: tuple[Delta, ...] = ()

    @property
    def deltas(self) -> tuple[Delta, ...]:
        """The ledger entries to write, in sequence order."""
        return self.reclassified if self.delta is None else (*self.reclassified, self.delta)

    @property
    def held(self) -> bool:
        """A runner of an org held by an anomaly (`_held`): nothing billed until its document
        is fixed."""
        return self.org is not None and not self.billed_cleanly


class BookedOn(NamedTuple):
    """The line a ledger entry's tokens were priced on: the org billed, model, key source,
    usage time."""

    org: str
    model: str | None
    byok: bool
    usage_time: datetime
    period: str  # of the usage time


class BookedLine(NamedTuple):
    """The tokens a runner's entries booked on one line, net, by kind."""

    booked_on: BookedOn
    tokens: Breakdown


class LedgerHead(NamedTuple):
    """The latest ledger entry of a runner: its sequence number, high-water mark and line
    (None when not known: a reclassification is then billed with the new usage), when it
    was billed (the `now` of the run that wrote it; None when not known), and the tokens
    all its entries booked on each line, in the order the lines were first used (`lines`,
    empty when not known: a reclassification is then booked on `booked_on`)."""

    seq: int
    high_water: Counters
    booked_on: BookedOn | None = None
    billed_at: datetime | None = None
    lines: tuple[BookedLine, ...] = ()


def booked_on(delta: Delta) -> BookedOn:
    """The line a delta's tokens are priced on."""
    return BookedOn(delta.org, delta.model, delta.byok, delta.usage_time, delta.period)


def add_to_lines(
    lines: tuple[BookedLine, ...], line: BookedOn, tokens: Breakdown
) -> tuple[BookedLine, ...]:
    """`lines` with an entry's tokens added to its line's (a new line goes last).

    Entries of one model, key source and period on one UTC day are on one line, kept
    under the first one's usage time: a price version is valid from a UTC day (SPEC §2),
    so they were charged alike, and a runner seen every few minutes has a line a day,
    not one per entry."""
    for i, known in enumerate(lines):
        if _same_line(known.booked_on, line):
            summed = BookedLine(known.booked_on, add_tokens(known.tokens, tokens))
            return (*lines[:i], summed, *lines[i + 1 :])
    return (*lines, BookedLine(line, tokens))


def _same_line(first: BookedOn, second: BookedOn) -> bool:
    """Whether two entries were charged on one line: one org, model, key source, period
    and usage day."""
    return (
        first.org == second.org
        and first.model == second.model
        and first.byok == second.byok
        and first.period == second.period
        and first.usage_time.date() == second.usage_time.date()
    )


def head_after(head: LedgerHead | None, delta: Delta) -> LedgerHead:
    """A runner's ledger head once `delta` is written after `head`."""
    line = booked_on(delta)
    lines = add_to_lines(() if head is None else head.lines, line, delta.tokens)
    return LedgerHead(delta.seq, delta.high_water, line, lines=lines)


class Spawn(NamedTuple):
    """What a subagent's spawn findings say. No baseline: not known yet, bill nothing."""

    baseline: Counters | None
    parent_id: str | None  # the spawning runner, when a finding names it
    anomaly: str | None = None
    detail: str = ""


def read_spawn(spawn_contexts: Sequence[Any], org: str, names: Sequence[str] = ()) -> Spawn:
    """The baseline and parent of a subagent of `org` from its spawn findings' `_context`s
    (`names`: the ids a finding may name the subagent by, `spawner_ids`).

    Only a finding of the subagent's own org is a baseline (its `_context.workspace_id`
    is `org`, compared exactly): a finding naming this runner from another org's context
    (or from none) is ignored, so one org's data never changes another org's billing
    (SPEC §4). With only foreign findings the baseline is missing (held); several own
    findings that disagree are a `baseline_conflict`. An anomaly's detail says how many
    foreign findings were ignored.
    """
    own = own_org_spawns(spawn_contexts, org)
    foreign = len(spawn_contexts) - len(own)
    ignored = f" ({foreign} spawn finding(s) of another org ignored)" if foreign else ""
    parent_id = _spawner(own, names)
    if not own:
        detail = "no spawn finding of this org for this subagent yet" + ignored
        return Spawn(None, parent_id, Anomaly.BASELINE_MISSING, detail)
    baselines: list[Counters] = []
    for context in own:
        parsed = parse_counters(context)
        if isinstance(parsed, str):
            return Spawn(
                None, parent_id, Anomaly.BASELINE_MALFORMED, f"spawn finding: {parsed}{ignored}"
            )
        baselines.append(parsed)
    merged = reduce(highest, baselines)
    different = len(set(baselines))
    if different > 1:
        # Several different spawn records: take the highest baseline (bills the least) and
        # flag it, rather than risk charging inherited tokens.
        detail = f"{different} different spawn records{ignored}"
        return Spawn(merged, parent_id, Anomaly.BASELINE_CONFLICT, detail)
    return Spawn(merged, parent_id)


def _spawner(spawn_contexts: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str | None:
    """The runner that wrote the spawn finding, as its document's `_id`, if recorded.

    secator keys a runner's document by its context's `task_chunk_id` when it has one (a
    subagent: its `task_id` is then an id no document has), else by its `task_id`
    (0.52.1 `hooks/mongodb.py`). A finding's `_context` is the child's card laid over its
    writer's context, the writer's `task_id` on top (`runners/_base.py` `add_result`), so
    a `task_chunk_id` naming the child itself (one of `names`) is the child's, not the
    writer's: a top-level run spawning a subagent.
    """
    for context in spawn_contexts:
        chunk = context.get("task_chunk_id")
        if isinstance(chunk, str) and chunk and chunk not in names:
            return chunk[:64]
        task_id = context.get("task_id")
        if isinstance(task_id, str):
            return task_id[:64]
    return None


class Rules:
    """The rules of SPEC §1 as one run applies them: one `now`, one ceiling on a runner's
    tokens (Settings.max_tokens_per_run) and one allowed clock skew
    (Settings.future_skew_seconds), fixed for the run. `assess` judges one document."""

    def __init__(self, *, now: datetime, max_tokens_per_run: int, future_skew_seconds: float):
        self.now = as_utc(now)
        self.max_tokens_per_run = max_tokens_per_run
        self.future_skew_seconds = future_skew_seconds
        # The latest usage time billable now; the latest end time that is not garbage.
        self.latest_usage_time = self.now + timedelta(seconds=future_skew_seconds)
        self.latest_end_time = self.now + LATEST_END
        self.current_period = period_of(self.now)

    def usage_time(self, end_time: Any) -> datetime | str:
        """When the usage happened: the end time, or `now` while running.

        Otherwise the anomaly that holds it: `bad_end_time` for garbage (not a datetime,
        before 2000, more than LATEST_END after `now`), `future_end_time` for an end time
        more than the allowed skew after `now`: billed by the first run whose `now`
        reaches it, never into a future period ahead of it (SPEC §7).
        """
        if end_time is None:
            return self.now
        if not isinstance(end_time, datetime):
            return Anomaly.BAD_END_TIME
        end_time = as_utc(end_time)
        if end_time < EARLIEST_END or end_time > self.latest_end_time:
            return Anomaly.BAD_END_TIME
        if end_time > self.latest_usage_time:
            return Anomaly.FUTURE_END_TIME
        return end_time

    def assess(
        self,
        doc: Mapping[str, Any],
        *,
        spawn_contexts: Sequence[Any],
        head: LedgerHead | None,
        runner_id: str | None = None,
    ) -> Assessment:
        """Apply every rule of SPEC §1 to one runner document.

        `spawn_contexts` are the `_context`s of the findings that name this document as
        the runner they spawned (only read for subagents, and only those of the document's
        own org count: `read_spawn`); `head` is its latest ledger entry; `runner_id` is
        `runner_key(doc["_id"])` when the caller has already computed it.
        """
        if runner_id is None:
            runner_id = runner_key(doc.get("_id"))
        status = _label(doc.get("status"))
        end_time = doc.get("end_time")
        pending = end_time is None or status not in TERMINAL_STATUSES

        context = doc.get("context")
        if not is_mapping(context):  # anything else is no context at all: no org
            context = {}
        org = org_of(context)
        if org is None:
            detail = (
                f"context.workspace_id is missing, empty, not a string, not UTF-8 or longer "
                f"than {MAX_ORG} characters"
            )
            record = AnomalyRecord(runner_id, Anomaly.NO_ORG, None, None, detail)
            return Assessment(runner_id, anomalies=(record,))

        source_id = doc.get("_id")
        if isinstance(source_id, str) and NOT_UTF8 in source_id:
            # Two ids whose invalid bytes differ decode alike: they would share one key.
            detail = "_id is a string that is not UTF-8"
            return _held(runner_id, org, self.current_period, False, (), Anomaly.BAD_ID, detail)

        usage_time = self.usage_time(end_time)
        if isinstance(usage_time, str):
            # Held in the period of `now`: a future period gets no draft ahead of its time.
            if usage_time == Anomaly.FUTURE_END_TIME:
                # Re-read every run (pending) until `now` reaches it, then billed as usual.
                detail = (
                    f"end_time {describe_value(end_time)} > now {self.now.isoformat()} "
                    f"+ {self.future_skew_seconds:g} s"
                )
                return _held(runner_id, org, self.current_period, True, (), usage_time, detail)
            detail = f"end_time is {describe_value(end_time)}"
            return _held(runner_id, org, self.current_period, pending, (), usage_time, detail)
        period = period_of(usage_time)

        snapshot = parse_counters(context)
        if isinstance(snapshot, str):
            return _held(runner_id, org, period, pending, (), Anomaly.MALFORMED_COUNTERS, snapshot)

        raw_model = context.get("ai_model")
        model = bson_string(raw_model)
        if raw_model is not None and (
            model is None or len(model) > MAX_MODEL_NAME or NOT_UTF8 in model
        ):
            detail = f"ai_model is {describe_value(raw_model)}"
            return _held(runner_id, org, period, pending, (), Anomaly.BAD_MODEL, detail)

        key_source = context.get("ai_key_source")
        if key_source is not None and key_source not in ("platform", "byok"):
            detail = f"ai_key_source is {describe_value(key_source)}"
            return _held(runner_id, org, period, pending, (), Anomaly.BAD_KEY_SOURCE, detail)

        flags: tuple[AnomalyRecord, ...] = ()
        own = snapshot
        parent_id = None
        # Marked a subagent, or a step of a workflow (or scan) its org's AI run spawned
        # (`spawner_ids`): its counters start from the spawning run's.
        subagent = is_subagent_context(context) or bool(own_org_spawns(spawn_contexts, org))
        if subagent:
            spawn = read_spawn(spawn_contexts, org, spawner_ids(doc))
            parent_id = spawn.parent_id
            if spawn.baseline is None:
                assert spawn.anomaly is not None
                # re-read every run until the spawn finding appears
                return _held(runner_id, org, period, True, (), spawn.anomaly, spawn.detail)
            if spawn.anomaly is not None:
                flags = (_flagged(runner_id, spawn.anomaly, org, period, spawn.detail),)
            own = own_counters(snapshot, spawn.baseline)

        if own.total < own.prompt + own.completion:
            detail = f"total {own.total} < prompt {own.prompt} + completion {own.completion}"
            flags += (_flagged(runner_id, Anomaly.TOTAL_BELOW_SPLIT, org, period, detail),)

        if head is None:
            previous, high_water = ZERO, own
        else:
            previous = head.high_water
            if decreased(own, previous):
                detail = (
                    f"own counters {own.as_dict()} below billed high-water {previous.as_dict()}"
                )
                flags += (_flagged(runner_id, Anomaly.COUNTER_DECREASED, org, period, detail),)
            high_water = highest(previous, own)

        tokens = billable_tokens(high_water)
        if tokens > self.max_tokens_per_run:
            detail = f"{tokens} tokens exceed MAX_TOKENS_PER_RUN={self.max_tokens_per_run}"
            return _held(runner_id, org, period, pending, flags, Anomaly.OVER_CEILING, detail)

        if high_water == previous:
            return Assessment(runner_id, org, period, pending, None, flags, billed_cleanly=True)
        step = Delta(
            runner_id=runner_id,
            seq=1 if head is None else head.seq + 1,
            org=org,
            model=model,
            byok=key_source == "byok",
            usage_time=usage_time,
            period=period,
            high_water=high_water,
            tokens=new_usage(high_water, previous),  # previous is ZERO for a first entry
            status=status,
            session_id=_label(context.get("session_id")),
            subagent=subagent,
            parent_id=parent_id,
        )
        mark = previous
        if head is not None and head.booked_on is not None:
            mark = reclassified_mark(previous, high_water)
        if mark == previous:
            return Assessment(runner_id, org, period, pending, step, flags, billed_cleanly=True)
        # Tokens already billed change kind: on the lines that charged them, then the rest.
        assert head is not None
        moved = reclassify(step, head, mark)
        rest = step._replace(seq=step.seq + len(moved.entries), tokens=new_usage(high_water, mark))
        delta = None if high_water == mark else rest
        if moved.reached != mark:
            # Tokens billed under another org, left as billed; the rest is written even
            # without tokens, for its mark.
            delta = rest
            detail = (
                f"tokens this runner was billed under another org change kind "
                f"({_describe_move(new_usage(mark, moved.reached))}): left as billed, a run "
                f"of {org} does not change another org's invoices"
            )
            flags += (_flagged(runner_id, Anomaly.ORG_CHANGED, org, period, detail),)
        return Assessment(
            runner_id, org, period, pending, delta, flags, True, reclassified=moved.entries
        )


def org_of(context: Mapping[str, Any]) -> str | None:
    """The org a runner's context bills: its `workspace_id`, when `billable_org`; else None
    (the anomaly `no_org`)."""
    return billable_org(context.get("workspace_id"))


def billable_org(value: Any) -> str | None:
    """`value` as an org the rules bill: a non-empty string of at most MAX_ORG characters,
    all UTF-8; else None."""
    org = bson_string(value)
    if not org or len(org) > MAX_ORG or NOT_UTF8 in org:
        return None
    return org


def assess(
    doc: Mapping[str, Any],
    *,
    spawn_contexts: Sequence[Any],
    head: LedgerHead | None,
    now: datetime,
    max_tokens_per_run: int,
    future_skew_seconds: float,
    runner_id: str | None = None,
) -> Assessment:
    """`Rules.assess` for one document (a run builds its `Rules` once)."""
    rules = Rules(
        now=now, max_tokens_per_run=max_tokens_per_run, future_skew_seconds=future_skew_seconds
    )
    return rules.assess(doc, spawn_contexts=spawn_contexts, head=head, runner_id=runner_id)


class Reclassification(NamedTuple):
    """The entries that move reclassified tokens on the lines that charged them, and the
    high-water mark they reach: short of the move's mark by the tokens no line of the
    runner's org holds (billed under another org, left as billed)."""

    entries: tuple[Delta, ...]
    reached: Counters


def reclassify(step: Delta, head: LedgerHead, mark: Counters) -> Reclassification:
    """The entries that move tokens the runner was billed from one kind to another, up to
    `mark` (`counters.reclassified_mark`), each on a line that charged them (SPEC §2: priced
    at the price of their usage time, on their model and key source), `step` giving the
    rest of each entry.

    The tokens that leave a kind are taken from the lines the runner's entries booked them
    on (`head.lines`), the line opened last first: one entry per line, zero tokens in all,
    whose high-water mark is the counters the moves so far add up to, so that a run that
    stops between two of them is resumed from the last one written. In one entry on the
    line of the runner's latest entry when its lines are not known or do not hold the
    tokens the move takes (entries written before lines were kept).

    Only lines of `step.org` are moved on: one org's run never changes another org's
    billing (SPEC §4). A runner billed under another org too (its org changed) has the
    part of the move its lines of `step.org` do not hold left unmoved: its entries then
    reach a mark short of `mark`."""
    previous = head.high_water
    move = new_usage(mark, previous)
    own_lines = [line for line in head.lines if line.booked_on.org == step.org]
    pieces = _moves_by_line(own_lines, move)
    marks = _marks_after(previous, mark, pieces)
    if marks is None:
        pieces, marks = [], []
    reached = marks[-1] if marks else previous
    assert head.booked_on is not None
    billed_elsewhere = len(own_lines) < len(head.lines) or head.booked_on.org != step.org
    if reached != mark and not billed_elsewhere:
        pieces, marks, reached = [BookedLine(head.booked_on, move)], [mark], mark
    entries = tuple(
        step._replace(
            seq=step.seq + n,
            model=piece.booked_on.model,
            byok=piece.booked_on.byok,
            usage_time=piece.booked_on.usage_time,
            period=piece.booked_on.period,
            high_water=high_water,
            tokens=piece.tokens,
        )
        for n, (piece, high_water) in enumerate(zip(pieces, marks, strict=True))
    )
    return Reclassification(entries, reached)


def _moves_by_line(lines: Sequence[BookedLine], move: Breakdown) -> list[BookedLine]:
    """A move of billed tokens (unsplit to input or output, input to cached: zero tokens in
    all) split over the lines that booked them, the line opened last first, as far as they
    hold the tokens it takes; none when it is not such a move."""
    to_output, to_cached, leaving_unsplit = move.output, move.cached, -move.unsplit
    to_input = leaving_unsplit - to_output  # before the input that becomes cached
    if min(to_output, to_cached, to_input) < 0 or move.input != to_input - to_cached:
        return []
    pieces = []
    for line in reversed(lines):
        available = line.tokens
        into_input = min(to_input, max(available.unsplit, 0))
        into_output = min(to_output, max(available.unsplit, 0) - into_input)
        into_cached = min(to_cached, max(available.input, 0) + into_input)
        to_input, to_output, to_cached = (
            to_input - into_input,
            to_output - into_output,
            to_cached - into_cached,
        )
        if into_input or into_output or into_cached:
            tokens = Breakdown(
                into_input - into_cached, into_cached, into_output, -into_input - into_output
            )
            pieces.append(BookedLine(line.booked_on, tokens))
    return pieces


def _marks_after(
    previous: Counters, mark: Counters, pieces: Sequence[BookedLine]
) -> list[Counters] | None:
    """The high-water mark after each piece of a move from `previous` to `mark`: its prompt
    and completion counts grown by the tokens the piece moves there, its cached count by
    what makes the cached tokens (at most the prompt's, SPEC §1.6) grow by the piece's
    (a cached count past the prompt's already holds them). None unless each mark is exactly
    its piece further (`new_usage`) and on the way to `mark` (no count down from the one
    before, none above `mark`'s)."""
    marks, before = [], previous
    for piece in pieces:
        prompt = before.prompt + piece.tokens.input + piece.tokens.cached
        cached = min(before.cached, before.prompt) + piece.tokens.cached
        after = before._replace(
            prompt=prompt,
            completion=before.completion + piece.tokens.output,
            cached=max(cached, before.cached) if cached == prompt else cached,
        )
        on_the_way = not decreased(after, before) and not decreased(mark, after)
        if new_usage(after, before) != piece.tokens or not on_the_way:
            return None
        marks.append(after)
        before = after
    return marks


def _describe_move(move: Breakdown) -> str:
    """A move of tokens between kinds, as `unsplit -1,000, input +1,000`."""
    moved = [f"{kind} {count:+,}" for kind, count in move._asdict().items() if count]
    return ", ".join(moved) or "no tokens"


def _label(value: Any) -> str | None:
    """A status or session id as a ledger entry keeps it: a string of at most MAX_LABEL
    characters, else left out (None)."""
    text = bson_string(value)
    return text if text is not None and len(text) <= MAX_LABEL else None


def _flagged(runner_id: str, kind: str, org: str, period: str, detail: str) -> AnomalyRecord:
    """An anomaly of usage billed all the same (`Anomaly.BILLED_FLAGGED`), seen with usage
    of `period`."""
    return AnomalyRecord(runner_id, kind, org, period, detail, usage_period=period)


def _held(
    runner_id: str,
    org: str,
    period: str,
    pending: bool,
    flags: tuple[AnomalyRecord, ...],
    kind: str,
    detail: str,
) -> Assessment:
    """An observation that bills nothing, with the anomaly that holds it."""
    record = AnomalyRecord(runner_id, kind, org, period, detail)
    return Assessment(runner_id, org, period, pending, None, (*flags, record))
