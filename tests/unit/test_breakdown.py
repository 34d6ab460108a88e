"""Usage breakdowns add up to the invoice to the micro-dollar, for every view.

Pure properties (hypothesis) on the allocation, then generated corpora metered on
mongomock (several models, customer key, free, unknown, late lines, a final invoice),
then the `chore usage` command.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from math import ceil, floor
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from bson.int64 import Int64
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from chores import Settings, finalize_invoices, get_settings, run_chore
from chores.billing.invoice import Invoice, build_invoice
from chores.billing.period_ledger import (
    EntryUsage,
    RunInfo,
    entry_usages,
    read_period,
    source_statuses,
)
from chores.cli import main
from chores.core.db import Collections
from chores.core.exceptions import InvoiceOutOfDate
from chores.core.money import usd
from chores.demo.corpus import generate_corpus
from chores.metering.rules import MAX_LABEL
from chores.metering.runner_keys import runner_key, source_id_of
from chores.reports.allocation import allocate, largest_remainder, rounded_amounts
from chores.reports.breakdown import (
    BY_CHOICES,
    AllocatedUsage,
    Cell,
    Filters,
    model_filter,
    rows,
    total,
)
from chores.reports.run_trees import run_trees
from pricing import Registry, load_registry

from support import NOW, ai_runner, metered_months


@pytest.fixture(scope="module")
def months() -> tuple[Any, Settings, Registry]:
    registry = load_registry()
    settings = Settings(mongo_url="mongomock://unused", batch_size=40, redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=5, orgs=("acme", "globex"))
    return db, settings, registry


def invoices(db: Any, settings: Settings) -> list[Invoice]:
    found = Collections.of(db, settings).invoices.find({}, sort=[("_id", 1)])
    return [Invoice.model_validate(doc) for doc in found]


def assert_adds_up(allocation: Any, invoice: Invoice) -> None:
    for by in BY_CHOICES:
        summed = total(rows(allocation.cells, by))
        assert summed.priced_micros == invoice.total_micros, by
        assert summed.tokens == sum(line.tokens for line in invoice.lines), by
        assert summed.unpriced_tokens == invoice.unpriced_tokens, by
        for field in ("input_tokens", "cached_tokens", "output_tokens", "unsplit_tokens"):
            assert getattr(summed, field) == sum(getattr(line, field) for line in invoice.lines)
    assert len(rows(allocation.cells, "run")) == invoice.runs
    for line in invoice.lines:
        key = (line.model, line.tier, line.price_valid_from, line.late)
        shares = [c.usage.amount_micros for c in allocation.cells if c.line == key]
        if line.amount_micros is None:
            assert shares and all(share is None for share in shares)
        else:
            assert sum(s or 0 for s in shares) == line.amount_micros


# --- pure properties -------------------------------------------------------------------------


@given(
    total_=st.integers(min_value=0, max_value=10**12),
    weights=st.lists(
        st.fractions(min_value=0, max_value=10**9, max_denominator=10**6), min_size=1, max_size=30
    ),
)
def test_largest_remainder_is_exact_and_fair(total_, weights):
    keyed = [((f"k{n:03d}",), w) for n, w in enumerate(weights)]
    shares = largest_remainder(total_, keyed)
    assert sum(shares) == total_
    weight_sum = sum(weights) or len(weights)
    for share, weight in zip(shares, weights, strict=True):
        quota = total_ * (weight if sum(weights) else 1) / Fraction(weight_sum)
        assert floor(quota) <= share <= ceil(quota)
    assert largest_remainder(total_, keyed) == shares


@given(
    st.lists(
        st.fractions(min_value=-(10**9), max_value=10**9, max_denominator=10**6),
        min_size=1,
        max_size=30,
    )
)
def test_exact_amounts_of_both_signs_round_to_their_floor_or_ceiling(amounts):
    """A line's cells with credits and charges (input reclassified as cached across months):
    each gets the floor or ceiling of its own exact amount, and they add up to the line."""
    total = floor(sum(amounts) + Fraction(1, 2))  # the line, rounded half up once
    shares = rounded_amounts(total, list(enumerate(amounts)))
    assert sum(shares) == total
    assert all(floor(a) <= share <= ceil(a) for a, share in zip(amounts, shares, strict=True))


def test_largest_remainder_breaks_ties_by_key():
    assert largest_remainder(1, [(("b",), Fraction(1)), (("a",), Fraction(1))]) == [0, 1]
    assert largest_remainder(5, [(("a",), Fraction(0)), (("b",), Fraction(0))]) == [3, 2]


MODELS = [
    "gpt-4o-mini",
    "openai/gpt-4o-mini",
    "anthropic/claude-sonnet-4-5",
    "gpt-4o",
    "ollama/llama3.1",
    "mystery-model-9000",
    None,
]
DAYS = [date(2025, 1, 15), date(2026, 11, 3), date(2026, 11, 17), date(2026, 11, 30)]


def _run(runner: int) -> RunInfo:
    return RunInfo(
        runner_id=f"r{runner}",
        model=None,
        session_id=f"s{runner % 3}",
        subagent=runner >= 4,
        parent_id=f"r{runner - 4}" if runner >= 4 else None,
        status=["SUCCESS", "FAILURE", "REVOKED", "RUNNING"][runner % 4],
    )


usage_strategy = st.builds(
    lambda runner, model, byok, late, day, counts: EntryUsage(
        _run(runner), model, byok, late, day, *counts, billed_line=None, billed_exact=None
    ),
    runner=st.integers(0, 9),
    model=st.sampled_from(MODELS),
    byok=st.booleans(),
    late=st.booleans(),
    day=st.sampled_from(DAYS),
    counts=st.tuples(*[st.integers(0, 10**9)] * 4),
)


@hyp_settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(usages=st.lists(usage_strategy, min_size=1, max_size=40))
def test_every_view_adds_up_to_the_invoice(registry, usages):
    invoice = build_invoice(
        org="o",
        period="2026-11",
        groups=[u.group() for u in usages],
        runs=len({u.run.runner_id for u in usages}),
        entries=len(usages),
        anomalies_open=False,
        registry=registry,
        now=NOW,
    )
    allocation = allocate(invoice, usages, registry)
    assert allocation.pricing == "registry" and allocation.exact
    assert_adds_up(allocation, invoice)
    trees = run_trees(allocation.cells)
    assert sum((t.total for t in trees), AllocatedUsage()).priced_micros == invoice.total_micros


def _cell(runner: str, *, parent: str | None = None, session: str = "s", micros: int = 10) -> Cell:
    run = RunInfo(
        runner, "gpt-4o", session, parent is not None or runner.startswith("x"), parent, "SUCCESS"
    )
    line = ("gpt-4o", "paid", "2024-08-06", False)
    return Cell(
        run, date(2026, 11, 2), line, AllocatedUsage(100, 0, 10, 0, micros), Decimal(micros)
    )


def test_run_trees_nest_subagents_and_hang_orphans_under_their_session():
    cells = [
        _cell("top", micros=5),
        _cell("child", parent="top", micros=20),
        _cell("grandchild", parent="child", micros=30),
        _cell("orphan", parent="gone", session="s2", micros=7),
        _cell("loop-a", parent="loop-b", micros=1),
        _cell("loop-b", parent="loop-a", micros=1),
        _cell("other", micros=40),
    ]
    trees = run_trees(cells)
    assert [t.run.runner_id if t.run else t.session_id for t in trees] == [
        "top",
        "other",
        "s2",
        "s",
    ]
    top = trees[0]
    assert top.total.amount_micros == 55 and top.own.amount_micros == 5
    assert top.children[0].run.runner_id == "child"
    assert top.children[0].children[0].run.runner_id == "grandchild"
    orphans = trees[2]
    assert orphans.run is None and [c.run.runner_id for c in orphans.children] == ["orphan"]
    # A parent chain that loops is cut, never lost, never infinite.
    looped = {c.run.runner_id for c in trees[3].children} | {
        g.run.runner_id for c in trees[3].children for g in c.children
    }
    assert looped == {"loop-a", "loop-b"}
    assert sum((t.total for t in trees), AllocatedUsage()).amount_micros == 104


# --- metered corpora -------------------------------------------------------------------------


def test_generated_months_add_up_for_every_view(months):
    db, settings, registry = months
    found = invoices(db, settings)
    assert {i.status for i in found} == {"draft", "final"}
    lines = [line for i in found for line in i.lines]
    assert any(line.late for line in lines)
    assert {line.tier for line in lines} == {"paid", "free", "byok"}
    assert any(not line.priced for line in lines)
    assert len({line.model for line in lines}) >= 5
    collections = Collections.of(db, settings)
    for invoice in found:
        stored, usages = read_period(collections, invoice.org, invoice.period, batch_size=7)
        assert stored == invoice
        allocation = allocate(invoice, usages, registry)
        assert allocation.exact
        assert_adds_up(allocation, invoice)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_other_corpora_add_up(registry, seed):
    settings = Settings(mongo_url="mongomock://unused", batch_size=25, redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=seed, orgs=(f"org-{seed}",))
    for invoice in invoices(db, settings):
        _, usages = read_period(Collections.of(db, settings), invoice.org, invoice.period)
        assert_adds_up(allocate(invoice, usages, registry), invoice)


def _repriced(registry: Registry, model_id: str, factor: int) -> Registry:
    """The registry with one model's rates multiplied in place (a retroactive correction)."""
    data = registry.model_dump(mode="json")
    for model in data["models"]:
        if model["id"] == model_id:
            for price in model["prices"]:
                for rate in ("input", "cached_input", "output"):
                    if price.get(rate) is not None:
                        price[rate] = str(Decimal(price[rate]) * factor)
    return Registry.model_validate(data)


