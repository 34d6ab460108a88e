"""The metering rules, pure: a runner document in, its new usage and anomalies out.

Vocabulary (used the same way everywhere in the package):

- *snapshot*: the four cumulative counters a runner document carries right now;
- *baseline*: for a subagent, the counters it inherited at spawn (the `_context`
  of its spawn finding);
- *own counters*: snapshot minus baseline, counter by counter, floored at 0;
- *high-water mark*: per counter, the highest own value already billed;
- *breakdown*: own counters split into input / cached / output / unsplit tokens;
- *delta*: breakdown(new high-water mark) - breakdown(old high-water mark): the
  new usage to bill. Summing every delta of a runner telescopes to the breakdown
  of its high-water mark, so nothing is billed twice.

No I/O here: `assess` is what the property tests and benchmarks exercise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any, NamedTuple

from bson import ObjectId

from chores.core.periods import as_utc, period_of

COUNTER_FIELDS = {
    "total": "ai_tokens",
    "prompt": "ai_prompt_tokens",
    "completion": "ai_completion_tokens",
    "cached": "ai_cached_tokens",
}
TERMINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "SKIPPED"})
MAX_COUNTER = 2**63 - 1  # what BSON can store; anything above is garbage
MAX_MODEL_NAME = 256
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

    # Resolved automatically once the runner bills cleanly again; the others stay
    # open for a person to review.
    SELF_HEALING = frozenset(
        {
            MALFORMED_COUNTERS,
            BAD_MODEL,
            BAD_KEY_SOURCE,
            BAD_END_TIME,
            FUTURE_END_TIME,
            BASELINE_MISSING,
            BASELINE_MALFORMED,
        }
    )


# `tuple.__new__(SomeNamedTuple, values)` builds a NamedTuple without the Python-level
# `__new__` that the class call goes through: three times cheaper, used on the hot path only.
_new = tuple.__new__


class Counters(NamedTuple):
    """A snapshot, baseline, own counters or high-water mark: four token counts."""

    total: int = 0
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "prompt": self.prompt,
            "completion": self.completion,
            "cached": self.cached,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Counters:
        return cls(
            int(data["total"]), int(data["prompt"]), int(data["completion"]), int(data["cached"])
        )


# On the hot path the four counters travel as a plain tuple, in Counters' order (Python
# builds and unpacks a plain tuple several times cheaper than a NamedTuple); a Counters is
# one too, so either is accepted wherever Counts is.
Counts = tuple[int, int, int, int]  # total, prompt, completion, cached
ZERO: Counts = (0, 0, 0, 0)


def own_counters(snapshot: Counts, baseline: Counts) -> Counts:
    """Snapshot minus baseline, counter by counter, floored at 0."""
    total, prompt, completion, cached = snapshot
    base_total, base_prompt, base_completion, base_cached = baseline
    total -= base_total
    prompt -= base_prompt
    completion -= base_completion
    cached -= base_cached
    return (
        total if total > 0 else 0,
        prompt if prompt > 0 else 0,
        completion if completion > 0 else 0,
        cached if cached > 0 else 0,
    )


def highest(first: Counts, second: Counts) -> Counts:
    """Counter by counter, the higher of two."""
    total, prompt, completion, cached = first
    total_2, prompt_2, completion_2, cached_2 = second
    return (
        total if total >= total_2 else total_2,
        prompt if prompt >= prompt_2 else prompt_2,
        completion if completion >= completion_2 else completion_2,
        cached if cached >= cached_2 else cached_2,
    )


def decreased(current: Counts, before: Counts) -> bool:
    """Whether any counter went down."""
    total, prompt, completion, cached = current
    total_2, prompt_2, completion_2, cached_2 = before
    return total < total_2 or prompt < prompt_2 or completion < completion_2 or cached < cached_2


class Breakdown(NamedTuple):
    """Billable tokens by kind; `input` excludes cached prompt tokens."""

    input: int = 0
    cached: int = 0
    output: int = 0
    unsplit: int = 0

    @property
    def tokens(self) -> int:
        return self.input + self.cached + self.output + self.unsplit


# A Breakdown's values as a plain tuple: input, cached, output, unsplit.
Tokens = tuple[int, int, int, int]


def breakdown(counters: Counts) -> Tokens:
    """SPEC §1.6: billable = max(total, prompt + completion); unsplit at the input rate."""
    total, prompt, completion, cached = counters
    if cached > prompt:
        cached = prompt
    unsplit = total - prompt - completion
    return (prompt - cached, cached, completion, unsplit if unsplit > 0 else 0)


def new_usage(high_water: Counts, previous: Counts) -> Tokens:
    """breakdown(high_water) - breakdown(previous): the tokens to bill now."""
    input, cached, output, unsplit = breakdown(high_water)
    input_2, cached_2, output_2, unsplit_2 = breakdown(previous)
    return (input - input_2, cached - cached_2, output - output_2, unsplit - unsplit_2)


def _counter_value(value: Any) -> int | None:
    """A valid counter as int, or None when malformed. Missing/None is 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_COUNTER else None
    if (
        isinstance(value, float)
        and math.isfinite(value)
        and value.is_integer()
        and 0 <= value <= MAX_COUNTER
    ):
        return int(value)
    return None


