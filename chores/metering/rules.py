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

No I/O here. A run builds one `Rules` (its `now`, ceiling and allowed skew) and calls
`Rules.assess` per document.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import reduce
from hashlib import sha256
from typing import Any, NamedTuple

from bson import ObjectId
from bson.int64 import Int64

from chores.core.orgs import MAX_ORG
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
MAX_LABEL = 256  # characters of a status or session id copied into a ledger entry
NOT_UTF8 = "\ufffd"  # what the chore's reads decode bytes that are not UTF-8 to (db.reading)
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


ZERO = Counters()


def own_counters(snapshot: Counters, baseline: Counters) -> Counters:
    """Snapshot minus baseline, counter by counter, floored at 0."""
    return Counters(
        max(snapshot.total - baseline.total, 0),
        max(snapshot.prompt - baseline.prompt, 0),
        max(snapshot.completion - baseline.completion, 0),
        max(snapshot.cached - baseline.cached, 0),
    )


def highest(first: Counters, second: Counters) -> Counters:
    """Counter by counter, the higher of two."""
    return Counters(
        max(first.total, second.total),
        max(first.prompt, second.prompt),
        max(first.completion, second.completion),
        max(first.cached, second.cached),
    )


def decreased(current: Counters, before: Counters) -> bool:
    """Whether any counter went down."""
    return (
        current.total < before.total
        or current.prompt < before.prompt
        or current.completion < before.completion
        or current.cached < before.cached
    )


class Breakdown(NamedTuple):
    """Billable tokens by kind; `input` excludes cached prompt tokens."""

    input: int = 0
    cached: int = 0
    output: int = 0
    unsplit: int = 0

    @property
    def tokens(self) -> int:
        return self.input + self.cached + self.output + self.unsplit


def breakdown(counters: Counters) -> Breakdown:
    """SPEC §1.6: billable = max(total, prompt + completion); unsplit at the input rate."""
    total, prompt, completion, cached = counters
    cached = min(cached, prompt)
    unsplit = max(total - prompt - completion, 0)
    return Breakdown(prompt - cached, cached, completion, unsplit)


def billable_tokens(counters: Counters) -> int:
    """SPEC §1.6: max(total, prompt + completion)."""
    return max(counters.total, counters.prompt + counters.completion)


def new_usage(high_water: Counters, previous: Counters) -> Breakdown:
    """breakdown(high_water) - breakdown(previous): the tokens to bill now."""
    now, before = breakdown(high_water), breakdown(previous)
    return Breakdown(
        input=now.input - before.input,
        cached=now.cached - before.cached,
        output=now.output - before.output,
        unsplit=now.unsplit - before.unsplit,
    )


def reclassified_mark(previous: Counters, high_water: Counters) -> Counters:
    """The high-water mark between `previous` and `high_water` up to which the new counters
    only reclassify tokens already billed (unsplit to input or output when the split
    catches up with the total, input to cached when the cached count does), adding none:
    `new_usage(mark, previous)` sums to zero, and `new_usage(high_water, mark)` has no
    negative count. `previous` itself when no count goes down, the usual step (SPEC §1.6).

    Billed as one step, the tokens that leave a kind would be credited at the rates of the
    line the new usage goes to, not of the one that charged them (a model, key source or
    price change in between): `Rules.assess` books the reclassification on the line of the
    runner's previous entry instead. The prompt takes reclassified tokens before the
    completion; the cached count moves only as far as the rest of the step requires.
    """
    total, prompt_before, completion_before, cached_before = previous
    prompt_after, completion_after, cached_after = high_water[1:]
    unsplit_after = max(high_water.total - prompt_after - completion_after, 0)
    split = max(prompt_before + completion_before, total - unsplit_after)
    prompt = min(prompt_after, split - completion_before)
    uncached_after = max(prompt_after - cached_after, 0)
    cached = max(cached_before, min(cached_after, prompt - uncached_after))
    return Counters(total, prompt, split - prompt, cached)


