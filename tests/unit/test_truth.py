"""Generated corpora give, to the micro-dollar, the invoices an independent pricer computes.

The corpus generator knows what every AI runner really consumed (`Corpus.truth`);
`tests/support/truth.py` prices that by the SPEC without any code of `chores`. Every line
of every stored invoice is compared with it.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bson
import mongomock
import pytest

from chores import finalize_invoices, run_chore
from chores.demo.corpus import Corpus, generate_corpus
from pricing import Registry, load_registry

from support.truth import expected_invoices, month, observed, tokens_by_org

ORGS = ("acme", "globex", "initech")
SPAN_START = datetime(2026, 9, 20, tzinfo=UTC)  # 40 days: September and October
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)  # running runners are billed in November

PRICE_CHANGE_REGISTRY = """\
version: "test-price-change"
models:
- id: gpt-4o-mini
  aliases: [openai/gpt-4o-mini]
  tier: paid
  prices:
  - valid_from: "2024-07-18"
    input: "0.15"
    cached_input: "0.075"
    output: "0.6"
  - valid_from: "2026-10-11"      # no cached_input: cached tokens at the input rate
    input: "0.2"
    output: "0.8"
  - valid_from: "2026-10-21"
    input: "0.1234567"
    cached_input: "0.0333333"
    output: "0.7654321"
  - valid_from: "2026-11-01"
    input: "0.3"
    cached_input: "0.1"
    output: "1.2"
- id: claude-sonnet-4-5           # released mid-October: unpriced before
  aliases: [anthropic/claude-sonnet-4-5]
  tier: paid
  prices:
  - valid_from: "2026-10-15"
    input: "3"
    cached_input: "0.3"
    output: "15"
- id: gpt-4o
  tier: paid
  prices:
  - valid_from: "2024-05-13"
    input: "5"
    output: "15"
  - valid_from: "2026-10-18"
    input: "2.5"
    cached_input: "1.25"
    output: "10"
- id: llama3.1
  aliases: [ollama/llama3.1]
  tier: free
  prices:
  - valid_from: "2024-07-23"
    input: "0"
    output: "0"
  - valid_from: "2026-10-09"
    input: "0"
    cached_input: "0"
    output: "0"