def parse_counters(context: Mapping[str, Any]) -> Counters | str:
    """The snapshot in a context, or a description of its malformed counters."""
    counts = read_counters(context)
    return counts if isinstance(counts, str) else _new(Counters, counts)


def read_counters(context: Mapping[str, Any]) -> Counts | str:
    """`parse_counters` as a plain tuple (the hot path)."""
    fields: dict[str, Any] = context if type(context) is dict else dict(context)
    total = fields.get("ai_tokens")
    prompt = fields.get("ai_prompt_tokens")
    completion = fields.get("ai_completion_tokens")
    cached = fields.get("ai_cached_tokens")
    # The usual case, four plain ints in range (a missing counter is 0), without a call
    # per counter.
    if total is None:
        total = 0
    if prompt is None:
        prompt = 0
    if completion is None:
        completion = 0
    if cached is None:
        cached = 0
    if (
        type(total) is int
        and type(prompt) is int
        and type(completion) is int
        and type(cached) is int
        # All four in [0, 2^63 - 1] at once: the OR of ints is negative when one is, and
        # above MAX_COUNTER (all ones) when one is.
        and 0 <= (total | prompt | completion | cached) <= MAX_COUNTER
    ):
        return (total, prompt, completion, cached)
    values: list[int] = []
    bad: list[str] = []
    for field_name in COUNTER_FIELDS.values():
        value = _counter_value(fields.get(field_name))
        if value is None:
            bad.append(f"{field_name}={_describe(fields.get(field_name))}")
        else:
            values.append(value)
    if bad:
        return "malformed counters: " + ", ".join(bad)
    total, prompt, completion, cached = values
    return (total, prompt, completion, cached)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


MAX_KEY = 300  # characters of a runner key written as it is; longer ones are digested
DIGEST_PREFIX = "sha256-"


def runner_key(source_id: Any) -> str:
    """The ledger's name for a runner document, one per `_id` and never shared.

    - an ObjectId: its hex (24 characters);
    - any other id: `type:repr` (e.g. `str:'abc'`), so that a string id can never collide
      with an ObjectId of the same hex, when that is at most MAX_KEY characters;
    - longer: `sha256-` and the SHA-256 hex of that `type:repr`. Never truncated: two
      runners whose ids share a prefix would share one high-water mark. No other key can
      look like a digest: a `type:repr` key starts with an identifier and a colon, and an
      ObjectId's hex has no `-`.

    Keys of ids up to MAX_KEY characters are what they always were (existing ledgers keep
    their keys).
    """
    if type(source_id) is ObjectId:
        return str(source_id)
    key = f"{type(source_id).__name__}:{source_id!r}"
    if len(key) <= MAX_KEY:
        return key
    return DIGEST_PREFIX + sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


class AnomalyRecord(NamedTuple):
    runner_id: str
    kind: str
    org: str | None
    period: str | None
    detail: str


class Delta(NamedTuple):
    """New usage of one runner: the next ledger entry."""

    runner_id: str
    seq: int
    org: str
    model: str | None
    byok: bool
    usage_time: datetime
    high_water: Counters
    tokens: Breakdown
    status: str | None
    session_id: str | None
    subagent: bool = False
    parent_id: str | None = None  # the spawning runner, when its spawn finding names it

    @property
    def period(self) -> str:
        return period_of(self.usage_time)


class Assessment(NamedTuple):
    """What one observation of a runner document means for billing."""

    runner_id: str
    org: str | None = None
    period: str | None = None
    pending: bool = False
    delta: Delta | None = None
    anomalies: tuple[AnomalyRecord, ...] = ()
    billed_cleanly: bool = False


