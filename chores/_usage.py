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
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId

from ._periods import as_utc, period_of

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


class Anomaly:
    """Kinds of anomalies; *held* kinds bill nothing until the document is fixed."""

    NO_ORG = "no_org"
    MALFORMED_COUNTERS = "malformed_counters"
    BAD_MODEL = "bad_model"
    BAD_KEY_SOURCE = "bad_key_source"
    BAD_END_TIME = "bad_end_time"
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
            BASELINE_MISSING,
            BASELINE_MALFORMED,
        }
    )


@dataclass(frozen=True, slots=True)
class Counters:
    """A snapshot, baseline, own counters or high-water mark: four token counts."""

    total: int = 0
    prompt: int = 0
    completion: int = 0
    cached: int = 0

    def minus(self, baseline: Counters) -> Counters:
        return Counters(
            max(0, self.total - baseline.total),
            max(0, self.prompt - baseline.prompt),
            max(0, self.completion - baseline.completion),
            max(0, self.cached - baseline.cached),
        )

    def maximum(self, other: Counters) -> Counters:
        return Counters(
            max(self.total, other.total),
            max(self.prompt, other.prompt),
            max(self.completion, other.completion),
            max(self.cached, other.cached),
        )

    def decreased_from(self, previous: Counters) -> bool:
        return (
            self.total < previous.total
            or self.prompt < previous.prompt
            or self.completion < previous.completion
            or self.cached < previous.cached
        )

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


ZERO = Counters()


@dataclass(frozen=True, slots=True)
class Breakdown:
    """Billable tokens by kind; `input` excludes cached prompt tokens."""

    input: int = 0
    cached: int = 0
    output: int = 0
    unsplit: int = 0

    @property
    def tokens(self) -> int:
        return self.input + self.cached + self.output + self.unsplit

    def __sub__(self, other: Breakdown) -> Breakdown:
        return Breakdown(
            self.input - other.input,
            self.cached - other.cached,
            self.output - other.output,
            self.unsplit - other.unsplit,
        )


def breakdown(counters: Counters) -> Breakdown:
    """SPEC §1.6: billable = max(total, prompt + completion); unsplit at the input rate."""
    cached = min(counters.cached, counters.prompt)
    return Breakdown(
        input=counters.prompt - cached,
        cached=cached,
        output=counters.completion,
        unsplit=max(0, counters.total - counters.prompt - counters.completion),
    )


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
    values: dict[str, int] = {}
    bad: list[str] = []
    for name, field_name in COUNTER_FIELDS.items():
        value = _counter_value(context.get(field_name))
        if value is None:
            bad.append(f"{field_name}={_describe(context.get(field_name))}")
        else:
            values[name] = value
    if bad:
        return "malformed counters: " + ", ".join(bad)
    return Counters(**values)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def runner_key(source_id: Any) -> str:
    """The ledger's name for a runner document: the hex of its ObjectId.

    Non-ObjectId ids are prefixed with their type so that a string id can never
    collide with an ObjectId of the same hex.
    """
    if isinstance(source_id, ObjectId):
        return str(source_id)
    return f"{type(source_id).__name__}:{source_id!r}"[:300]


@dataclass(frozen=True, slots=True)
class AnomalyRecord:
    runner_id: str
    kind: str
    org: str | None
    period: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Delta:
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


@dataclass(slots=True)
class Assessment:
    """What one observation of a runner document means for billing."""

    runner_id: str
    org: str | None = None
    period: str | None = None
    pending: bool = False
    delta: Delta | None = None
    anomalies: list[AnomalyRecord] = field(default_factory=list)
    billed_cleanly: bool = False


@dataclass(frozen=True, slots=True)
class LedgerHead:
    """The latest ledger entry of a runner: its sequence number and high-water mark."""

    seq: int
    high_water: Counters


def _org_of(doc: Mapping[str, Any]) -> str | None:
    context = doc.get("context")
    if not isinstance(context, Mapping):
        return None
    org = context.get("workspace_id")
    if isinstance(org, str) and org:
        return org
    return None


def _baseline(spawn_contexts: Sequence[Any]) -> tuple[Counters | None, str | None, str | None]:
    """`(baseline, anomaly kind, detail)` from the spawn findings' `_context`s."""
    if not spawn_contexts:
        return None, Anomaly.BASELINE_MISSING, "no spawn finding for this subagent yet"
    baselines: list[Counters] = []
    for context in spawn_contexts:
        parsed = parse_counters(context) if isinstance(context, Mapping) else "not a mapping"
        if isinstance(parsed, str):
            return None, Anomaly.BASELINE_MALFORMED, f"spawn finding: {parsed}"
        baselines.append(parsed)
    merged = baselines[0]
    for other in baselines[1:]:
        merged = merged.maximum(other)
    if len(set(baselines)) > 1:
        # Several different spawn records: take the highest baseline (bills the
        # least) and flag it, rather than risk charging inherited tokens.
        return merged, Anomaly.BASELINE_CONFLICT, f"{len(set(baselines))} different spawn records"
    return merged, None, None


