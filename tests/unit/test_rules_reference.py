"""The engine agrees with the plain statement of each rule, on generated values.

`parse_counters` against SPEC §1.5 counter by counter; `assess` judges an end time given in
any zone as it judges the same moment in UTC; `price_lines`, which sums the tokens of a line
before multiplying by its rates and remembers which line a (model, day) goes to, against
pricing each group on its own; the allowed clock skew against the end-time bound.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from chores.metering.counters import COUNTER_FIELDS, MAX_COUNTER, Counters, parse_counters
from chores.metering.lineage import baseline_findings, is_subagent_context
from chores.metering.lines import LineMemo, UsageGroup, price_group, price_lines
from chores.metering.rules import assess
from pricing import Registry

from support import NOW

counter_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.sampled_from([0, 1, MAX_COUNTER, MAX_COUNTER + 1, -1, 2**62, 2**63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.0, 3.0, 2.5, float(2**63), "12", [], {}]),
)


def reference_counter(value: Any) -> int | None:
    """SPEC §1.5, counter by counter: None/missing is 0, else a whole number in range."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if value != int(value) or not 0 <= value <= MAX_COUNTER:
        return None
    return int(value)


@given(
    st.lists(counter_values, min_size=4, max_size=4),
    st.lists(st.booleans(), min_size=4, max_size=4),
)
def test_parse_counters_agrees_with_the_rule_counter_by_counter(
    values: list[Any], present: list[bool]
) -> None:
    context = {
        field: value
        for field, value, here in zip(COUNTER_FIELDS.values(), values, present, strict=True)
        if here
    }
    expected = [reference_counter(context.get(field)) for field in COUNTER_FIELDS.values()]
    parsed = parse_counters(context)
    if None in expected:
        assert isinstance(parsed, str) and parsed.startswith("malformed counters: ")
        for field, value in zip(COUNTER_FIELDS.values(), expected, strict=True):
            assert (field in parsed) == (value is None)
    else:
        assert parsed == Counters(*expected)
        assert all(type(value) is int for value in parsed)


def _doc(end_time: Any) -> dict[str, Any]:
    return {
        "_id": "runner-1",
        "status": "SUCCESS",
        "end_time": end_time,
        "context": {
            "workspace_id": "org-a",
            "ai_tokens": 1_500,
            "ai_prompt_tokens": 1_000,
            "ai_completion_tokens": 400,
            "ai_model": "gpt-4o",
        },
    }


@settings(max_examples=200)
@given(
    st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2030, 1, 1)),
    st.sampled_from([None, UTC, timezone(timedelta(hours=5)), timezone(timedelta(hours=-9))]),
    st.sampled_from([NOW, NOW.replace(tzinfo=None), NOW.astimezone(timezone(timedelta(hours=3)))]),
)
def test_an_end_time_means_the_same_instant_in_any_zone(
    moment: datetime, zone: timezone | None, now: datetime
) -> None:
    end_time = moment.replace(tzinfo=zone)
    as_utc = end_time.replace(tzinfo=UTC) if zone is None else end_time.astimezone(UTC)
    kwargs: dict[str, Any] = {
        "spawn_contexts": [],
        "head": None,
        "max_tokens_per_run": 10**9,
        "future_skew_seconds": 300,
    }
    given_zone = assess(_doc(end_time), now=now, **kwargs)
    in_utc = assess(_doc(as_utc), now=NOW, **kwargs)
    # Equal but for the anomaly's detail, which quotes the value as written.
    assert given_zone._replace(anomalies=()) == in_utc._replace(anomalies=())
    assert [a.kind for a in given_zone.anomalies] == [a.kind for a in in_utc.anomalies]
    in_range = datetime(2000, 1, 1, tzinfo=UTC) <= as_utc <= NOW + timedelta(seconds=300)
    assert (given_zone.delta is not None) == in_range
    if given_zone.delta is not None:
        assert given_zone.delta.usage_time == as_utc
        assert given_zone.period == f"{as_utc.year:04d}-{as_utc.month:02d}"


