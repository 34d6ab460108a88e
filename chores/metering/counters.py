"""Token counters and their arithmetic, pure.

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

`parse_counters` reads a snapshot from a runner's (or a spawn finding's) context.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

from chores.metering.fields import describe_value

COUNTER_FIELDS = {
    "total": "ai_tokens",
    "prompt": "ai_prompt_tokens",
    "completion": "ai_completion_tokens",
    "cached": "ai_cached_tokens",
}
MAX_COUNTER = 2**63 - 1  # what BSON can store; anything above is garbage


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


def add_tokens(first: Breakdown, second: Breakdown) -> Breakdown:
    """Two breakdowns added kind by kind."""
    return Breakdown(
        first.input + second.input,
        first.cached + second.cached,
        first.output + second.output,
        first.unsplit + second.unsplit,
    )


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
    now = breakdown(high_water)
    if previous == ZERO:  # a runner's first entry: nothing to take off
        return now
    before = breakdown(previous)
    return Breakdown(
        now.input - before.input,
        now.cached - before.cached,
        now.output - before.output,
        now.unsplit - before.unsplit,
    )


def reclassified_mark(previous: Counters, high_water: Counters) -> Counters:
    """The high-water mark between `previous` and `high_water` up to which the new counters
    only reclassify tokens already billed (unsplit to input or output when the split
    catches up with the total, input to cached when the cached count does), adding none:
    `new_usage(mark, previous)` sums to zero, and `new_usage(high_water, mark)` has no
    negative count. `previous` itself when no count goes down, the usual step (SPEC §1.6).

    Billed as one step, the tokens that leave a kind would be credited at the rates of the
    line the new usage goes to, not of the one that charged them (a model, key source or
    price change in between): `Rules.assess` books the reclassification on the lines that
    charged the tokens instead (`rules.reclassify`). The prompt takes reclassified tokens before the
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
    if type(value) is int:  # what almost every document holds: checked first
        return value if 0 <= value <= MAX_COUNTER else None
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # bson's Int64 too, read as a plain int
        return int(value) if 0 <= value <= MAX_COUNTER else None
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
        f"{field}={describe_value(context.get(field))}"
        for field, value in zip(COUNTER_FIELDS.values(), values, strict=True)
        if value is None
    ]
    return "malformed counters: " + ", ".join(bad)