def _counter_value(value: Any) -> int | None:
    """A valid counter as int, or None when malformed. Missing/None is 0."""
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # bson's Int64 too
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
    values = [_counter_value(context.get(field)) for field in COUNTER_FIELDS.values()]
    if None not in values:
        return Counters._make(values)
    bad = [
        f"{field}={_describe(context.get(field))}"
        for field, value in zip(COUNTER_FIELDS.values(), values, strict=True)
        if value is None
    ]
    return "malformed counters: " + ", ".join(bad)


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


MAX_KEY = 300  # characters of a runner key written as it is; longer ones are digested
DIGEST_PREFIX = "sha256-"
INT32 = range(-(2**31), 2**31)  # BSON stores a Python int outside it as int64, read as Int64


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
    their keys). A Python int outside int32 is keyed as the `Int64` every read from BSON
    gives back, so that the same runner has one key before and after a round trip.
    """
    if type(source_id) is ObjectId:
        return str(source_id)
    if type(source_id) is int and source_id not in INT32:
        source_id = Int64(source_id)
    key = f"{type(source_id).__name__}:{source_id!r}"
    if len(key) <= MAX_KEY:
        return key
    return DIGEST_PREFIX + sha256(key.encode("utf-8", "backslashreplace")).hexdigest()


def source_id_of(key: str) -> Any | None:
    """The `_id` a runner key was made from, where the key shows it: an ObjectId's hex, or a
    `str:`, `int:`, `Int64:`, `float:` or `bool:` key not digested. None otherwise (a digest,
    another type). Checked: `runner_key` of the answer is `key` again."""
    kind, _, text = key.partition(":")
    candidate: Any
    if ObjectId.is_valid(key):
        candidate = ObjectId(key)
    elif kind in ("str", "int", "Int64", "float", "bool"):
        try:
            candidate = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
        if kind == "Int64" and type(candidate) is int:
            candidate = Int64(candidate)  # BSON's 64-bit integer, as pymongo reads it back
    else:
        return None
    return candidate if runner_key(candidate) == key else None


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
    period: str  # of the usage time
    high_water: Counters
    tokens: Breakdown
    status: str | None
    session_id: str | None
    subagent: bool = False
    parent_id: str | None = None  # the spawning runner, when its spawn finding names it


class Assessment(NamedTuple):
    """What one observation of a runner document means for billing: the new usage
    (`delta`), preceded by the reclassification of tokens already billed on the line that
    charged them (`reclassified`, `reclassified_mark`), each a ledger entry."""

    runner_id: str
    org: str | None = None
    period: str | None = None
    pending: bool = False
    delta: Delta | None = None
    anomalies: tuple[AnomalyRecord, ...] = ()
    billed_cleanly: bool = False
    reclassified: Delta | None = None

    @property
    def deltas(self) -> tuple[Delta, ...]:
        """The ledger entries to write, in sequence order."""
        return tuple(d for d in (self.reclassified, self.delta) if d is not None)


def is_subagent_context(context: Mapping[str, Any]) -> bool:
    """Whether a runner's context marks it a subagent, as secator writes it (SPEC §1 fact 4).

    `subagent` holds the session name (a string), and only from the child's second
    write on; `ai_subagent_depth` (>= 1) and `parent_session_id` are there from its
    first write, which already carries the inherited counters. `has_parent` marks
    nothing (secator writes it False on subagents).

    A depth that is not a number below 1 (a string, NaN, an object) marks a subagent
    too: read as top-level, a subagent's inherited counters would be billed twice; read as
    a subagent, it is held until a spawn finding gives its baseline.

    So does a `tool_call_id` (beyond SPEC §1, from secator 0.52.1's code): secator adds the
    action's to the context of every runner an AI run's action starts (`ai/actions.py`
    `_get_result_context`), and a workflow hands its context to its steps, so an `ai`
    step of a workflow an AI run started carries it, with the run's counters, and nothing
    else says so; its spawn finding, naming the workflow, may be stored after it
    (`_run_batch`). A run a person started has none.
    """
    if context.get("subagent"):
        return True
    tool_call = context.get("tool_call_id")
    if type(tool_call) is str and tool_call:
        return True
    depth = context.get("ai_subagent_depth")
    if depth is not None and not (_is_number(depth) and depth < 1):
        return True
    parent_session = context.get("parent_session_id")
    return parent_session is not None and parent_session != ""


def spawner_ids(doc: Mapping[str, Any]) -> list[str]:
    """The runners whose spawn finding may hold this document's baseline: its own `_id`
    when it is marked a subagent, and the `workflow_id` and `scan_id` of its context.

    An `ai` step of a workflow (or scan) that an AI run spawned starts from a copy of that
    run's context, counters included, and the spawn finding names the workflow (or scan),
    never the step; the step carries the subagent markers only when the spawning run was a
    subagent itself (secator 0.52.1: `ai/actions.py` `_get_result_context` and
    `_child_preamble`, `runners/workflow.py`). A workflow no AI run spawned has no spawn
    finding: its steps are top-level runs.
    """
    context = doc.get("context")
    if not isinstance(context, Mapping):
        return []
    ids = [str(doc.get("_id"))] if is_subagent_context(context) else []
    ids += [
        started_by
        for started_by in (context.get("workflow_id"), context.get("scan_id"))
        if type(started_by) is str and started_by
    ]
    return ids


def baseline_findings(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]] | None = None,
    task_groups: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[Any]:
    """Of the spawn findings `found` (their `_context`s by the runner id they name), and of
    the subagents' spawn findings `by_session` (by their `extra_data.subagent_session_id`,
    `unpaired_session`), those that may hold this document's baseline. `task_groups`
    names, by (org, `context.task_id`), the runners of that org sharing that task id
    (`unpaired_task`); the findings naming them are in `found`.

    - The findings naming the document itself, when one of them is of its own org: a
      subagent's own.
    - Else those, and the findings naming the workflow or scan that started it written at
      its own subagent depth (`ai_subagent_depth`, 0 when absent): a workflow's steps run at
      the depth of the run that spawned the workflow, whose context the spawn finding
      carries. A subagent that one of those steps spawned is one deeper, and secator strips
      the workflow's id from its context; should a copy keep it, the workflow's finding is
      not its baseline, and it waits for its own (SPEC §1 fact 4). A finding of another org
      naming the document changes nothing (`read_spawn` ignores it, SPEC §4).
    - Else, for a subagent no workflow or scan started, those and the spawn findings written
      for its own action (`tool_call_id`) of its session (`unpaired_session`) or, when its
      session has none, naming another runner of its org under its `context.task_id`
      (`unpaired_task`): a chunk of a subagent, or of a runner an AI action started. A
      runner the subagent started itself (`run_task`) shares the session under an action
      of its own, and waits for its own finding.
    """
    context = doc.get("context")
    if not isinstance(context, Mapping):
        return []
    names = spawner_ids(doc)
    own_id = str(doc.get("_id"))
    naming_it = list(found.get(own_id, [])) if own_id in names else []
    org = _string(context.get("workspace_id"))
    if org is not None and own_org_spawns(naming_it, org):
        return naming_it
    started_by = [name for name in names if name != own_id]
    if not started_by:
        session_cards = _cards_of_its_session(doc, found, by_session or {})
        if session_cards:
            return naming_it + session_cards
        group = unpaired_task(doc, found, by_session or {})
        members = (task_groups or {}).get(group, []) if group is not None else []
        return naming_it + _of_its_action(
            context,
            [spawn for member in members if member != own_id for spawn in found.get(member, [])],
        )
    depth = subagent_depth(context)
    return naming_it + [
        spawn
        for name in started_by
        for spawn in found.get(name, [])
        if not isinstance(spawn, Mapping) or subagent_depth(spawn) == depth
    ]


def _of_its_action(context: Mapping[str, Any], spawns: Sequence[Any]) -> list[Any]:
    """The spawn findings written for the runner's own action (its `tool_call_id`); none
    when it has no action."""
    action = _string(context.get("tool_call_id"))
    if not action:
        return []
    return [s for s in spawns if not isinstance(s, Mapping) or s.get("tool_call_id") == action]


def _cards_of_its_session(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]],
) -> list[Any]:
    """The spawn findings of an unpaired subagent's session written for its own action."""
    session = unpaired_session(doc, found)
    context = doc.get("context")
    if not session or not isinstance(context, Mapping):
        return []
    return _of_its_action(context, by_session.get(session, []))