def is_subagent_context(context: Mapping[str, Any]) -> bool:
    """Whether a runner's context marks it a subagent, as secator writes it (SPEC §1 fact 4).

    `subagent` holds the session name (a string), and only from the child's second
    write on; `ai_subagent_depth` (>= 1) and `parent_session_id` are there from its
    first write, which already carries the inherited counters. `has_parent` marks
    nothing (secator writes it False on subagents).
    """
    if context.get("subagent"):
        return True
    depth = context.get("ai_subagent_depth")
    if isinstance(depth, int | float) and not isinstance(depth, bool) and depth >= 1:
        return True
    parent_session = context.get("parent_session_id")
    return parent_session is not None and parent_session != ""


def is_subagent(doc: Mapping[str, Any]) -> bool:
    """Is this runner document a subagent's (its context says so)?"""
    context = doc.get("context")
    return isinstance(context, Mapping) and is_subagent_context(context)


class LedgerHead(NamedTuple):
    """The latest ledger entry of a runner: its sequence number and high-water mark."""

    seq: int
    high_water: Counters


# What a subagent's spawn findings say: (baseline, parent runner id, anomaly kind, detail).
# A plain tuple, unpacked at once by `assess`. No baseline: not known yet, bill nothing.
Spawn = tuple[Counts | None, str | None, str | None, str]


def read_spawn(spawn_contexts: Sequence[Any], org: str) -> Spawn:
    """The baseline and parent of a subagent of `org` from its spawn findings' `_context`s.

    Only a finding of the subagent's own org is a baseline (its `_context.workspace_id`
    is `org`, compared exactly): a finding naming this runner from another org's context
    (or from none) is ignored, so one org's data never changes another org's billing
    (SPEC §4). With only foreign findings the baseline is missing (held); several own
    findings that disagree are a `baseline_conflict`. An anomaly's detail says how many
    foreign findings were ignored.
    """
    if len(spawn_contexts) == 1:  # the usual case: one finding, of this org, well formed
        context = spawn_contexts[0]
        if type(context) is dict and context.get("workspace_id") == org:
            parsed = read_counters(context)
            if type(parsed) is tuple:
                task_id = context.get("task_id")
                return parsed, task_id[:64] if type(task_id) is str else None, None, ""
    own = [c for c in spawn_contexts if isinstance(c, Mapping) and c.get("workspace_id") == org]
    foreign = len(spawn_contexts) - len(own)
    ignored = f" ({foreign} spawn finding(s) of another org ignored)" if foreign else ""
    parent_id = _spawner(own)
    if not own:
        detail = "no spawn finding of this org for this subagent yet" + ignored
        return None, parent_id, Anomaly.BASELINE_MISSING, detail
    baselines: list[Counts] = []
    for context in own:
        parsed = read_counters(context)
        if isinstance(parsed, str):
            detail = f"spawn finding: {parsed}{ignored}"
            return None, parent_id, Anomaly.BASELINE_MALFORMED, detail
        baselines.append(parsed)
    merged = baselines[0]
    for other in baselines[1:]:
        merged = highest(merged, other)
    if len(set(baselines)) > 1:
        # Several different spawn records: take the highest baseline (bills the
        # least) and flag it, rather than risk charging inherited tokens.
        detail = f"{len(set(baselines))} different spawn records{ignored}"
        return merged, parent_id, Anomaly.BASELINE_CONFLICT, detail
    return merged, parent_id, None, ""


def _usage_time(end_time: Any, now: datetime, future_skew_seconds: float) -> datetime | str:
    """When the usage happened: the end time, or `now` while running.

    Otherwise the anomaly that holds it: `bad_end_time` for garbage (not a datetime,
    before 2000, more than LATEST_END after `now`), `future_end_time` for an end time
    more than the allowed skew after `now`: billed by the first run whose `now` reaches
    it, never into a future period ahead of it (SPEC §7).
    """
    now = as_utc(now)
    if end_time is None:
        return now
    if not isinstance(end_time, datetime):
        return Anomaly.BAD_END_TIME
    end_time = as_utc(end_time)
    if end_time < EARLIEST_END or end_time > now + LATEST_END:
        return Anomaly.BAD_END_TIME
    if end_time > _latest_end(now, future_skew_seconds):
        return Anomaly.FUTURE_END_TIME
    return end_time


# (now, skew, now + skew) of the latest call: the documents of a run share one `now`.
_latest_for: tuple[datetime, float, datetime] = (EARLIEST_END, 0.0, EARLIEST_END)


