"""SPEC §1's rules for one document at their edges, found untested by mutation testing of
`chores/metering/rules.py`: the bounds of names, ids and end times, every held and flagged
kind, which runners stay pending, and where a move of tokens between kinds is booked."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from chores.metering.counters import Breakdown, Counters
from chores.metering.rules import (
    Anomaly,
    Assessment,
    BookedLine,
    BookedOn,
    LedgerHead,
    add_to_lines,
    assess,
)

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
ENDED = NOW - timedelta(hours=1)
SKEW = 300


def runner(end_time: Any = ENDED, status: Any = "SUCCESS", **context: Any) -> dict[str, Any]:
    """A finished runner of org-a: 1,500 tokens, 1,000 prompt and 400 completion."""
    counters = {"ai_tokens": 1_500, "ai_prompt_tokens": 1_000, "ai_completion_tokens": 400}
    fields = {"workspace_id": "org-a", "ai_model": "gpt-4o", **counters, **context}
    return {"_id": "runner-1", "status": status, "end_time": end_time, "context": fields}


def judged(
    doc: dict[str, Any],
    head: LedgerHead | None = None,
    spawns: tuple[dict[str, Any], ...] = (),
    ceiling: int = 10**9,
) -> Assessment:
    return assess(
        doc,
        spawn_contexts=list(spawns),
        head=head,
        now=NOW,
        max_tokens_per_run=ceiling,
        future_skew_seconds=SKEW,
    )


def kinds(result: Assessment) -> list[Anomaly]:
    return [a.kind for a in result.anomalies]


# --- bounds: 256 characters, the ceiling, 366 days, the skew ------------------------------


def test_names_and_labels_of_256_characters_are_kept_and_longer_ones_are_not():
    assert judged(runner(ai_model="m" * 256)).delta.model == "m" * 256
    held = judged(runner(ai_model="m" * 257))
    assert (held.delta, kinds(held)) == (None, [Anomaly.BAD_MODEL])
    assert judged(runner(session_id="s" * 256)).delta.session_id == "s" * 256
    assert judged(runner(session_id="s" * 257)).delta.session_id is None
    assert judged(runner(status="x" * 256)).delta.status == "x" * 256
    assert judged(runner(status="x" * 257)).delta.status is None


def test_an_org_id_is_billed_up_to_256_characters_and_never_empty_or_not_utf8():
    assert judged(runner(workspace_id="o" * 256)).delta.org == "o" * 256
    for org in ("", "o" * 257, "org-\ufffd"):
        result = judged(runner(workspace_id=org))
        assert (result.org, result.delta, kinds(result)) == (None, None, [Anomaly.NO_ORG]), org


def test_a_context_that_is_not_a_mapping_has_no_org():
    doc = runner()
    doc["context"] = ["workspace_id", "org-a"]
    result = judged(doc)
    assert (result.org, kinds(result)) == (None, [Anomaly.NO_ORG])


def test_a_runner_at_the_ceiling_is_billed_and_one_above_it_held():
    at = judged(runner(), ceiling=1_500)
    assert at.delta is not None and kinds(at) == []
    above = judged(runner(), ceiling=1_499)
    assert (above.delta, kinds(above)) == (None, [Anomaly.OVER_CEILING])


def test_an_end_time_up_to_the_skew_ahead_is_billed_at_it():
    edge = NOW + timedelta(seconds=SKEW)
    assert judged(runner(end_time=edge)).delta.usage_time == edge
    assert kinds(judged(runner(end_time=edge + timedelta(microseconds=1)))) == [
        Anomaly.FUTURE_END_TIME
    ]


def test_an_end_time_up_to_366_days_ahead_waits_and_one_further_is_garbage():
    ahead = judged(runner(end_time=NOW + timedelta(days=366)))
    assert (kinds(ahead), ahead.pending, ahead.period) == (
        [Anomaly.FUTURE_END_TIME],
        True,  # re-read by every run until `now` reaches it
        "2026-11",
    )
    garbage = judged(runner(end_time=NOW + timedelta(days=366, microseconds=1)))
    assert (kinds(garbage), garbage.pending) == ([Anomaly.BAD_END_TIME], False)
    before_2000 = judged(runner(end_time=datetime(1999, 12, 31, tzinfo=UTC)))
    assert (kinds(before_2000), before_2000.pending) == ([Anomaly.BAD_END_TIME], False)


# --- held and flagged kinds ---------------------------------------------------------------


def test_a_model_or_key_source_that_does_not_read_is_held():
    for context, kind in (
        ({"ai_model": 42}, Anomaly.BAD_MODEL),
        ({"ai_key_source": "mine"}, Anomaly.BAD_KEY_SOURCE),
    ):
        result = judged(runner(**context))
        assert (result.delta, kinds(result)) == (None, [kind])


def test_a_string_id_that_is_not_utf8_is_held_and_not_pending():
    doc = runner()
    doc["_id"] = "abc\ufffd"
    result = judged(doc)
    assert (result.delta, result.pending, kinds(result)) == (None, False, [Anomaly.BAD_ID])
    assert result.period == "2026-11"


def spawn(**counters: Any) -> dict[str, Any]:
    return {"workspace_id": "org-a", "task_id": "parent-1", **counters}


def test_a_subagent_whose_spawn_baseline_does_not_read_is_held_until_it_does():
    result = judged(runner(subagent="s"), spawns=(spawn(ai_tokens="lots"),))
    assert (result.delta, result.pending) == (None, True)
    assert kinds(result) == [Anomaly.BASELINE_MALFORMED]


def test_conflicting_spawn_baselines_bill_from_the_highest_and_flag_it():
    low = spawn(ai_tokens=100, ai_prompt_tokens=60, ai_completion_tokens=40)
    high = spawn(ai_tokens=500, ai_prompt_tokens=300, ai_completion_tokens=200)
    result = judged(runner(subagent="s"), spawns=(low, high))
    assert result.delta is not None
    assert result.delta.tokens == Breakdown(700, 0, 200, 100)
    assert (result.delta.parent_id, kinds(result)) == ("parent-1", [Anomaly.BASELINE_CONFLICT])


def test_a_parent_id_is_kept_to_64_characters():
    named = judged(runner(subagent="s"), spawns=({"workspace_id": "org-a", "task_id": "p" * 70},))
    assert named.delta.parent_id == "p" * 64
    chunk = {"workspace_id": "org-a", "task_chunk_id": "c" * 70, "task_id": "t"}
    assert judged(runner(subagent="s"), spawns=(chunk,)).delta.parent_id == "c" * 64


def test_a_total_below_its_split_is_billed_on_the_split_and_flagged():
    result = judged(runner(ai_tokens=1_000, ai_prompt_tokens=700))
    assert result.delta.tokens == Breakdown(700, 0, 400, 0)
    assert kinds(result) == [Anomaly.TOTAL_BELOW_SPLIT]
    assert result.anomalies[0].usage_period == "2026-11"
    assert judged(runner(ai_tokens=1_100, ai_prompt_tokens=700)).anomalies == ()


def test_a_counter_that_went_down_bills_nothing_and_is_recorded():
    result = judged(runner(), head=LedgerHead(1, Counters(2_000, 1_500, 500, 0)))
    assert (result.delta, kinds(result)) == (None, [Anomaly.COUNTER_DECREASED])
    assert result.anomalies[0].usage_period == "2026-11"


# --- pending and held: what the next run reads again ---------------------------------------


def test_a_runner_is_pending_until_it_has_both_ended_and_a_final_status():
    def pending(status: str, end_time: datetime | None) -> bool:
        return judged(runner(end_time=end_time, status=status)).pending

    assert pending("SUCCESS", ENDED) is False
    assert pending("RUNNING", ENDED) is True  # the end time written before the status
    assert pending("SUCCESS", None) is True  # the status written before the end time
    assert pending("RUNNING", None) is True


def test_held_is_a_runner_of_an_org_not_billed_cleanly():
    clean = judged(runner())
    assert (clean.billed_cleanly, clean.held) == (True, False)
    malformed = judged(runner(ai_tokens="12"))
    assert (malformed.org, malformed.held) == ("org-a", True)
    orphan = judged(runner(workspace_id=None))
    assert (orphan.org, orphan.held) == (None, False)


def test_a_reread_with_no_growth_and_a_move_between_kinds_are_billed_cleanly():
    unchanged = judged(runner(), head=LedgerHead(1, Counters(1_500, 1_000, 400, 0)))
    assert (unchanged.delta, unchanged.anomalies) == (None, ())
    assert (unchanged.billed_cleanly, unchanged.held) == (True, False)

    on = BookedOn("org-a", "gpt-4o", False, ENDED - timedelta(minutes=5), "2026-11")
    head = LedgerHead(
        1, Counters(1_000, 0, 0, 0), on, lines=(BookedLine(on, Breakdown(0, 0, 0, 1_000)),)
    )
    moved = judged(runner(ai_tokens=1_000, ai_prompt_tokens=600, ai_completion_tokens=400), head)
    assert [d.tokens for d in moved.reclassified] == [Breakdown(600, 0, 400, -1_000)]
    assert (moved.billed_cleanly, moved.held) == (True, False)


# --- a move between kinds is booked on the lines that charged the tokens -------------------


def booked_on(model: str, day: int) -> BookedOn:
    return BookedOn("org-a", model, False, datetime(2026, 11, day, 10, tzinfo=UTC), "2026-11")


def test_a_move_takes_from_each_line_only_what_it_holds_the_last_line_first():
    """20 unsplit tokens were billed on model-a, then 100 on model-b; the split comes (60
    prompt, 60 completion): 100 come off model-b's line, the other 20 off model-a's, each
    priced as charged (SPEC §2), not 120 off model-b's."""
    first, last = booked_on("model-a", 20), booked_on("model-b", 21)
    lines = (BookedLine(first, Breakdown(0, 0, 0, 20)), BookedLine(last, Breakdown(0, 0, 0, 100)))
    head = LedgerHead(2, Counters(120, 0, 0, 0), last, lines=lines)
    split = runner(ai_model="model-b", ai_tokens=120, ai_prompt_tokens=60, ai_completion_tokens=60)

    result = judged(split, head)

    assert [(d.model, d.tokens) for d in result.reclassified] == [
        ("model-b", Breakdown(60, 0, 40, -100)),
        ("model-a", Breakdown(0, 0, 20, -20)),
    ]
    assert result.delta is None


def test_adding_to_one_line_keeps_every_other_line():
    lines = (
        BookedLine(booked_on("a", 1), Breakdown(1, 0, 0, 0)),
        BookedLine(booked_on("b", 1), Breakdown(0, 2, 0, 0)),
        BookedLine(booked_on("c", 1), Breakdown(0, 0, 3, 0)),
    )
    added = add_to_lines(lines, booked_on("a", 1), Breakdown(10, 0, 0, 0))
    assert added == (BookedLine(booked_on("a", 1), Breakdown(11, 0, 0, 0)), *lines[1:])