def unpaired_session(doc: Mapping[str, Any], found: Mapping[str, Sequence[Any]]) -> str | None:
    """The session of a subagent that no spawn finding of its org in `found` names and no
    workflow or scan started: where its baseline may still be found, else None.

    secator splits a subagent with several targets into chunks (`celery.py` `break_task`:
    one per target outside a worker, per 100 in one), each a copy of its context, counters
    and markers included, under a new `task_chunk_id`: its own document, named by no spawn
    finding. They keep the subagent's own session id, which its spawn finding names as
    `extra_data.subagent_session_id` (`ai/actions.py`), and its `tool_call_id`, which the
    finding's card carries (`baseline_findings` takes only a card of the same action). A
    chunk's `parent_id` is then the subagent it is a chunk of (the id the card names).
    """
    if not _unpaired(doc, found):
        return None
    session = _string(doc["context"].get("session_id"))
    return session or None


def unpaired_task(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]],
) -> tuple[str, str] | None:
    """(org, `context.task_id`) of a subagent that no spawn finding of its org names, no
    workflow or scan started, and no finding of its session (`by_session`) pairs: the
    runners of that org sharing that task id may be the one it is a chunk of. Else None.

    A runner an AI action starts is keyed on a `task_chunk_id` of its own, under a
    `task_id` it mints (secator 0.52.1: `ai/actions.py` `_get_result_context` strips the
    parent's, `_child_preamble` stamps the chunk id, `runners/_base.py` mints the task id).
    Its chunks (`celery.py` `break_task`) copy its context, `task_id` and `tool_call_id`
    included, under new chunk ids; the action's card names the runner they are chunks of.
    An `ai` runner started with `run_task("ai/<variant>")` is such a runner: no subagent
    to secator, its card names no session (`unpaired_session` finds nothing), only its
    task id leads from a chunk to it. A document keyed on its own task id (a top-level
    run) has no such group.
    """
    if not _unpaired(doc, found) or _cards_of_its_session(doc, found, by_session):
        return None
    context = doc["context"]
    org, task = _string(context.get("workspace_id")), _string(context.get("task_id"))
    if not org or not task or task == str(doc.get("_id")):
        return None
    return org, task