def _latest_end(now: datetime, future_skew_seconds: float) -> datetime:
    """The latest usage time billable at `now` (`now` + the allowed skew); remembered for
    the last `now` and skew seen."""
    global _latest_for
    seen, skew, latest = _latest_for
    if seen is not now or skew != future_skew_seconds:
        latest = now + timedelta(seconds=future_skew_seconds)
        _latest_for = (now, future_skew_seconds, latest)
    return latest


# What `verdict` says of one observation: `Assessment` and `Delta` as plain tuples, without
# the runner id (the caller's). `assess` wraps them; the in-memory meter reads them as they
# are (chores/metering/memory_meter.py).
# DeltaValues: seq, model, byok, usage_time, high_water, tokens, status, session_id, subagent,
# parent_id (Delta's fields after org).
DeltaValues = tuple[
    int, str | None, bool, datetime, Counts, Tokens, str | None, str | None, bool, str | None
]
# Verdict: org, period, pending, anomalies, billed_cleanly, usage (Assessment's fields after
# runner_id, with DeltaValues for the Delta).
Verdict = tuple[str | None, str | None, bool, tuple[AnomalyRecord, ...], bool, DeltaValues | None]
Head = tuple[int, Counts]  # seq, high-water mark: a LedgerHead or a plain tuple


def assess(
    doc: Mapping[str, Any],
    *,
    spawn_contexts: Sequence[Any],
    head: Head | None,
    now: datetime,
    max_tokens_per_run: int,
    future_skew_seconds: float,
    runner_id: str | None = None,
) -> Assessment:
    """Apply every rule of SPEC §1 to one runner document.

    `spawn_contexts` are the `_context`s of the findings that name this document as
    the runner they spawned (only read for subagents, and only those of the document's
    own org count: `read_spawn`); `head` is its latest ledger entry;
    `future_skew_seconds` is how far after `now` a usage time may be
    (Settings.future_skew_seconds); `runner_id` is `runner_key(doc["_id"])` when the
    caller has already computed it.
    """
    fields: dict[str, Any] = doc if type(doc) is dict else dict(doc)
    if runner_id is None:
        runner_id = runner_key(fields.get("_id"))
    org, period, pending, anomalies, billed_cleanly, usage = verdict(
        fields, spawn_contexts, head, now, max_tokens_per_run, future_skew_seconds, runner_id
    )
    if usage is None:
        return _new(Assessment, (runner_id, org, period, pending, None, anomalies, billed_cleanly))
    seq, model, byok, usage_time, high_water, tokens, status, session_id, subagent, parent_id = (
        usage
    )
    assert org is not None
    delta = _new(
        Delta,
        (
            runner_id,
            seq,
            org,
            model,
            byok,
            usage_time,
            _new(Counters, high_water),
            _new(Breakdown, tokens),
            status,
            session_id,
            subagent,
            parent_id,
        ),
    )
    return _new(Assessment, (runner_id, org, period, pending, delta, anomalies, billed_cleanly))


