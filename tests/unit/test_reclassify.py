"""Tokens already billed that change kind are moved on the lines that charged them.

A runner's counters may reclassify tokens already billed (unsplit to input or output when
the split catches up with the total, input to cached when the cached count does: SPEC
§1.6). Those tokens were charged on the lines of the entries that billed them, each at the
price of its own usage time (SPEC §2): the move must take them off those lines, never off
a line that did not charge them (a credit at another price: a negative invoice, found by
review). Pure properties over `Rules.assess`, then the chore end to end, a crash between
the moves included.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import pairwise
from typing import Any

import mongomock
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chores import Settings, finalize_invoices, run_chore
from chores.metering.counters import Breakdown, Counters, add_tokens, breakdown, decreased
from chores.metering.ledger import Ledger
from chores.metering.rules import (
    BookedLine,
    BookedOn,
    Delta,
    LedgerHead,
    Rules,
    head_after,
    reclassify,
)
from chores.reports.reconcile import reconcile
from chores.run.pipeline import Pipeline
from pricing import Registry

CONFIG = Settings(mongo_url="mongomock://unused", batch_size=50, redis_url=None)
RAISED = datetime(2026, 11, 15, tzinfo=UTC)  # m1's price rises: input $1 -> $3 per 1M
M1 = {"id": "m1", "tier": "paid", "prices": [
    {"valid_from": "2026-01-01", "input": "1", "cached_input": "0.5", "output": "2"},
    {"valid_from": "2026-11-15", "input": "3", "cached_input": "1.5", "output": "6"},
]}  # fmt: skip
RATES = {  # micro-dollars per token, by price version and kind
    "old": {"input": Decimal(1), "cached": Decimal("0.5"), "output": Decimal(2)},
    "new": {"input": Decimal(3), "cached": Decimal("1.5"), "output": Decimal(6)},
}


class Died(Exception):
    pass


# --- pure: the rules over a runner's observations -------------------------------------------

observation = st.tuples(
    st.integers(0, 3),  # how many of the counters' tokens the total adds, unsplit
    st.integers(0, 2_000),  # prompt
    st.integers(0, 2_000),  # completion
    st.integers(0, 2_500),  # cached (may exceed the prompt)
    st.sampled_from(["a", "b"]),  # model
    st.integers(1, 28),  # day of the usage
    st.sampled_from(["acme", "acme", "beta"]),  # the org it names (moved, now and then)
)


def _observe(
    rules: Rules, observations: list[Any], crashes: frozenset[int] = frozenset()
) -> tuple[list[Any], Counters]:
    """Every delta of one runner seen through `observations` (its counters only grow, each
    observation a document that ended on its day, model and day free to change), and its
    last high-water mark. A run dies after writing the entries numbered in `crashes` (the
    rest of its entries are lost) and the next run reads the same document again."""
    head: LedgerHead | None = None
    deltas: list[Any] = []
    highest = Counters()
    for extra, prompt, completion, cached, model, day, org in observations:
        counters = Counters(
            max(highest.total, prompt + completion + extra * 500),
            max(highest.prompt, prompt),
            max(highest.completion, completion),
            max(highest.cached, cached),
        )
        highest = counters
        doc = {
            "_id": "r1",
            "status": "SUCCESS",
            "end_time": datetime(2026, 11, day, tzinfo=UTC),
            "context": {
                "workspace_id": org,
                "ai_model": model,
                "ai_tokens": counters.total,
                "ai_prompt_tokens": counters.prompt,
                "ai_completion_tokens": counters.completion,
                "ai_cached_tokens": counters.cached,
            },
        }
        died = True
        while died:
            died = False
            for delta in rules.assess(doc, spawn_contexts=[], head=head).deltas:
                head = head_after(head, delta)
                deltas.append(delta)
                if len(deltas) in crashes:
                    crashes -= {len(deltas)}
                    died = True
                    break
    return deltas, highest if head is None else head.high_water


@given(st.lists(observation, min_size=1, max_size=8), st.frozensets(st.integers(1, 20)))
def test_a_run_that_dies_between_entries_is_resumed_exactly(observations, crashes):
    """Whatever the counters and orgs do, a run that dies after any entry (between the moves
    of a reclassification, after a partial move of a runner whose org changed) and the
    rerun that reads the document again write the entries a run that never died writes."""
    rules = Rules(now=datetime(2026, 12, 1, tzinfo=UTC), max_tokens_per_run=10**9,
                  future_skew_seconds=300)  # fmt: skip
    assert _observe(rules, observations, crashes) == _observe(rules, observations)


@given(st.lists(observation, min_size=1, max_size=8))
def test_a_move_never_takes_from_a_line_more_of_a_kind_than_it_charged(observations):
    """Whatever the counters do, a runner's high-water mark never goes down, every line its
    entries book ends with no kind below zero (a cached count above the prompt's included:
    before, such a move was booked on the latest line, a negative count of tokens another
    line charged), and, unless its org changed (tokens billed under another org are not
    moved), all its entries add up to the breakdown of its high-water mark."""
    rules = Rules(now=datetime(2026, 12, 1, tzinfo=UTC), max_tokens_per_run=10**9,
                  future_skew_seconds=300)  # fmt: skip
    deltas, high_water = _observe(rules, observations)
    marks = [delta.high_water for delta in deltas]
    assert not any(decreased(after, before) for before, after in pairwise(marks))
    lines: dict[BookedOn, Breakdown] = {}
    for delta in deltas:
        line = BookedOn(delta.org, delta.model, delta.byok, delta.usage_time, delta.period)
        lines[line] = add_tokens(lines.get(line, Breakdown()), delta.tokens)
    billed = Breakdown()
    for tokens in lines.values():
        billed = add_tokens(billed, tokens)
    if len({delta.org for delta in deltas}) <= 1:
        assert billed == breakdown(high_water)
    assert all(min(tokens) >= 0 for tokens in lines.values()), lines


def test_a_move_is_split_over_the_lines_that_charged_it_the_last_opened_first():
    """1M input tokens on line A, then 1 more on line B; all of them turn cached: the move
    takes B's one token first, then 999,999 of A's, each entry on its own line with the mark
    its moves add up to."""
    a = BookedOn("acme", "m1", False, datetime(2026, 11, 10, tzinfo=UTC), "2026-11")
    b = a._replace(usage_time=datetime(2026, 11, 20, tzinfo=UTC))
    previous = Counters(1_000_001, 1_000_001, 0, 0)
    head = LedgerHead(2, previous, b, lines=(BookedLine(a, Breakdown(input=1_000_000)),
                                             BookedLine(b, Breakdown(input=1))))  # fmt: skip
    rules = Rules(now=b.usage_time, max_tokens_per_run=10**9, future_skew_seconds=300)
    doc = {"_id": "r1", "status": "SUCCESS", "end_time": b.usage_time, "context": {
        "workspace_id": "acme", "ai_model": "m1", "ai_tokens": 1_000_001,
        "ai_prompt_tokens": 1_000_001, "ai_completion_tokens": 0,
        "ai_cached_tokens": 1_000_000}}  # fmt: skip
    result = rules.assess(doc, spawn_contexts=[], head=head)
    assert result.delta is None  # no new usage: the move alone
    assert [(d.seq, d.usage_time, d.tokens, d.high_water.cached) for d in result.deltas] == [
        (3, b.usage_time, Breakdown(-1, 1, 0, 0), 1),
        (4, a.usage_time, Breakdown(-999_999, 999_999, 0, 0), 1_000_000),
    ]


def test_a_runner_seen_every_few_minutes_has_a_line_a_day():
    """Each entry of a running runner has its own usage time (the run's `now`): its lines
    are one per model and day (a price version is valid from a UTC day), not one per entry,
    so a head read after weeks of entries stays small."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    head = None
    for n in range(3 * 24 * 12):  # every 5 minutes for three days
        seen = start + timedelta(minutes=5 * n)
        line = BookedOn("acme", "m1", False, seen, "2026-11")
        step = _delta(line, Counters(n + 1, n + 1, 0, 0), seq=n + 1)
        head = head_after(head, step._replace(tokens=Breakdown(input=1)))
    assert head is not None
    assert [(ln.booked_on.usage_time, ln.tokens.input) for ln in head.lines] == [
        (start + timedelta(days=day), 24 * 12) for day in range(3)
    ]


def test_a_move_the_lines_cannot_hold_is_booked_on_the_latest_line_in_one_entry():
    """Lines not known (a head read without them) or not holding the tokens the move takes:
    the move is one entry on the line of the runner's latest entry, as before lines were
    kept, so the tokens still add up."""
    line = BookedOn("acme", "m1", False, datetime(2026, 11, 10, tzinfo=UTC), "2026-11")
    previous = Counters(1_000, 0, 0, 0)
    mark = Counters(1_000, 1_000, 0, 0)
    for lines in ((), (BookedLine(line, Breakdown(unsplit=10)),)):
        head = LedgerHead(1, previous, line, lines=lines)
        (move,) = reclassify(_delta(line, mark, seq=2), head, mark).entries
        assert (move.seq, move.usage_time, move.tokens, move.high_water) == (
            2, line.usage_time, Breakdown(input=1_000, unsplit=-1_000), mark)  # fmt: skip


def test_tokens_billed_under_another_org_are_not_moved():
    """Review: a runner billed 1M unsplit tokens under alpha, then seen under beta with the
    split (1M prompt, 800k cached): the move was booked on beta's invoice, a credit of
    tokens alpha paid for (beta's draft negative). Now alpha's billing is left as it was,
    beta gets its new usage alone and an `org_changed` anomaly for review."""
    alpha = BookedOn("alpha", "m1", False, datetime(2026, 11, 10, tzinfo=UTC), "2026-11")
    head = LedgerHead(1, Counters(1_000_000, 0, 0, 0), alpha,
                      lines=(BookedLine(alpha, Breakdown(unsplit=1_000_000)),))  # fmt: skip
    rules = Rules(now=datetime(2026, 11, 12, tzinfo=UTC), max_tokens_per_run=10**9,
                  future_skew_seconds=300)  # fmt: skip
    result = rules.assess(_split_doc("beta", 1_200_000, 1_000_000), spawn_contexts=[], head=head)
    assert result.reclassified == ()
    assert result.delta is not None
    assert (result.delta.org, result.delta.seq, result.delta.tokens) == (
        "beta",
        2,
        Breakdown(cached=200_000),
    )
    assert result.delta.high_water == Counters(1_200_000, 1_200_000, 0, 1_000_000)
    assert [(r.kind, r.org) for r in result.anomalies] == [("org_changed", "beta")]
    assert "input +200,000, cached +800,000, unsplit -1,000,000" in result.anomalies[0].detail
    assert "alpha" not in result.anomalies[0].detail


def test_tokens_billed_under_this_org_are_moved_on_its_lines_whatever_another_org_billed():
    """The same runner with 600k unsplit tokens billed under beta after alpha's: beta's
    split of 500k prompt tokens moves them on beta's line, alpha's untouched."""
    alpha = BookedOn("alpha", "m1", False, datetime(2026, 11, 10, tzinfo=UTC), "2026-11")
    beta = alpha._replace(org="beta", usage_time=datetime(2026, 11, 11, tzinfo=UTC))
    head = LedgerHead(2, Counters(1_600_000, 0, 0, 0), beta,
                      lines=(BookedLine(alpha, Breakdown(unsplit=1_000_000)),
                             BookedLine(beta, Breakdown(unsplit=600_000))))  # fmt: skip
    rules = Rules(now=datetime(2026, 11, 12, tzinfo=UTC), max_tokens_per_run=10**9,
                  future_skew_seconds=300)  # fmt: skip
    doc = _split_doc("beta", 500_000, 0, total=1_600_000)
    result = rules.assess(doc, spawn_contexts=[], head=head)
    assert [(d.org, d.usage_time, d.tokens) for d in result.deltas] == [
        ("beta", beta.usage_time, Breakdown(input=500_000, unsplit=-500_000))
    ]
    assert result.anomalies == ()


def _split_doc(org: str, prompt: int, cached: int, *, total: int | None = None) -> Any:
    """A finished runner of `org` on m1 whose counters are split into prompt tokens."""
    return {"_id": "r1", "name": "ai", "status": "SUCCESS",
            "end_time": datetime(2026, 11, 11, tzinfo=UTC), "context": {
                "workspace_id": org, "ai_model": "m1",
                "ai_tokens": prompt if total is None else total, "ai_prompt_tokens": prompt,
                "ai_completion_tokens": 0, "ai_cached_tokens": cached}}  # fmt: skip


def _delta(line: BookedOn, high_water: Counters, seq: int) -> Delta:
    return Delta(
        runner_id="r1", seq=seq, org="acme", model=line.model, byok=line.byok,
        usage_time=line.usage_time, period=line.period, high_water=high_water,
        tokens=breakdown(high_water), status="SUCCESS", session_id=None,
    )  # fmt: skip


# --- the chore end to end -------------------------------------------------------------------


@pytest.fixture
def repriced(registry: Registry) -> Registry:
    return Registry.model_validate(
        {"version": "repriced", "models": [*(m.model_dump() for m in registry.models), M1]}
    )


def _micros(amount: Decimal) -> int:
    return int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _observe_runner(db: Any, registry: Registry, prompt: int, cached: int, now: datetime,
                    *, ended: bool = False) -> None:  # fmt: skip
    context = {"workspace_id": "acme", "ai_model": "m1", "ai_tokens": prompt,
               "ai_prompt_tokens": prompt, "ai_completion_tokens": 0,
               "ai_cached_tokens": cached}  # fmt: skip
    doc: dict[str, Any] = {"_id": "runner-1", "name": "ai", "status": "RUNNING",
                           "last_updated_db": now.timestamp(), "context": context}  # fmt: skip
    if ended:
        doc.update(status="SUCCESS", end_time=now)
    db.tasks.replace_one({"_id": "runner-1"}, doc, upsert=True)
    run_chore(db, now=now + timedelta(minutes=1), registry=registry, settings=CONFIG)


def _reclassified_across_a_price_change(db: Any, registry: Registry) -> None:
    """1M input tokens at the old price, 1 more at the new one, then all but one cached."""
    _observe_runner(db, registry, 1_000_000, 0, datetime(2026, 11, 10, tzinfo=UTC))
    _observe_runner(db, registry, 1_000_001, 0, datetime(2026, 11, 20, tzinfo=UTC))
    _observe_runner(db, registry, 1_000_001, 1_000_000, datetime(2026, 11, 21, tzinfo=UTC),
                    ended=True)  # fmt: skip


def _invoice(db: Any, period: str = "2026-11") -> Any:
    return db.billing_invoices.find_one({"_id": f"acme:{period}"})


def test_tokens_reclassified_across_a_price_change_keep_the_price_that_charged_them(db, repriced):
    """Review: the move was priced at the new price on the latest line (-1M input at $3,
    +1M cached at $1.50: -$1.5 for tokens charged $1): a November invoice of -$0.499997.
    Now the one token charged at the new price is cached at the new price, the other
    999,999 at the old one: each line prices what it charged."""
    _reclassified_across_a_price_change(db, repriced)
    old, new = RATES["old"], RATES["new"]
    stored = _invoice(db)
    lines = {line["price_valid_from"]: line for line in stored["lines"] if line["tokens"]}
    assert {v: (ln["input_tokens"], ln["cached_tokens"]) for v, ln in lines.items()} == {
        "2026-01-01": (1, 999_999),
        "2026-11-15": (0, 1),
    }
    expected = _micros(old["input"] + 999_999 * old["cached"]) + _micros(new["cached"])
    assert stored["total_micros"] == expected == 500_003
    assert stored["needs_review"] is False
    assert Pipeline(db, CONFIG, repriced).invoices.check_drafts({("acme", "2026-11")}) == []


def test_a_move_out_of_a_final_month_credits_the_price_october_charged(db, repriced):
    """October charged 1M input tokens at $1; the split seen in November, after October was
    final, says all but the one November token were cached: a late credit at October's
    price ($0.50 a million, never the new $1.50), the final untouched."""
    _observe_runner(db, repriced, 1_000_000, 0, datetime(2026, 10, 30, tzinfo=UTC))
    assert finalize_invoices(db, now=datetime(2026, 11, 5, tzinfo=UTC), settings=CONFIG) == [
        "acme:2026-10"
    ]
    _observe_runner(db, repriced, 1_000_001, 0, datetime(2026, 11, 20, tzinfo=UTC))
    _observe_runner(db, repriced, 1_000_001, 1_000_000, datetime(2026, 11, 21, tzinfo=UTC),
                    ended=True)  # fmt: skip
    old, new = RATES["old"], RATES["new"]
    october, november = _invoice(db, "2026-10"), _invoice(db)
    assert october["total_micros"] == _micros(1_000_000 * old["input"])
    late = [line for line in november["lines"] if line["late"]]
    assert [(ln["price_valid_from"], ln["cached_tokens"], ln["amount_micros"]) for ln in late] == [
        ("2026-01-01", 999_999, _micros(999_999 * (old["cached"] - old["input"])))
    ]
    assert november["total_micros"] == late[0]["amount_micros"] + _micros(new["cached"])
    assert october["total_micros"] + november["total_micros"] == 500_002


@pytest.mark.parametrize("writes_before_dying", [1, 2])
def test_a_crash_between_the_moves_is_resumed_by_the_rerun(db, repriced, writes_before_dying):
    """The moves are written one line at a time, then the new usage: a run that dies after
    any of those writes is resumed by the rerun, which gives the ledger and invoice of a
    run that never died."""
    clean = mongomock.MongoClient(tz_aware=True)["main"]
    _reclassified_across_a_price_change(clean, repriced)

    _observe_runner(db, repriced, 1_000_000, 0, datetime(2026, 11, 10, tzinfo=UTC))
    _observe_runner(db, repriced, 1_000_001, 0, datetime(2026, 11, 20, tzinfo=UTC))
    append, calls = Ledger.append, []

    def die_after_some(self: Ledger, entries: Any) -> list[Any]:
        calls.append([e["seq"] for e in entries])
        written = append(self, entries)
        if len(calls) == writes_before_dying:
            raise Died(f"after write {len(calls)}")
        return written

    Ledger.append = die_after_some  # type: ignore[method-assign]
    try:
        with pytest.raises(Died):
            _observe_runner(db, repriced, 1_000_001, 1_000_000,
                            datetime(2026, 11, 21, tzinfo=UTC), ended=True)  # fmt: skip
    finally:
        Ledger.append = append  # type: ignore[method-assign]
    assert calls[:writes_before_dying] == [[3], [4]][:writes_before_dying]
    run_chore(db, now=datetime(2026, 11, 21, 0, 5, tzinfo=UTC), registry=repriced,
              settings=CONFIG)  # fmt: skip

    def ledger(database: Any) -> list[tuple[Any, ...]]:
        return [(e["seq"], e["usage_day"], e["input_tokens"], e["cached_tokens"])
                for e in database.billing_ledger.find(sort=[("seq", 1)])]  # fmt: skip

    assert ledger(db) == ledger(clean)
    assert _invoice(db)["total_micros"] == _invoice(clean)["total_micros"] == 500_003


def test_a_runner_moved_to_another_org_leaves_the_first_orgs_invoice_as_billed(db, repriced):
    """End to end: alpha billed 1M unsplit tokens of a running runner ($1.00); the runner,
    moved to beta, ends with its split (1.2M prompt, 1M cached). Alpha's draft stays
    $1.00; beta's bills its 200k new tokens, cached ($0.10), never a credit of alpha's
    tokens, and is flagged for review."""
    running = {"_id": "runner-1", "name": "ai", "status": "RUNNING", "context": {
        "workspace_id": "alpha", "ai_model": "m1", "ai_tokens": 1_000_000}}  # fmt: skip
    db.tasks.insert_one({**running, "last_updated_db": datetime(2026, 11, 10).timestamp()})
    run_chore(db, now=datetime(2026, 11, 10, 0, 1, tzinfo=UTC), registry=repriced,
              settings=CONFIG)  # fmt: skip
    ended = _split_doc("beta", 1_200_000, 1_000_000)
    db.tasks.replace_one({"_id": "runner-1"}, {**ended, "_id": "runner-1",
                         "last_updated_db": datetime(2026, 11, 11).timestamp()})  # fmt: skip
    run_chore(db, now=datetime(2026, 11, 11, 0, 1, tzinfo=UTC), registry=repriced,
              settings=CONFIG)  # fmt: skip

    alpha = db.billing_invoices.find_one({"_id": "alpha:2026-11"})
    beta = db.billing_invoices.find_one({"_id": "beta:2026-11"})
    assert (alpha["total_micros"], alpha["needs_review"]) == (1_000_000, False)
    assert beta["total_micros"] == _micros(200_000 * RATES["old"]["cached"]) == 100_000
    assert [(ln["cached_tokens"], ln["amount_micros"]) for ln in beta["lines"]] == [
        (200_000, 100_000)
    ]
    assert beta["needs_review"] is True
    assert [(a["kind"], a["org"]) for a in db.billing_anomalies.find()] == [("org_changed", "beta")]
    meter = Pipeline(db, CONFIG, repriced)
    assert meter.invoices.check_drafts({("alpha", "2026-11"), ("beta", "2026-11")}) == []
    # The source shows the runner under beta only: alpha's share is settled as billed (no
    # run of alpha bills it again); beta's tokens changed kind after the move.
    alpha_checked = reconcile(meter, "alpha", "2026-11", now=datetime(2026, 11, 12, tzinfo=UTC))
    assert alpha_checked.ok and alpha_checked.runners == []
    checked = reconcile(meter, "beta", "2026-11", now=datetime(2026, 11, 12, tzinfo=UTC))
    assert [(r.runner_id, r.note) for r in checked.runners] == [
        (
            "str:'runner-1'",
            "the same tokens, split by kind otherwise than the source shows: a ledger entry "
            "was edited, or tokens changed kind after its org changed (org_changed)",
        )
    ]


def test_reconcile_does_not_call_a_runner_back_from_another_org_a_decrease(db, repriced):
    """Review: alpha billed 1,000 unsplit tokens; the runner moved to beta, where its split
    arrived (left as alpha billed it: `org_changed`), then came back to alpha and grew.
    alpha's unsplit tokens are more than the source's (none), but no counter went down:
    reconcile said "fewer tokens than were billed (see counter_decreased)"."""

    def observe(org: str, total: int, prompt: int, completion: int, hour: int) -> None:
        context = {"workspace_id": org, "ai_model": "m1", "ai_tokens": total,
                   "ai_prompt_tokens": prompt, "ai_completion_tokens": completion}  # fmt: skip
        moment = datetime(2026, 11, 21, hour, tzinfo=UTC)
        doc = {"_id": "r1", "name": "ai", "status": "SUCCESS", "context": context,
               "end_time": datetime(2026, 11, 21, tzinfo=UTC),
               "last_updated_db": moment.timestamp()}  # fmt: skip
        db.tasks.replace_one({"_id": "r1"}, doc, upsert=True)
        run_chore(db, now=moment + timedelta(minutes=1), registry=repriced, settings=CONFIG)

    observe("alpha", 1_000, 0, 0, hour=1)
    observe("beta", 1_000, 600, 400, hour=2)
    observe("alpha", 1_200, 700, 500, hour=3)

    checked = reconcile(
        Pipeline(db, CONFIG, repriced), "alpha", "2026-11", now=datetime(2026, 11, 22, tzinfo=UTC)
    )
    assert [(r.source_tokens, r.ledger_tokens, r.note) for r in checked.runners] == [
        (
            1_200,
            1_200,
            "the same tokens, split by kind otherwise than the source shows: a ledger entry "
            "was edited, or tokens changed kind after its org changed (org_changed)",
        )
    ]


def _split_across_orgs(db: Any, registry: Registry, *, observe_beta_unsplit: bool) -> None:
    """alpha bills 1M input tokens; the runner moves to beta, which (when a run sees that
    write) bills 1M more unsplit; then every token turns out cached."""

    def observe(org: str, total: int, prompt: int, cached: int, day: int, ended: bool) -> None:
        context = {"workspace_id": org, "ai_model": "m1", "ai_tokens": total,
                   "ai_prompt_tokens": prompt, "ai_completion_tokens": 0,
                   "ai_cached_tokens": cached}  # fmt: skip
        seen = datetime(2026, 11, day, tzinfo=UTC)
        doc = {"_id": "runner-1", "name": "ai", "status": "SUCCESS" if ended else "RUNNING",
               "last_updated_db": seen.timestamp(), "context": context}  # fmt: skip
        if ended:
            doc["end_time"] = seen
        db.tasks.replace_one({"_id": "runner-1"}, doc, upsert=True)

    observe("alpha", 1_000_000, 1_000_000, 0, 10, ended=False)
    run_chore(db, now=datetime(2026, 11, 10, 0, 1, tzinfo=UTC), registry=registry,
              settings=CONFIG)  # fmt: skip
    observe("beta", 2_000_000, 1_000_000, 0, 11, ended=False)
    if observe_beta_unsplit:
        run_chore(db, now=datetime(2026, 11, 11, 0, 1, tzinfo=UTC), registry=registry,
                  settings=CONFIG)  # fmt: skip
    observe("beta", 2_000_000, 2_000_000, 2_000_000, 12, ended=True)
    run_chore(db, now=datetime(2026, 11, 12, 0, 1, tzinfo=UTC), registry=registry,
              settings=CONFIG)  # fmt: skip


@pytest.mark.parametrize("observe_beta_unsplit", [True, False])
def test_the_part_of_a_move_the_new_orgs_lines_hold_is_moved(db, repriced, observe_beta_unsplit):
    """Review: beta billed 1M unsplit of its own, then every token was cached; the move was
    all or nothing, so beta's own 1M stayed unsplit ($1.00, not $0.50), and beta paid
    differently whether a run saw its unsplit write or not. Now beta's line moves its own
    1M to cached, alpha's 1M input is left as alpha billed it: the same invoices whichever
    writes a run saw."""
    _split_across_orgs(db, repriced, observe_beta_unsplit=observe_beta_unsplit)
    alpha = db.billing_invoices.find_one({"_id": "alpha:2026-11"})
    beta = db.billing_invoices.find_one({"_id": "beta:2026-11"})
    assert (alpha["total_micros"], alpha["needs_review"]) == (1_000_000, False)
    assert [(ln["cached_tokens"], ln["unsplit_tokens"]) for ln in beta["lines"]] == [(1_000_000, 0)]
    assert beta["total_micros"] == _micros(1_000_000 * RATES["old"]["cached"]) == 500_000
    assert beta["needs_review"] is True  # alpha's 1M were cached too, and stay input there


def test_an_org_changed_flag_stays_on_the_invoice_it_flags(db, repriced):
    """Review: the runner went back to alpha, and a second move alpha's lines could not hold
    moved the one `org_changed` record (one per runner and kind) to alpha: beta's draft,
    still holding alpha's tokens unmoved, was finalized without review, by a run of alpha
    and a run of beta. Now it is one record per runner, org and usage month."""
    running = {"_id": "runner-1", "name": "ai", "status": "RUNNING"}

    def observe(org: str, total: int, prompt: int, cached: int, day: int) -> None:
        context = {"workspace_id": org, "ai_model": "m1", "ai_tokens": total,
                   "ai_prompt_tokens": prompt, "ai_completion_tokens": 0,
                   "ai_cached_tokens": cached}  # fmt: skip
        seen = datetime(2026, 11, day, tzinfo=UTC)
        doc = {**running, "last_updated_db": seen.timestamp(), "context": context}
        db.tasks.replace_one({"_id": "runner-1"}, doc, upsert=True)
        run_chore(db, org=org, now=seen + timedelta(minutes=1), registry=repriced,
                  settings=CONFIG)  # fmt: skip

    observe("alpha", 1_000_000, 0, 0, 10)
    observe("beta", 1_200_000, 1_200_000, 1_000_000, 11)
    observe("alpha", 1_200_000, 1_200_000, 1_200_000, 12)
    run_chore(db, org="beta", now=datetime(2026, 11, 13, tzinfo=UTC), registry=repriced,
              settings=CONFIG)  # fmt: skip
    open_flags = {(a["org"], a["kind"]) for a in db.billing_anomalies.find({"resolved": False})}
    assert open_flags == {("alpha", "org_changed"), ("beta", "org_changed")}
    assert finalize_invoices(db, now=datetime(2026, 12, 5, tzinfo=UTC), settings=CONFIG) == [
        "alpha:2026-11", "beta:2026-11"]  # fmt: skip
    finals = {i["_id"]: i["needs_review"] for i in db.billing_invoices.find()}
    assert finals == {"alpha:2026-11": True, "beta:2026-11": True}


def test_a_cached_count_past_the_prompt_is_moved_on_the_lines_that_charged_it(db, repriced):
    """Review: alpha billed 1,000 unsplit tokens; under beta the runner wrote 2,000 with 500
    cached before any prompt (cached past the prompt, SPEC §1.6), then its split. The mark
    after each piece grew the cached count past the high-water: the high-water went down,
    the last move, held by beta's own line, was not made (900 µ$, not 750), and a
    rerun after a crash wrote other entries. Now each piece's mark grows the cached count
    only as far as the prompt lets it count."""

    def observe(org: str, total: int, prompt: int, cached: int, day: int) -> None:
        context = {"workspace_id": org, "ai_model": "m1", "ai_tokens": total,
                   "ai_prompt_tokens": prompt, "ai_completion_tokens": 0,
                   "ai_cached_tokens": cached}  # fmt: skip
        seen = datetime(2026, 11, day, tzinfo=UTC)
        doc = {"_id": "runner-1", "name": "ai", "status": "RUNNING",
               "last_updated_db": seen.timestamp(), "context": context}  # fmt: skip
        db.tasks.replace_one({"_id": "runner-1"}, doc, upsert=True)
        run_chore(db, now=seen + timedelta(minutes=1), registry=repriced, settings=CONFIG)

    observe("alpha", 1_000, 0, 0, 10)
    observe("beta", 2_000, 0, 500, 11)
    observe("beta", 2_000, 200, 500, 12)
    observe("beta", 2_000, 1_000, 500, 13)
    marks = [e["high_water"] for e in db.billing_ledger.find(sort=[("seq", 1)])]
    assert [m["cached"] for m in marks] == [0, 500, 500, 500]
    beta = db.billing_invoices.find_one({"_id": "beta:2026-11"})
    assert [(ln["input_tokens"], ln["cached_tokens"], ln["unsplit_tokens"]) for ln in
            beta["lines"]] == [(500, 500, 0)]  # fmt: skip
    assert beta["total_micros"] == 500 + 250
    assert db.billing_invoices.find_one({"_id": "alpha:2026-11"})["total_micros"] == 1_000


def test_reconcile_gives_the_specific_reason_first_for_a_runner_that_moved(db, repriced):
    """Review: once a runner had moved, reconcile blamed the move for every difference;
    a counter that went down after it is still named as such."""
    running = {"_id": "runner-1", "name": "ai", "status": "RUNNING"}
    for org, tokens, day in (("alpha", 1_000, 10), ("beta", 1_500, 11), ("beta", 200, 12)):
        context = {"workspace_id": org, "ai_model": "m1", "ai_tokens": tokens}
        seen = datetime(2026, 11, day, tzinfo=UTC)
        doc = {**running, "last_updated_db": seen.timestamp(), "context": context}
        db.tasks.replace_one({"_id": "runner-1"}, doc, upsert=True)
        run_chore(db, now=seen + timedelta(minutes=1), registry=repriced, settings=CONFIG)
    meter = Pipeline(db, CONFIG, repriced)
    checked = reconcile(meter, "beta", "2026-11", now=datetime(2026, 11, 13, tzinfo=UTC))
    assert [r.note for r in checked.runners] == [
        "the ledger holds more tokens than the source shows: its counters went down (a "
        "counter_decreased anomaly says so) or a ledger entry was added or edited (billed "
        "under another org too: its org changed)"
    ]