def assess(
    doc: Mapping[str, Any],
    *,
    spawn_contexts: Sequence[Any],
    head: LedgerHead | None,
    now: datetime,
    max_tokens_per_run: int,
) -> Assessment:
    """Apply every rule of SPEC §1 to one runner document.

    `spawn_contexts` are the `_context`s of the findings that spawned this
    document (only read for subagents); `head` is its latest ledger entry.
    """
    runner_id = runner_key(doc.get("_id"))
    result = Assessment(runner_id=runner_id)

    def flag(kind: str, detail: str) -> None:
        result.anomalies.append(AnomalyRecord(runner_id, kind, result.org, result.period, detail))

    status = doc.get("status")
    end_time = doc.get("end_time")
    result.pending = not isinstance(status, str) or status not in TERMINAL_STATUSES
    result.pending = result.pending or end_time is None

    org = _org_of(doc)
    context = doc.get("context")
    if org is None or not isinstance(context, Mapping):
        flag(Anomaly.NO_ORG, "context.workspace_id is missing, empty or not a string")
        result.pending = False
        return result
    result.org = org

    if end_time is None:
        usage_time = as_utc(now)
    elif (
        isinstance(end_time, datetime)
        and EARLIEST_END <= as_utc(end_time) <= as_utc(now) + LATEST_END
    ):
        usage_time = as_utc(end_time)
    else:
        result.period = period_of(now)
        flag(Anomaly.BAD_END_TIME, f"end_time is {_describe(end_time)}")
        return result
    result.period = period_of(usage_time)

    snapshot = parse_counters(context)
    if isinstance(snapshot, str):
        flag(Anomaly.MALFORMED_COUNTERS, snapshot)
        return result

    model = context.get("ai_model")
    if model is not None and (not isinstance(model, str) or len(model) > MAX_MODEL_NAME):
        flag(Anomaly.BAD_MODEL, f"ai_model is {_describe(model)}")
        return result

    key_source = context.get("ai_key_source")
    if key_source not in (None, "platform", "byok"):
        flag(Anomaly.BAD_KEY_SOURCE, f"ai_key_source is {_describe(key_source)}")
        return result

    own = snapshot
    parent_id = None
    if context.get("subagent") is True:
        parent_id = _spawner(spawn_contexts)
        baseline, kind, detail = _baseline(spawn_contexts)
        if kind is not None and detail is not None:
            flag(kind, detail)
        if baseline is None:
            result.pending = True  # re-read every run until the spawn finding appears
            return result
        own = snapshot.minus(baseline)

    if own.total < own.prompt + own.completion:
        flag(
            Anomaly.TOTAL_BELOW_SPLIT,
            f"total {own.total} < prompt {own.prompt} + completion {own.completion}",
        )

    previous = head.high_water if head else ZERO
    if own.decreased_from(previous):
        flag(
            Anomaly.COUNTER_DECREASED,
            f"own counters {own.as_dict()} below billed high-water {previous.as_dict()}",
        )
    high_water = previous.maximum(own)

    billable = breakdown(high_water)
    if billable.tokens > max_tokens_per_run:
        flag(
            Anomaly.OVER_CEILING,
            f"{billable.tokens} tokens exceed MAX_TOKENS_PER_RUN={max_tokens_per_run}",
        )
        return result

    result.billed_cleanly = True
    if high_water == previous:
        return result
    session = context.get("session_id")
    result.delta = Delta(
        runner_id=runner_id,
        seq=(head.seq + 1) if head else 1,
        org=org,
        model=model,
        byok=key_source == "byok",
        usage_time=usage_time,
        high_water=high_water,
        tokens=billable - breakdown(previous),
        status=status if isinstance(status, str) else None,
        session_id=session if isinstance(session, str) else None,
        subagent=context.get("subagent") is True,
        parent_id=parent_id,
    )
    return result


def _spawner(spawn_contexts: Sequence[Any]) -> str | None:
    """The runner that wrote the spawn finding (its `_context.task_id`), if recorded."""
    for context in spawn_contexts:
        if isinstance(context, Mapping) and isinstance(context.get("task_id"), str):
            return str(context["task_id"])[:64]
    return None