def test_a_final_invoice_keeps_the_prices_it_was_built_with(months):
    db, settings, registry = months
    changed = _repriced(registry, "gpt-4o-mini", 3)
    final = next(i for i in invoices(db, settings) if i.status == "final" and i.org == "acme")
    _, usages = read_period(Collections.of(db, settings), final.org, final.period)
    allocation = allocate(final, usages, changed)
    assert allocation.pricing == "billed" and allocation.exact
    assert_adds_up(allocation, final)


def _new_price_from(registry: Registry, model_id: str, valid_from: date, rate: str) -> Registry:
    """The registry with one more price version of a model: a retroactive correction that
    moves part of a period's usage to another line (another `price_valid_from`)."""
    data = registry.model_dump(mode="json")
    for model in data["models"]:
        if model["id"] == model_id:
            last = dict(model["prices"][-1])
            last.update(valid_from=valid_from.isoformat(), input=rate, output=rate)
            model["prices"].append(last)
    return Registry.model_validate(data)


@pytest.mark.parametrize("today", ["rolled back", "changed again"])
def test_a_final_invoice_is_split_exactly_after_a_retroactive_registry_change(registry, today):
    """October billed under one registry, re-priced by a retroactive change (a gpt-4o-mini
    price from Oct 10) before it was frozen; the registry is then rolled back, or changed
    again. Neither today's registry nor the prices each entry was billed at give the
    final's lines: the excerpt of the registry that priced it, frozen with it, does."""
    settings = Settings(mongo_url="mongomock://unused", batch_size=40, redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    corpus = generate_corpus(
        seed=5, orgs=("acme",), runs_per_org=30, start=datetime(2026, 10, 1, tzinfo=UTC), days=28
    )
    db.findings.insert_many(corpus.findings)
    db.tasks.insert_many(corpus.tasks)
    november_4 = datetime(2026, 11, 4, 12, tzinfo=UTC)
    run_chore(db, now=november_4 - timedelta(days=1), registry=registry, settings=settings)
    corrected = _new_price_from(registry, "gpt-4o-mini", date(2026, 10, 10), rate="0.5")
    run_chore(db, now=november_4, registry=corrected, settings=settings)
    assert finalize_invoices(db, now=november_4, settings=settings) == ["acme:2026-10"]
    final = next(i for i in invoices(db, settings) if i.id == "acme:2026-10")
    assert final.registry == corrected.fingerprint
    assert "2026-10-10" in {line.price_valid_from for line in final.lines}

    now = (
        registry
        if today == "rolled back"
        else _new_price_from(corrected, "gpt-4o-mini", date(2026, 10, 20), rate="0.7")
    )
    _, usages = read_period(Collections.of(db, settings), final.org, final.period)
    allocation = allocate(final, usages, now)
    assert (allocation.pricing, allocation.exact) == ("invoiced", True)
    assert_adds_up(allocation, final)
    assert final.priced_with is not None
    assert {m["id"] for m in final.priced_with["models"]} <= {line.model for line in final.lines}


def test_a_stale_draft_is_split_on_the_prices_it_shows(months):
    db, settings, registry = months
    changed = _repriced(registry, "gpt-4o-mini", 3)
    draft = next(i for i in invoices(db, settings) if i.status == "draft" and i.org == "acme")
    _, usages = read_period(Collections.of(db, settings), draft.org, draft.period)
    allocation = allocate(draft, usages, changed)
    assert allocation.pricing == "billed"
    assert_adds_up(allocation, draft)


def test_prices_changed_twice_still_split_the_draft_exactly(registry):
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=4, orgs=("acme",))
    run_chore(db, now=NOW, registry=_repriced(registry, "gpt-4o-mini", 3), settings=settings)
    draft = next(i for i in invoices(db, settings) if i.status == "draft")
    _, usages = read_period(Collections.of(db, settings), draft.org, draft.period)
    # Neither today's prices nor the billed ones are those of the draft: the excerpt of the
    # registry that priced it, kept with it, is, so the weights are its own exact amounts.
    allocation = allocate(draft, usages, _repriced(registry, "gpt-4o-mini", 5))
    assert (allocation.pricing, allocation.exact) == ("invoiced", True)
    assert_adds_up(allocation, draft)
    # A draft written before the excerpt was kept: weights only proportional, the draft's
    # line amounts still split to the micro-dollar.
    legacy = draft.model_copy(update={"priced_with": None})
    allocation = allocate(legacy, usages, _repriced(registry, "gpt-4o-mini", 5))
    assert (allocation.pricing, allocation.exact) == ("registry", False)
    assert_adds_up(allocation, legacy)