def verdict(
    doc: Mapping[str, Any],
    spawn_contexts: Sequence[Any],
    head: Head | None,
    now: datetime,
    max_tokens_per_run: int,
    future_skew_seconds: float,
    runner_id: str,
) -> Verdict:
    """`assess`, as plain tuples: where every rule of SPEC §1 is applied.

    Hot path of the engine (see benchmarks/): one straight pass, no per-call
    closures, anomaly records built only when there is one.
    """
    fields: dict[str, Any] = doc if type(doc) is dict else dict(doc)
    status = fields.get("status")
    end_time = fields.get("end_time")
    pending = end_time is None or not isinstance(status, str) or status not in TERMINAL_STATUSES

    # A document value: anything but a mapping is no context at all (no org, below).
    raw_context = fields.get("context")
    if type(raw_context) is dict:
        context: dict[str, Any] = raw_context
    elif isinstance(raw_context, Mapping):
        context = dict(raw_context)
    else:
        context = {}
    org = context.get("workspace_id")
    if not isinstance(org, str) or not org:
        detail = "context.workspace_id is missing, empty or not a string"
        record = AnomalyRecord(runner_id, Anomaly.NO_ORG, None, None, detail)
        return None, None, False, (record,), False, None

    if now.tzinfo is not UTC:
        now = as_utc(now)
    if (  # the usual case: an aware UTC end time in range (pymongo with tz_aware, tzinfo=UTC)
        type(end_time) is datetime
        and end_time.tzinfo is UTC
        and end_time >= EARLIEST_END
        and end_time <= _latest_end(now, future_skew_seconds)
    ):
        usage_time: datetime = end_time
    else:
        when = _usage_time(end_time, now, future_skew_seconds)
        if isinstance(when, str):
            # Held in the period of `now`: a future period gets no draft ahead of its time.
            if when == Anomaly.FUTURE_END_TIME:
                # Re-read every run (pending) until `now` reaches it, then billed as usual.
                detail = f"end_time {_describe(end_time)} > now {now} + {future_skew_seconds:g} s"
                return _held(runner_id, org, period_of(now), True, (), when, detail)
            detail = f"end_time is {_describe(end_time)}"
            return _held(runner_id, org, period_of(now), pending, (), when, detail)
        usage_time = when
    period = period_of(usage_time)

    snapshot = read_counters(context)
    if isinstance(snapshot, str):
        return _held(runner_id, org, period, pending, (), Anomaly.MALFORMED_COUNTERS, snapshot)

    model = context.get("ai_model")
    if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
        detail = f"ai_model is {_describe(model)}"
        return _held(runner_id, org, period, pending, (), Anomaly.BAD_MODEL, detail)

    key_source = context.get("ai_key_source")
    if key_source is not None and key_source != "platform" and key_source != "byok":
        detail = f"ai_key_source is {_describe(key_source)}"
        return _held(runner_id, org, period, pending, (), Anomaly.BAD_KEY_SOURCE, detail)

    flags: tuple[AnomalyRecord, ...] = ()
    own = snapshot
    parent_id = None
    subagent = is_subagent_context(context)
    if subagent:
        baseline, parent_id, kind, problem = read_spawn(spawn_contexts, org)
        if baseline is None:
            assert kind is not None
            # re-read every run until the spawn finding appears
            return _held(runner_id, org, period, True, (), kind, problem)
        if kind is not None:
            flags = (AnomalyRecord(runner_id, kind, org, period, problem),)
        own = own_counters(snapshot, baseline)

    total, prompt, completion, _ = own
    if total < prompt + completion:
        detail = f"total {total} < prompt {prompt} + completion {completion}"
        flags = (*flags, AnomalyRecord(runner_id, Anomaly.TOTAL_BELOW_SPLIT, org, period, detail))

    if head is None:
        seq = 1
        previous = ZERO
        high_water = own
    else:
        head_seq, previous = head
        seq = head_seq + 1
        if decreased(own, previous):
            detail = (
                f"own counters {Counters(*own).as_dict()} below billed high-water "
                f"{Counters(*previous).as_dict()}"
            )
            flags = (
                *flags,
                AnomalyRecord(runner_id, Anomaly.COUNTER_DECREASED, org, period, detail),
            )
        high_water = highest(previous, own)

    total, prompt, completion, _ = high_water
    tokens = total if total > prompt + completion else prompt + completion  # SPEC §1.6
    if tokens > max_tokens_per_run:
        detail = f"{tokens} tokens exceed MAX_TOKENS_PER_RUN={max_tokens_per_run}"
        return _held(runner_id, org, period, pending, flags, Anomaly.OVER_CEILING, detail)

    if high_water == previous:
        return org, period, pending, flags, True, None
    session_id = context.get("session_id")
    usage: DeltaValues = (
        seq,
        model,
        key_source == "byok",  # byok
        usage_time,
        high_water,
        breakdown(high_water) if head is None else new_usage(high_water, previous),  # tokens
        status if isinstance(status, str) else None,
        session_id if isinstance(session_id, str) else None,
        subagent,
        parent_id,
    )
    return org, period, pending, flags, True, usage


def _held(
    runner_id: str,
    org: str,
    period: str,
    pending: bool,
    flags: tuple[AnomalyRecord, ...],
    kind: str,
    detail: str,
) -> Verdict:
    """An observation that bills nothing, with the anomaly that holds it."""
    record = AnomalyRecord(runner_id, kind, org, period, detail)
    return org, period, pending, (*flags, record), False, None


def _spawner(spawn_contexts: Sequence[Any]) -> str | None:
    """The runner that wrote the spawn finding (its `_context.task_id`), if recorded."""
    for context in spawn_contexts:
        if isinstance(context, Mapping) and isinstance(context.get("task_id"), str):
            return str(context["task_id"])[:64]
    return None