def _unpaired(doc: Mapping[str, Any], found: Mapping[str, Sequence[Any]]) -> bool:
    """A subagent that no workflow or scan started and no spawn finding of its org in
    `found` names."""
    context = doc.get("context")
    if not isinstance(context, Mapping) or not is_subagent_context(context):
        return False
    if [name for name in spawner_ids(doc) if name != str(doc.get("_id"))]:
        return False  # a workflow's or scan's step: its baseline is the workflow's finding
    org = _string(context.get("workspace_id"))
    return org is None or not own_org_spawns(found.get(str(doc.get("_id")), []), org)


def subagent_depth(context: Mapping[str, Any]) -> Any:
    """`ai_subagent_depth` as written, 0 when absent (as secator reads it); a NaN as the
    text "NaN", equal to itself, as the copy of one is."""
    depth = context.get("ai_subagent_depth") or 0
    return "NaN" if isinstance(depth, float) and math.isnan(depth) else depth


def _is_number(value: Any) -> bool:
    """An int (an `Int64` too) or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


class BookedOn(NamedTuple):
    """The line a ledger entry's tokens were priced on: model, key source, usage time."""

    model: str | None
    byok: bool
    usage_time: datetime
    period: str  # of the usage time


class LedgerHead(NamedTuple):
    """The latest ledger entry of a runner: its sequence number, high-water mark and line
    (None when not known: a reclassification is then billed with the new usage)."""

    seq: int
    high_water: Counters
    booked_on: BookedOn | None = None


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