def test_usage_missing_from_the_draft_says_to_rerun(registry):
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=9, orgs=("acme",))
    collections = Collections.of(db, settings)
    entry = collections.ledger.find_one({"booked": "2026-11"})  # a late entry
    entry.update(_id=f"{entry['runner_id']}:999", seq=999)
    collections.ledger.insert_one(entry)
    invoice, usages = read_period(collections, "acme", "2026-11")
    with pytest.raises(InvoiceOutOfDate, match="run `chore run --org acme`"):
        allocate(invoice, usages, registry)


def test_filters_keep_exact_subsets(months):
    db, settings, registry = months
    _, usages = read_period(Collections.of(db, settings), "acme", "2026-11")
    invoice = next(i for i in invoices(db, settings) if i.id == "acme:2026-11")
    cells = allocate(invoice, usages, registry).cells
    every = total(rows(cells, "run"))
    by_id = model_filter(["gpt-4o-mini"], registry)
    assert model_filter(["OpenAI/GPT-4o-mini"], registry) >= by_id
    mini = rows(cells, "run", Filters(models=by_id))
    assert mini and all(row.run.model in ("gpt-4o-mini",) for row in mini)
    assert total(mini).priced_micros == sum(
        c.usage.priced_micros for c in cells if c.line[0] == "gpt-4o-mini"
    )
    first_half = Filters(since=date(2026, 11, 1), until=date(2026, 11, 15))
    second_half = Filters(since=date(2026, 11, 16))
    halves = total(rows(cells, "day", first_half)) + total(rows(cells, "day", second_half))
    late_days = total(rows(cells, "day", Filters(until=date(2026, 10, 31))))
    assert (halves + late_days).priced_micros == every.priced_micros
    by_status = [
        total(rows(cells, "run", Filters(statuses=frozenset({s}))))
        for s in ("SUCCESS", "FAILURE", "REVOKED", "RUNNING")
    ]
    assert sum(by_status, AllocatedUsage()).tokens == every.tokens


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def usage_db(env_db, registry):
    metered_months(env_db, get_settings(), registry, seed=5, orgs=("acme",))
    return env_db


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize("by", BY_CHOICES)
def test_usage_json_totals_equal_the_invoice(usage_db, by):
    invoice = usage_db.billing_invoices.find_one({"_id": "acme:2026-11"})
    result = invoke("usage", "--org", "acme", "--period", "2026-11", "--by", by, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["total"]["amount_micros"] == invoice["total_micros"] == data["invoice_total_micros"]
    assert data["total"]["tokens"] == sum(line["tokens"] for line in invoice["lines"])
    assert sum(row["amount_micros"] or 0 for row in data["rows"]) == invoice["total_micros"]
    assert data["total"]["runs"] == invoice["runs"]


def test_usage_csv_and_table(usage_db):
    invoice = usage_db.billing_invoices.find_one({"_id": "acme:2026-10"})
    csv_out = invoke("usage", "--org", "acme", "--period", "2026-10", "--by", "run", "--csv")
    header, *lines = csv_out.stdout.splitlines()
    assert header.startswith("run,model,session_id,parent_id,subagent,status,runs,")
    column = header.split(",").index("amount_micros")
    amounts = [line.split(",")[column] for line in lines]
    assert sum(int(a) for a in amounts if a) == invoice["total_micros"]
    table = invoke("usage", "--org", "acme", "--period", "2026-10", "--by", "tier")
    assert table.exit_code == 0
    assert "FINAL" in table.output and "unpriced" in table.output
    assert f"invoice total {usd(invoice['total_micros'])}" in table.output


def test_a_run_that_switched_models_names_both_in_the_table_json_and_csv(env_db, registry):
    running = {
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": datetime(2026, 11, 3, tzinfo=UTC).timestamp(),
        "context": {
            "workspace_id": "acme",
            "ai_model": "openai/gpt-4o-mini",
            "ai_tokens": 1_000,
            "ai_prompt_tokens": 800,
            "ai_completion_tokens": 200,
        },
    }
    env_db.tasks.insert_one(running)
    settings = get_settings()
    run_chore(
        env_db, now=datetime(2026, 11, 3, 12, tzinfo=UTC), registry=registry, settings=settings
    )
    switched = {
        "context.ai_model": "anthropic/claude-sonnet-4-5",
        "context.ai_tokens": 3_000,
        "context.ai_prompt_tokens": 2_400,
        "context.ai_completion_tokens": 600,
        "end_time": datetime(2026, 11, 5, tzinfo=UTC),
        "status": "SUCCESS",
        "last_updated_db": datetime(2026, 11, 5, tzinfo=UTC).timestamp(),
    }
    env_db.tasks.update_one({"_id": running["_id"]}, {"$set": switched})
    run_chore(
        env_db, now=datetime(2026, 11, 6, 12, tzinfo=UTC), registry=registry, settings=settings
    )

    view = ["usage", "--org", "acme", "--period", "2026-11", "--by", "run"]
    both = "claude-sonnet-4-5, gpt-4o-mini"
    assert both in invoke(*view).output
    (row,) = json.loads(invoke(*view, "--json").stdout)["rows"]
    assert (row["model"], row["ai_model"]) == (both, "anthropic/claude-sonnet-4-5")
    header, line = invoke(*view, "--csv").stdout.splitlines()
    values = dict(zip(header.split(","), next(csv.reader([line])), strict=True))
    assert (values["model"], values["ai_model"]) == (both, "anthropic/claude-sonnet-4-5")


def test_usage_filters_from_the_command_line(usage_db):
    result = invoke(
        "usage",
        "--org",
        "acme",
        "--period",
        "2026-11",
        "--by",
        "model",
        "--json",
        "--model",
        "openai/gpt-4o-mini",
        "--since",
        "2026-11-01",
        "--status",
        "success",
    )
    data = json.loads(result.stdout)
    assert [row["model"] for row in data["rows"]] == ["gpt-4o-mini"]
    assert data["filters"]["statuses"] == ["SUCCESS"]
    assert 0 < data["total"]["amount_micros"] < data["invoice_total_micros"]


def test_usage_errors_are_one_line(usage_db):
    missing = CliRunner().invoke(main, ["usage", "--org", "nobody", "--period", "2026-11"])
    assert missing.exit_code == 1 and "no invoice for org 'nobody' in 2026-11" in missing.output
    bad = CliRunner().invoke(main, ["usage", "--org", "acme", "--period", "11-2026"])
    assert bad.exit_code == 2 and "expected YYYY-MM, such as 2026-11" in bad.output
    by = CliRunner().invoke(main, ["usage", "--org", "acme", "--by", "colour"])
    assert by.exit_code == 2
    assert len(missing.output.strip().splitlines()) == 1


def test_usage_of_an_operator_like_org_is_data(usage_db):
    result = CliRunner().invoke(main, ["usage", "--org", '{"$ne": null}', "--period", "2026-11"])
    assert result.exit_code == 1 and "no invoice" in result.output


def test_thirty_place_rates_are_summed_exactly_by_every_view():
    """A rate may have 30 decimal places (LiteLLM's float costs, exactly): the allocation and
    the period's ledger sum amounts in the 80 digits the invoice line uses, not in Decimal's
    default 28 (which rounded 0.499...9 up to a half micro, and the line's 0 to 1)."""
    from chores.billing.period_ledger import entry_usages
    from chores.metering.lines import amount_of

    rate = "0." + "4" + "9" * 29  # 30 places, just under half a micro per token
    registry = Registry.model_validate(
        {
            "version": "t",
            "models": [
                {
                    "id": "m",
                    "tier": "paid",
                    "prices": [{"valid_from": "2026-01-01", "input": rate, "output": rate}],
                }
            ],
        }
    )
    run = RunInfo(
        runner_id="r1", model="m", session_id="s", subagent=False, parent_id=None, status="SUCCESS"
    )
    usage = EntryUsage(
        run, "m", False, False, date(2026, 11, 3), 1, 0, 0, 0, billed_line=None, billed_exact=None
    )
    invoice = build_invoice(
        org="o",
        period="2026-11",
        groups=[usage.group()],
        runs=1,
        entries=1,
        anomalies_open=False,
        registry=registry,
        now=NOW,
    )
    assert invoice.lines[0].amount_micros == 0
    allocation = allocate(invoice, [usage], registry)
    assert (allocation.exact, allocation.pricing) == (True, "registry")
    assert allocation.total.amount_micros == 0

    exact = amount_of("paid", registry.get("m").prices[0], 1, 0, 0, 0)
    entry = {
        "runner_id": "r1",
        "model": "m",
        "byok": False,
        "late": False,
        "usage_day": "2026-11-03",
        "priced_as": {"model": "m", "tier": "paid", "price_valid_from": "2026-01-01"},
        "amount_micros_exact": str(exact),
        "input_tokens": 1,
        "cached_tokens": 0,
        "output_tokens": 0,
        "unsplit_tokens": 0,
    }
    (summed,) = entry_usages([{**entry, "seq": 1}, {**entry, "seq": 2}])
    assert summed.billed_exact == Decimal("0." + "9" * 29 + "8")  # twice 0.49...9, exactly


def test_an_entry_that_only_moved_a_high_water_mark_is_no_run_of_the_breakdown(env_db):
    """Cached tokens beyond prompt move a high-water mark and bill nothing: the invoice counts
    no run for it, and neither does `chore usage`."""
    from bson import ObjectId

    def runner(context: dict) -> dict:
        return {
            "_id": ObjectId(),
            "name": "ai",
            "status": "SUCCESS",
            "end_time": NOW,
            "context": {"workspace_id": "acme", "ai_model": "gpt-4o-mini", **context},
        }

    env_db.tasks.insert_many(
        [
            runner({"ai_tokens": 1_000, "ai_prompt_tokens": 1_000, "ai_completion_tokens": 0}),
            runner(
                {
                    "ai_tokens": 0,
                    "ai_prompt_tokens": 0,
                    "ai_completion_tokens": 0,
                    "ai_cached_tokens": 5,
                }
            ),
        ]
    )
    invoke("run", "--org", "acme", "--now", NOW.isoformat())
    assert env_db.billing_ledger.count_documents({}) == 2
    invoice = env_db.billing_invoices.find_one({"_id": f"acme:{NOW:%Y-%m}"})
    result = invoke("usage", "--org", "acme", "--period", f"{NOW:%Y-%m}", "--by", "run", "--json")
    data = json.loads(result.stdout)
    assert data["total"]["runs"] == invoice["runs"] == 1
    assert len(data["rows"]) == 1


def test_a_credit_and_a_charge_on_one_line_keep_their_own_amounts(registry):
    """Input reclassified as cached in a later month is a credit on that month's line: the
    runners' shares are their own amounts rounded, not scaled by line / sum of weights."""

    def usage(runner_id: str, day: int, input_tokens: int, cached: int) -> EntryUsage:
        run = RunInfo(
            runner_id=runner_id, model="gpt-4o-mini", session_id="s", subagent=False,
            parent_id=None, status="SUCCESS",
        )  # fmt: skip
        return EntryUsage(
            run, "gpt-4o-mini", False, False, date(2026, 11, day), input_tokens, cached, 0, 0,
            billed_line=None, billed_exact=None,
        )  # fmt: skip

    usage_a = usage("a", 1, -1_000_000, 1_000_000)
    usage_b = usage("b", 3, 500_004, 0)
    invoice = build_invoice(
        org="o", period="2026-11", groups=[usage_a.group(), usage_b.group()], runs=2,
        entries=2, anomalies_open=False, registry=registry, now=NOW,
    )  # fmt: skip
    assert [line.amount_micros for line in invoice.lines] == [1]  # -75,000 + 75,000.6
    allocation = allocate(invoice, [usage_a, usage_b], registry)
    assert allocation.exact
    assert [(c.run.runner_id, c.usage.amount_micros) for c in allocation.cells] == [
        ("a", -75_000),
        ("b", 75_001),
    ]


def test_a_model_filter_keeps_only_that_models_lines_of_a_runner_that_switched(env_db):
    from bson import ObjectId

    oid = ObjectId()
    context = {"workspace_id": "acme", "ai_model": "gpt-4o", "ai_tokens": 100_000,
               "ai_prompt_tokens": 80_000, "ai_completion_tokens": 20_000}  # fmt: skip
    env_db.tasks.insert_one({"_id": oid, "name": "ai", "status": "RUNNING", "context": context})
    invoke("run", "--org", "acme", "--now", "2026-11-03T00:00:00Z")
    switched = {"context.ai_model": "gpt-4o-mini", "context.ai_tokens": 101_000,
                "context.ai_prompt_tokens": 81_000, "status": "SUCCESS"}  # fmt: skip
    env_db.tasks.update_one({"_id": oid}, {"$set": {**switched, "end_time": NOW}})
    invoke("run", "--org", "acme", "--now", NOW.isoformat())
    args = ["usage", "--org", "acme", "--period", "2026-11", "--by", "model", "--json"]
    data = json.loads(invoke(*args, "--model", "gpt-4o-mini").stdout)
    assert [(row["model"], row["tokens"]) for row in data["rows"]] == [("gpt-4o-mini", 1_000)]


def test_a_chart_with_a_credit_fits_its_bars_and_says_what_it_leaves_out():
    """A day whose gpt-4o cost is $0.0025 and whose gpt-4o-mini credit (tokens moved to
    cached by a later write) is -$0.00125: the bar is drawn whole inside the plot and the
    credit is named, not silently dropped."""
    import re

    from chores.reports.invoice_html import Series, stacked_bars

    svg = stacked_bars(
        title="Cost per day",
        categories=["5"],
        series=[Series("gpt-4o", "#111", (2_500,)), Series("gpt-4o-mini", "#222", (-1_250,))],
        axis=lambda ticks: [usd(int(t)) for t in ticks],
        value=usd,
    )
    assert "credits not drawn: -$0.00125 (in the tables)" in svg
    tops = [float(y) for y in re.findall(r'<rect x="[\d.]+" y="(-?[\d.]+)"', svg)]
    assert tops and min(tops) >= 30  # no bar above the plot's top (30 px)


def test_a_run_shows_how_it_ended_though_its_last_write_added_no_tokens(env_db):
    """Seen RUNNING with 1,000 tokens, then FAILURE with the same counters: no ledger entry
    records the end, and `usage --by run` said RUNNING, `--status FAILURE` found nothing
    (review). The views take a run's status from its document now."""
    from bson import ObjectId

    oid = ObjectId()
    doc = ai_runner(oid, ended=None, status="RUNNING", prompt=800, stamp=1.0)
    env_db.tasks.insert_one(doc)
    now = ["--now", NOW.isoformat()]
    CliRunner().invoke(main, ["run", "--org", "acme", *now])
    ended = {**doc, "status": "FAILURE", "end_time": NOW - timedelta(minutes=1)}
    env_db.tasks.replace_one({"_id": oid}, {**ended, "last_updated_db": 2.0})
    CliRunner().invoke(main, ["run", "--org", "acme", *now])
    assert env_db.billing_ledger.count_documents({}) == 1  # the end added no entry

    args = ["usage", "--org", "acme", "--period", NOW.strftime("%Y-%m"), "--by", "run", *now]
    report = json.loads(CliRunner().invoke(main, [*args, "--json"]).output)
    assert [row["status"] for row in report["rows"]] == ["FAILURE"]
    failed = json.loads(CliRunner().invoke(main, [*args, "--status", "FAILURE", "--json"]).output)
    assert failed["total"]["runs"] == 1 and failed["rows"][0]["tokens"] == 1_000


@given(
    source_id=st.one_of(
        st.builds(ObjectId),
        st.text(max_size=40),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.builds(Int64, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        st.floats(allow_nan=False, allow_infinity=False),  # inf and nan: no literal, no lookup
        st.booleans(),
    )
)
def test_a_runner_key_gives_its_source_id_back_unless_digested(source_id):
    key = runner_key(source_id)
    if type(source_id) is int and not -(2**31) <= source_id < 2**31:
        source_id = Int64(source_id)  # what a read from BSON gives back, and its key
    assert source_id_of(key) == source_id and type(source_id_of(key)) is type(source_id)
    assert source_id_of(runner_key("x" * 400)) is None  # a digest names no id


def test_usage_of_unpriced_rows_only_totals_unpriced_not_zero(usage_db):
    """Review: `usage --model <an unpriced model>` totalled its rows at $0.00 (the JSON
    total 0) while each row said UNPRICED (None)."""
    invoice = usage_db.billing_invoices.find_one({"_id": "acme:2026-11"})
    (unpriced, *_) = sorted({line["model"] for line in invoice["lines"] if not line["priced"]})
    args = ("usage", "--org", "acme", "--period", "2026-11", "--by", "model", "--model", unpriced)
    data = json.loads(invoke(*args, "--json").stdout)
    assert data["rows"] and all(row["amount_micros"] is None for row in data["rows"])
    assert data["total"]["amount_micros"] is None
    unpriced_tokens = data["total"]["unpriced_tokens"]
    assert unpriced_tokens == data["total"]["tokens"] > 0
    table = invoke(*args).stdout
    (total_line,) = [line for line in table.splitlines() if line.lstrip("│ ").startswith("total")]
    assert "UNPRICED" in total_line and "$0.00" not in total_line
    assert f"$0.00 + {unpriced_tokens:,} unpriced tokens" in table


def _ledger_entry(runner: str, **fields: Any) -> dict[str, Any]:
    counts = {"input_tokens": 10, "cached_tokens": 0, "output_tokens": 5, "unsplit_tokens": 0}
    kind = {"model": "m", "byok": False, "late": False, "usage_day": "2026-11-03"}
    return {"runner_id": runner, "seq": 1, **kind, **counts, **fields}


def test_an_entry_written_before_priced_as_has_no_billed_price_whatever_came_before_it():
    """`priced_as` came later: an entry without it has no billed line or amount, even when
    read right after one that has them (found by mutation testing)."""
    priced_as = {"model": "m", "tier": "paid", "price_valid_from": "2026-01-01"}
    priced = _ledger_entry("r1", priced_as=priced_as, amount_micros_exact="12.5")
    usages = {u.run.runner_id: u for u in entry_usages([priced, _ledger_entry("r2")])}
    assert (usages["r1"].billed_line is not None, usages["r1"].billed_exact) == (
        True,
        Decimal("12.5"),
    )
    assert (usages["r2"].billed_line, usages["r2"].billed_exact) == (None, None)


def test_reading_a_period_reports_its_progress_after_each_batch_and_at_the_end(
    db, settings, registry
):
    for n in range(5):
        db.tasks.insert_one(ai_runner(f"t{n}", ended=NOW - timedelta(hours=n), tokens=1_100))
    run_chore(db, now=NOW, registry=registry, settings=settings)
    calls: list[tuple[int, int]] = []

    _, usages = read_period(
        Collections.of(db, settings),
        "acme",
        NOW.strftime("%Y-%m"),
        batch_size=2,
        on_progress=lambda done, total: calls.append((done, total)),
    )

    assert len(usages) == 5
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_a_status_shown_from_the_source_is_a_string_of_at_most_max_label_characters(db, settings):
    db.tasks.insert_many(
        [
            {"_id": "a", "status": "x" * MAX_LABEL},
            {"_id": "b", "status": "y" * (MAX_LABEL + 1)},
            {"_id": "c", "status": ["SUCCESS"]},
        ]
    )
    found = source_statuses(Collections.of(db, settings), [runner_key(i) for i in "abc"])
    assert found == {runner_key("a"): "x" * MAX_LABEL}
