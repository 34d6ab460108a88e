"""The platform's sample documents give exactly the invoices SPEC §1–§3 describe."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from chores import run_chore
from chores.core.db import Collections

from support import NOW


def seed(db, docs):
    db.tasks.insert_many(docs["tasks"])
    db.findings.insert_many(docs["findings"])


def micros(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


def lines_by_model(invoice):
    return {(line["model"], line["tier"]): line for line in invoice["lines"]}


def test_acme_bills_own_usage_of_subagents_and_ignores_copies(db, settings, registry, fixture_docs):
    seed(db, fixture_docs)
    run_chore(db, now=NOW, registry=registry, settings=settings)

    invoice = db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})
    lines = lines_by_model(invoice)
    assert set(lines) == {("gpt-4o-mini", "paid"), ("claude-sonnet-4-5", "paid")}

    mini = lines[("gpt-4o-mini", "paid")]
    # run 1: 9000/3000, subagent 2: 4000/1000 of its own, grandchild 3: 500/200; nmap: nothing.
    assert (mini["input_tokens"], mini["output_tokens"]) == (13_500, 4_200)
    assert mini["cached_tokens"] == mini["unsplit_tokens"] == 0
    price = registry.resolve("gpt-4o-mini").price_at(NOW)
    assert mini["amount_micros"] == micros(13_500 * price.input + 4_200 * price.output)
    assert mini["price_valid_from"] == price.valid_from.isoformat()

    sonnet = lines[("claude-sonnet-4-5", "paid")]
    assert (sonnet["input_tokens"], sonnet["cached_tokens"], sonnet["output_tokens"]) == (
        10_000,
        20_000,
        10_000,
    )
    sp = registry.resolve("anthropic/claude-sonnet-4-5").price_at(NOW)
    assert sonnet["amount_micros"] == micros(
        10_000 * sp.input + 20_000 * sp.cached_rate + 10_000 * sp.output
    )

    assert invoice["total_micros"] == mini["amount_micros"] + sonnet["amount_micros"]
    assert invoice["runs"] == 4
    assert invoice["status"] == "draft"
    assert invoice["needs_review"] is False
    assert invoice["unpriced_tokens"] == 0
    assert invoice["currency"] == "USD"


def test_beta_free_byok_unknown_unsplit_and_malformed(db, settings, registry, fixture_docs):
    seed(db, fixture_docs)
    run_chore(db, now=NOW, registry=registry, settings=settings)

    invoice = db.billing_invoices.find_one({"_id": "ws-beta:2026-11"})
    lines = lines_by_model(invoice)
    free = registry.resolve("ollama/llama3.1")
    assert free.tier == "free"
    free_line = lines[(free.id, "free")]
    assert (free_line["input_tokens"], free_line["output_tokens"]) == (70_000, 10_000)
    assert free_line["amount_micros"] == 0 and free_line["priced"] is True
    assert free_line["price_valid_from"] is not None

    byok = lines[("gpt-4o", "byok")]
    assert (byok["input_tokens"], byok["output_tokens"], byok["amount_micros"]) == (4_000, 1_000, 0)
    assert byok["price_valid_from"] is None and byok["priced"] is True

    unknown = lines[("mystery-model-9000", "paid")]
    assert unknown["priced"] is False and unknown["amount_micros"] is None
    assert unknown["tokens"] == 3_000 and unknown["price_valid_from"] is None

    unsplit = lines[("gpt-4o-mini", "paid")]
    assert unsplit["unsplit_tokens"] == 2_500 and unsplit["input_tokens"] == 0
    rate = registry.resolve("gpt-4o-mini").price_at(NOW).input
    assert unsplit["amount_micros"] == micros(2_500 * rate)

    assert invoice["total_micros"] == unsplit["amount_micros"]
    assert invoice["unpriced_tokens"] == 3_000
    assert invoice["needs_review"] is True
    assert invoice["runs"] == 4


def test_anomalies_recorded_and_never_billed(db, settings, registry, fixture_docs):
    seed(db, fixture_docs)
    report = run_chore(db, now=NOW, registry=registry, settings=settings)

    kinds = {(a["runner_id"], a["kind"]) for a in db.billing_anomalies.find()}
    assert ("65f000000000000000000009", "malformed_counters") in kinds
    assert ("65f00000000000000000000a", "no_org") in kinds
    assert report.anomalies == {"malformed_counters": 1, "no_org": 1}
    billed = {e["runner_id"] for e in db.billing_ledger.find()}
    assert "65f000000000000000000009" not in billed
    assert "65f00000000000000000000a" not in billed
    assert "65f000000000000000000004" not in billed  # nmap child with copied counters
    assert db.billing_invoices.count_documents({}) == 2


def test_rerun_changes_nothing_and_source_untouched(db, settings, registry, fixture_docs):
    seed(db, fixture_docs)
    before = list(db.tasks.find()), list(db.findings.find())
    run_chore(db, now=NOW, registry=registry, settings=settings)
    first = {i["_id"]: i["lines"] for i in db.billing_invoices.find()}
    report = run_chore(db, now=NOW, registry=registry, settings=settings)
    assert report.tokens_billed == 0 and report.entries_written == 0
    assert {i["_id"]: i["lines"] for i in db.billing_invoices.find()} == first
    assert (list(db.tasks.find()), list(db.findings.find())) == before


def test_subagent_waits_for_its_spawn_finding(db, settings, registry, fixture_docs):
    findings = fixture_docs.pop("findings")
    spawn_of_2 = next(
        f
        for f in findings
        if f.get("extra_data", {}).get("runner_id") == "65f000000000000000000002"
    )
    seed(db, {**fixture_docs, "findings": [f for f in findings if f is not spawn_of_2]})
    run_chore(db, now=NOW, registry=registry, settings=settings)
    c = Collections.of(db, settings)
    assert c.anomalies.find_one({"_id": "65f000000000000000000002:baseline_missing"})
    assert not c.ledger.find_one({"runner_id": "65f000000000000000000002"})
    assert db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["needs_review"] is True

    db.findings.insert_one(spawn_of_2)
    run_chore(db, now=NOW, registry=registry, settings=settings)
    entry = c.ledger.find_one({"runner_id": "65f000000000000000000002"})
    assert (entry["input_tokens"], entry["output_tokens"]) == (4_000, 1_000)
    assert c.anomalies.find_one({"_id": "65f000000000000000000002:baseline_missing"})["resolved"]
    assert db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["needs_review"] is False


def test_subagent_first_write_without_subagent_key_bills_no_inherited_tokens(
    db, settings, registry, fixture_docs
):
    """secator's first write of a subagent (PENDING, no `subagent` key yet) already
    carries the parent's counters; depth and parent session mark it from then on."""
    seed(db, fixture_docs)
    child = db.tasks.find_one({"_id": fixture_docs["tasks"][1]["_id"]})
    first_write = {
        **child,
        "status": "PENDING",
        "end_time": None,
        "last_updated_db": None,
        "context": {
            key: value
            for key, value in child["context"].items()
            if key != "subagent" and not key.startswith("ai_")
        }
        | {
            "ai_subagent_depth": 1,
            "ai_model": child["context"]["ai_model"],
            # what it inherited at spawn: the parent's counters, none of its own yet
            "ai_tokens": 12_000,
            "ai_prompt_tokens": 9_000,
            "ai_completion_tokens": 3_000,
        },
    }
    db.tasks.replace_one({"_id": child["_id"]}, first_write)
    run_chore(db, now=NOW, registry=registry, settings=settings)
    c = Collections.of(db, settings)
    assert not c.ledger.find_one({"runner_id": str(child["_id"])})  # nothing of its own yet

    db.tasks.replace_one({"_id": child["_id"]}, child)  # the later writes
    run_chore(db, now=NOW, registry=registry, settings=settings)
    own = list(c.ledger.find({"runner_id": str(child["_id"])}))
    assert sum(e["input_tokens"] for e in own) == 4_000
    assert sum(e["output_tokens"] for e in own) == 1_000
    assert all(e["subagent"] is True for e in own)