REGISTRY_YAML = """
version: shortcuts
models:
  - id: m-two-versions
    tier: paid
    prices:
      - {valid_from: "2026-01-01", input: "2.5", cached_input: "1.25", output: "10"}
      - {valid_from: "2026-10-15", input: "3.000000000001", output: "15.123456789012"}
  - id: m-one
    tier: paid
    prices:
      - {valid_from: "2026-10-10", input: "0.15", cached_input: "0.075", output: "0.6"}
  - id: m-free
    tier: free
    prices:
      - {valid_from: "2020-01-01", input: "0", output: "0"}
"""
REGISTRY = Registry.model_validate(yaml.safe_load(REGISTRY_YAML))
tokens = st.integers(min_value=0, max_value=10**19)
groups = st.builds(
    UsageGroup,
    model=st.sampled_from(["m-two-versions", "M-ONE", "acme/m-one", "m-free", "unknown", None]),
    byok=st.booleans(),
    late=st.booleans(),
    day=st.dates(min_value=date(2026, 10, 1), max_value=date(2026, 10, 31)),
    input=tokens,
    cached=tokens,
    output=tokens,
    unsplit=tokens,
)


@settings(max_examples=300)
@given(st.lists(groups, max_size=30), st.lists(groups, max_size=10))
def test_price_lines_equals_the_sum_of_its_groups_rounded_once(
    invoice: list[UsageGroup], other_invoice: list[UsageGroup]
) -> None:
    # Reference: each group priced on its own (exact Decimal), summed per line, rounded once.
    want: dict[tuple[Any, ...], Decimal | None] = {}
    for group in invoice:
        key, amount = price_group(group, REGISTRY)
        previous = want.get(key, Decimal(0))
        want[key] = None if amount is None or previous is None else previous + amount
    memo: LineMemo = {}
    price_lines(other_invoice, REGISTRY, lines_seen=memo)  # a memo filled by another invoice
    for lines in (price_lines(invoice, REGISTRY), price_lines(invoice, REGISTRY, lines_seen=memo)):
        got = {(ln.model, ln.tier, ln.price_valid_from, ln.late): ln for ln in lines}
        assert set(got) == set(want)
        for key, exact in want.items():
            line = got[key]
            if exact is None:
                assert line.amount_micros is None and not line.priced
            else:
                rounded = exact.quantize(Decimal(1), rounding=ROUND_HALF_UP)
                assert line.amount_micros == int(rounded)


def test_a_month_of_tokens_at_a_twelve_decimal_rate_is_priced_exactly() -> None:
    # 28 digits (Decimal's default precision) cannot hold this product; it must not round.
    count = 987_654_321_987_654_321
    group = UsageGroup("m-two-versions", False, False, date(2026, 10, 20), 0, 0, count, 0)
    (line,) = price_lines([group], REGISTRY)
    exact = count * 15_123_456_789_012  # the rate, in units of 10^-12 micro-dollars
    assert line.amount_micros == (exact + 5 * 10**11) // 10**12


def test_the_allowed_skew_stops_where_an_end_time_becomes_garbage() -> None:
    """An end time more than LATEST_END ahead is garbage (`bad_end_time`); a skew allowing
    more would make a plausible end time garbage, so Settings refuses it."""
    from pydantic import ValidationError

    from chores import Settings
    from chores.metering.rules import LATEST_END

    assert Settings(future_skew_seconds=LATEST_END.total_seconds()).future_skew_seconds > 0
    for too_far in (LATEST_END.total_seconds() + 1, float("inf")):
        with pytest.raises(ValidationError):
            Settings(future_skew_seconds=too_far)


def _subagent(context: dict[str, Any], baseline: dict[str, Any] | None) -> Any:
    doc = {
        "_id": "sub-1",
        "name": "ai",
        "status": "SUCCESS",
        "end_time": NOW - timedelta(hours=1),
        "context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", **context},
    }
    spawns = [] if baseline is None else [{"workspace_id": "acme", **baseline}]
    return assess(
        doc,
        spawn_contexts=spawns,
        head=None,
        now=NOW,
        max_tokens_per_run=10**12,
        future_skew_seconds=300,
    )