"""
PRICE_CHANGE_MODELS = (
    ("gpt-4o-mini", "platform"),
    ("openai/gpt-4o-mini", "platform"),
    ("anthropic/claude-sonnet-4-5", "platform"),
    ("gpt-4o", "platform"),
    ("gpt-4o", "byok"),
    ("OpenAI/GPT-4o-Mini", "byok"),  # resolves (case-insensitive, provider stripped)
    ("mystery-model-9000", "byok"),  # unknown: shown under its raw name, charged 0
    ("GPT-4O-MINI", "platform"),
    ("ollama/llama3.1", "platform"),
    ("mystery-model-9000", "platform"),
)


def seed_db(corpus: Corpus) -> Any:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    db.tasks.insert_many(copy.deepcopy(corpus.tasks))
    if corpus.findings:
        db.findings.insert_many(copy.deepcopy(corpus.findings))
    return db


def review_pairs(corpus: Corpus) -> set[tuple[str, str]]:
    """(org, period) of every malformed runner: an anomaly touched that invoice."""
    bad = set(corpus.malformed)
    return {
        (t["context"]["workspace_id"], month(t["end_time"]))
        for t in corpus.tasks
        if str(t["_id"]) in bad
    }


def stored_invoices(db: Any) -> dict[str, dict[str, Any]]:
    return {doc["_id"]: observed(doc) for doc in db.billing_invoices.find()}


def assert_invoices_equal(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for invoice_id in sorted(want):
        g, w = got[invoice_id], want[invoice_id]
        assert sorted(g["lines"], key=repr) == sorted(w["lines"], key=repr), invoice_id
        for key, line in w["lines"].items():
            assert g["lines"][key] == line, (invoice_id, key)
        assert g == w, invoice_id


def assert_ledger_matches_truth(db: Any, corpus: Corpus) -> None:
    tokens: dict[str, int] = {}
    for entry in db.billing_ledger.find():
        tokens[entry["runner_id"]] = tokens.get(entry["runner_id"], 0) + entry["tokens"]
    assert tokens == {u.runner_id: u.tokens for u in corpus.truth}


@pytest.mark.parametrize("seed", [1, 7, 23, 61])
def test_every_invoice_line_matches_the_reference(seed, settings, registry):
    corpus = generate_corpus(
        seed=seed,
        orgs=ORGS,
        runs_per_org=10,
        start=SPAN_START,
        days=40,
        running_share=0.15,
        malformed_share=0.2,
    )
    assert corpus.malformed, "the corpus must contain malformed runners"
    assert any(u.end_time is None for u in corpus.truth), "and running ones"
    assert {month(u.end_time) for u in corpus.truth if u.end_time} == {"2026-09", "2026-10"}
    db = seed_db(corpus)

    run_chore(db, now=NOW, registry=registry, settings=settings)

    want = expected_invoices(corpus.truth, now=NOW, registry=registry, review=review_pairs(corpus))
    assert_invoices_equal(stored_invoices(db), want)
    assert all(doc["status"] == "draft" for doc in db.billing_invoices.find())
    assert_ledger_matches_truth(db, corpus)

    billed = set(db.billing_ledger.distinct("runner_id"))
    anomalies = {(a["runner_id"], a["kind"]) for a in db.billing_anomalies.find()}
    for runner_id in corpus.malformed:
        assert runner_id not in billed
        assert (runner_id, "malformed_counters") in anomalies


def test_totals_per_org_match_the_reference(settings, registry):
    corpus = generate_corpus(
        seed=5, orgs=ORGS, runs_per_org=12, start=SPAN_START, days=40, running_share=0.1
    )
    db = seed_db(corpus)
    report = run_chore(db, now=NOW, registry=registry, settings=settings)
    want = tokens_by_org(corpus.truth)
    assert {org: s.tokens for org, s in report.orgs.items() if s.tokens} == want
    assert report.tokens_billed == sum(want.values())
    got: dict[str, int] = {}
    for doc in db.billing_invoices.find():
        got[doc["org"]] = got.get(doc["org"], 0) + sum(line["tokens"] for line in doc["lines"])
    assert got == want


@pytest.fixture
def price_change_registry(tmp_path: Path) -> Registry:
    path = tmp_path / "registry.yaml"
    path.write_text(PRICE_CHANGE_REGISTRY)
    return load_registry(path)


def october_corpus(seed: int, **overrides: Any) -> Corpus:
    options: dict[str, Any] = {
        "orgs": ORGS,
        "runs_per_org": 14,
        "start": datetime(2026, 10, 1, tzinfo=UTC),
        "days": 30,
        "models": PRICE_CHANGE_MODELS,
        "running_share": 0.1,
        "malformed_share": 0.1,
    }
    options.update(overrides)
    return generate_corpus(seed=seed, **options)


@pytest.mark.parametrize("seed", [3, 11])
def test_usage_on_each_side_of_a_price_change_is_priced_at_its_own_version(
    seed, settings, price_change_registry
):
    corpus = october_corpus(seed)
    db = seed_db(corpus)
    run_chore(db, now=NOW, registry=price_change_registry, settings=settings)

    want = expected_invoices(
        corpus.truth, now=NOW, registry=price_change_registry, review=review_pairs(corpus)
    )
    assert_invoices_equal(stored_invoices(db), want)

    # The case is really exercised: one model on several price versions in one month,
    # and a model that is unpriced before its first version.
    october = [inv for inv in want.values() if inv["period"] == "2026-10"]
    versions = {k[2] for inv in october for k in inv["lines"] if k[:2] == ("gpt-4o-mini", "paid")}
    assert len(versions) >= 3, versions
    assert any(
        k[0] == "claude-sonnet-4-5" and k[2] is None for inv in october for k in inv["lines"]
    )
    split = [  # separate lines for the same model in one invoice
        [(line["model"], line["tier"]) for line in invoice["lines"]]
        for invoice in db.billing_invoices.find({"period": "2026-10"})
    ]
    assert any(len(keys) > len(set(keys)) for keys in split)


def test_late_usage_goes_to_the_open_period_and_the_final_invoice_never_changes(
    settings, price_change_registry
):
    registry = price_change_registry
    corpus = october_corpus(29)
    db = seed_db(corpus)
    first = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    run_chore(db, now=first, registry=registry, settings=settings)

    finalized = finalize_invoices(db, now=datetime(2026, 11, 5, tzinfo=UTC), settings=settings)
    october_ids = sorted(f"{org}:2026-10" for org in ORGS)
    assert sorted(finalized) == october_ids
    finals = {doc["_id"]: bson.encode(doc) for doc in db.billing_invoices.find({"status": "final"})}
    assert sorted(finals) == october_ids

    # Runners that ended in October reach the database only now: one without a stamp
    # (its first write), the others with a recent one.
    late = october_corpus(
        101,
        orgs=("acme", "globex"),
        runs_per_org=3,
        start=datetime(2026, 10, 20, tzinfo=UTC),
        days=10,
        running_share=0,
        malformed_share=0,
    )
    assert all(month(u.end_time) == "2026-10" for u in late.truth if u.end_time)
    second = datetime(2026, 11, 6, 12, 0, tzinfo=UTC)
    for n, task in enumerate(late.tasks):
        if n == 0:
            task.pop("last_updated_db")
        else:
            task["last_updated_db"] = (second - timedelta(seconds=30 + n)).timestamp()
    db.tasks.insert_many(copy.deepcopy(late.tasks))
    db.findings.insert_many(copy.deepcopy(late.findings))
    run_chore(db, now=second, registry=registry, settings=settings)

    assert {
        doc["_id"]: bson.encode(doc) for doc in db.billing_invoices.find({"status": "final"})
    } == finals
    # Runners still running at the first run were billed at that run's time.
    original = [u if u.end_time else dataclasses.replace(u, end_time=first) for u in corpus.truth]
    want = expected_invoices(
        original + late.truth,
        now=second,
        registry=registry,
        late_runners={u.runner_id for u in late.truth},
        review=review_pairs(corpus),
    )
    assert_invoices_equal(stored_invoices(db), want)
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert november["status"] == "draft"
    late_lines = [line for line in november["lines"] if line["late"]]
    assert late_lines
    # Priced at October's versions, not November's.
    assert all(line["price_valid_from"] != "2026-11-01" for line in late_lines)


def test_a_registry_change_reprices_every_draft_and_never_a_final(
    settings, registry, price_change_registry
):
    corpus = generate_corpus(
        seed=17, orgs=ORGS, runs_per_org=10, start=SPAN_START, days=40, running_share=0.15
    )
    db = seed_db(corpus)
    run_chore(db, now=NOW, registry=registry, settings=settings)
    assert finalize_invoices(db, now=NOW, settings=settings) == [f"{org}:2026-09" for org in ORGS]
    finals = {d["_id"]: bson.encode(d) for d in db.billing_invoices.find({"status": "final"})}

    report = run_chore(
        db, now=NOW + timedelta(hours=1), registry=price_change_registry, settings=settings
    )
    assert report.entries_written == 0

    assert {
        d["_id"]: bson.encode(d) for d in db.billing_invoices.find({"status": "final"})
    } == finals
    review = review_pairs(corpus)
    old = expected_invoices(corpus.truth, now=NOW, registry=registry, review=review)
    new = expected_invoices(corpus.truth, now=NOW, registry=price_change_registry, review=review)
    want = {i: (old if i.endswith(":2026-09") else new)[i] for i in new}
    assert_invoices_equal(stored_invoices(db), want)
    assert old != new