def own_org_spawns(spawn_contexts: Sequence[Any], org: str) -> list[Mapping[str, Any]]:
    """The spawn findings' `_context`s written in `org` (compared exactly)."""
    return [c for c in spawn_contexts if isinstance(c, Mapping) and c.get("workspace_id") == org]


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
        if not isinstance(context, Mapping):  # anything else is no context at all: no org
            context = {}
        org = _string(context.get("workspace_id"))
        if not org or len(org) > MAX_ORG or NOT_UTF8 in org:
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
                    f"end_time {_describe(end_time)} > now {self.now} "
                    f"+ {self.future_skew_seconds:g} s"
                )
                return _held(runner_id, org, self.current_period, True, (), usage_time, detail)
            detail = f"end_time is {_describe(end_time)}"
            return _held(runner_id, org, self.current_period, pending, (), usage_time, detail)
        period = period_of(usage_time)

        snapshot = parse_counters(context)
        if isinstance(snapshot, str):
            return _held(runner_id, org, period, pending, (), Anomaly.MALFORMED_COUNTERS, snapshot)

        raw_model = context.get("ai_model")
        model = _string(raw_model)
        if raw_model is not None and (
            model is None or len(model) > MAX_MODEL_NAME or NOT_UTF8 in model
        ):
            detail = f"ai_model is {_describe(raw_model)}"
            return _held(runner_id, org, period, pending, (), Anomaly.BAD_MODEL, detail)

        key_source = context.get("ai_key_source")
        if key_source is not None and key_source not in ("platform", "byok"):
            detail = f"ai_key_source is {_describe(key_source)}"
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
                flags = (AnomalyRecord(runner_id, spawn.anomaly, org, period, spawn.detail),)
            own = own_counters(snapshot, spawn.baseline)

        if own.total < own.prompt + own.completion:
            detail = f"total {own.total} < prompt {own.prompt} + completion {own.completion}"
            flags += (AnomalyRecord(runner_id, Anomaly.TOTAL_BELOW_SPLIT, org, period, detail),)

        if head is None:
            previous, high_water = ZERO, own
        else:
            previous = head.high_water
            if decreased(own, previous):
                detail = (
                    f"own counters {own.as_dict()} below billed high-water {previous.as_dict()}"
                )
                flags += (AnomalyRecord(runner_id, Anomaly.COUNTER_DECREASED, org, period, detail),)
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
        # Tokens already billed change kind: on the line that charged them, then the rest.
        assert head is not None and head.booked_on is not None
        booked = head.booked_on
        reclassified = step._replace(
            model=booked.model,
            byok=booked.byok,
            usage_time=booked.usage_time,
            period=booked.period,
            high_water=mark,
            tokens=new_usage(mark, previous),
        )
        rest = step._replace(seq=step.seq + 1, tokens=new_usage(high_water, mark))
        delta = None if high_water == mark else rest
        return Assessment(
            runner_id, org, period, pending, delta, flags, True, reclassified=reclassified
        )


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


def _string(value: Any) -> str | None:
    """A string field's value, or None when it holds anything but a BSON string (exactly
    `str`: JavaScript code decodes to `bson.code.Code`, a str subclass that cannot even be
    hashed)."""
    return value if type(value) is str else None


def _label(value: Any) -> str | None:
    """A status or session id as a ledger entry keeps it: a string of at most MAX_LABEL
    characters, else left out (None)."""
    text = _string(value)
    return text if text is not None and len(text) <= MAX_LABEL else None


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