def test_own_counters_are_floored_at_zero_counter_by_counter() -> None:
    """A subagent's cached count below its baseline's is 0 of its own, not a negative that
    would move 50 tokens from the cached rate to the input rate (and store a negative mark)."""
    counters = {"ai_tokens": 1500, "ai_prompt_tokens": 1000, "ai_completion_tokens": 500}
    baseline = {"ai_tokens": 300, "ai_prompt_tokens": 200, "ai_completion_tokens": 100}
    result = _subagent(
        {**counters, "ai_cached_tokens": 50, "ai_subagent_depth": 1},
        {**baseline, "ai_cached_tokens": 100},
    )
    assert result.delta is not None
    assert tuple(result.delta.tokens) == (800, 0, 400, 0)  # input, cached, output, unsplit
    assert result.delta.high_water == Counters(1200, 800, 400, 0)


def test_a_parent_session_alone_marks_a_subagent() -> None:
    """SPEC §1 fact 4: `parent_session_id` set (and nothing else) is a subagent: without its
    spawn finding it is held, never billed whole; an empty one marks nothing."""
    counters = {
        "ai_tokens": 1500,
        "ai_prompt_tokens": 1000,
        "ai_completion_tokens": 500,
        "ai_cached_tokens": 0,
    }
    held = _subagent({**counters, "parent_session_id": "sess-parent"}, None)
    assert held.delta is None and held.pending
    assert [a.kind for a in held.anomalies] == ["baseline_missing"]
    top_level = _subagent({**counters, "parent_session_id": ""}, None)
    assert top_level.delta is not None and top_level.delta.tokens.tokens == 1500


# Killed mutants the suite let live (mutation review) -----------------------------------
def test_an_empty_tool_call_id_marks_nothing():
    """R9: as an empty `parent_session_id`, an empty `tool_call_id` is no marker."""
    assert is_subagent_context({"workspace_id": "acme", "tool_call_id": ""}) is False
    assert is_subagent_context({"workspace_id": "acme", "tool_call_id": "call_1"}) is True


def test_an_absent_depth_is_depth_0_when_matching_a_workflows_spawn_finding():
    """R5: a step without `ai_subagent_depth` runs at depth 0, the depth of a finding that
    writes 0 explicitly (`subagent_depth`: 0 when absent, as secator reads it)."""
    step = {"_id": "step-1", "context": {"workspace_id": "acme", "workflow_id": "wf-1"}}
    finding = {"workspace_id": "acme", "ai_subagent_depth": 0, "ai_tokens": 10}
    assert baseline_findings(step, {"wf-1": [finding]}) == [finding]


def test_a_step_of_a_workflow_an_ai_run_spawned_is_billed_above_its_baseline_unmarked():
    """R10: no subagent marker (no `tool_call_id`: another secator, or a copy without it),
    yet a spawn finding of its org names its workflow: it starts from the spawning run's
    counters, and only its own tokens are billed."""
    step = {
        "_id": "step-1", "name": "ai", "status": "SUCCESS", "end_time": NOW - timedelta(hours=1),
        "context": {"workspace_id": "acme", "workflow_id": "wf-1", "ai_tokens": 1_500,
                    "ai_prompt_tokens": 1_000, "ai_completion_tokens": 500},
    }  # fmt: skip
    spawn = {"workspace_id": "acme", "task_id": "parent-1", "ai_tokens": 1_000,
             "ai_prompt_tokens": 800, "ai_completion_tokens": 200}  # fmt: skip
    found = baseline_findings(step, {"wf-1": [spawn]})
    result = assess(step, spawn_contexts=found, head=None, now=NOW,
                    max_tokens_per_run=10**9, future_skew_seconds=300)  # fmt: skip
    assert result.delta is not None and result.delta.subagent is True
    assert result.delta.tokens.tokens == 500 and result.delta.parent_id == "parent-1"


def test_a_finding_naming_an_unmarked_runner_is_not_its_baseline():
    """R12: `found` holds the findings of a whole batch (`Source.spawns_of`); one naming a
    runner that is not marked a subagent (its id named by another document of the batch)
    is not its own baseline."""
    doc = {"_id": "run-1", "context": {"workspace_id": "acme"}}
    assert baseline_findings(doc, {"run-1": [{"workspace_id": "acme", "ai_tokens": 10}]}) == []
