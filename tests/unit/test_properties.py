"""Invoices depend on the source documents only (SPEC §4), checked on generated corpora.

Not on the order the documents are scanned in, on how often they were observed
while growing, on reruns, on the batch size, nor on splitting the run per org.
"""

from __future__ import annotations

import copy
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import mongomock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chores import Settings, check_quota, finalize_invoices, run_chore
from chores.demo.corpus import Corpus, generate_corpus
from pricing import load_registry

from support import ai_runner
from support.truth import expected_invoices, month, tokens_by_org

REGISTRY = load_registry()
SETTINGS = Settings(mongo_url="mongomock://test", batch_size=50, redis_url=None)
# A corpus puts weeks between a runner's writes (their stamps) that the runs below see at
# one `now`: with the default PENDING_IDLE_SECONDS (a day) a runner seen running would be
# idle, re-read an hour later (tests/unit/test_idle_pending.py). Here none is idle.
WATCHING = SETTINGS.model_copy(update={"pending_idle_seconds": 10 * 366 * 86400})
ORGS = ("acme", "globex")
NOW = datetime(2026, 11, 27, 18, 0, tzinfo=UTC)
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)  # corpus start: every runner ends before NOW
OCTOBER = datetime(2026, 10, 1, tzinfo=UTC)

examples = settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def make_corpus(seed: int, start: datetime = NOVEMBER) -> Corpus:
    corpus = generate_corpus(
        seed=seed,
        orgs=ORGS,
        runs_per_org=5,
        start=start,
        days=25,
        running_share=0.2,
        malformed_share=0.2,
    )
    assert all(u.end_time is None or u.end_time < NOW for u in corpus.truth)
    return corpus


def fresh_db(tasks: list[dict[str, Any]], findings: list[dict[str, Any]]) -> Any:
    db = mongomock.MongoClient(tz_aware=True)["main"]
    if tasks:
        db.tasks.insert_many(copy.deepcopy(tasks))
    if findings:
        db.findings.insert_many(copy.deepcopy(findings))
    return db


# `entries` counts the ledger entries a draft was built from, and `build_ticket` the draft
# builds so far: more observations write more entries and builds for the same usage. The
# draft's `usage_groups` are its sums per usage day: usage seen while a runner runs is
# dated when seen, on the same invoice lines.
def invoices(
    db: Any, *, drop: tuple[str, ...] = ("updated_at", "entries", "build_ticket", "usage_groups")
) -> dict[str, dict[str, Any]]:
    return {
        doc["_id"]: {k: v for k, v in doc.items() if k not in drop}
        for doc in db.billing_invoices.find()
    }


def invoice_tokens(db: Any) -> dict[str, int]:
    totals: dict[str, int] = {}
    for doc in db.billing_invoices.find():
        totals[doc["org"]] = totals.get(doc["org"], 0) + sum(
            line["tokens"] for line in doc["lines"]
        )
    return {org: tokens for org, tokens in totals.items() if tokens}


def review_pairs(corpus: Corpus) -> set[tuple[str, str]]:
    bad = set(corpus.malformed)
    return {
        (t["context"]["workspace_id"], month(t["end_time"]))
        for t in corpus.tasks
        if str(t["_id"]) in bad
    }


def assert_matches_truth(db: Any, corpus: Corpus) -> None:
    want = expected_invoices(corpus.truth, now=NOW, registry=REGISTRY, review=review_pairs(corpus))
    got = {
        doc["_id"]: {
            "lines": sorted(doc["lines"], key=repr),
            **{k: doc[k] for k in ("total_micros", "unpriced_tokens", "runs", "needs_review")},
        }
        for doc in db.billing_invoices.find()
    }
    assert got == {
        invoice_id: {
            "lines": sorted(w["lines"].values(), key=repr),
            **{k: w[k] for k in ("total_micros", "unpriced_tokens", "runs", "needs_review")},
        }
        for invoice_id, w in want.items()
    }


def clean_invoices(corpus: Corpus, settings_: Settings = SETTINGS) -> dict[str, dict[str, Any]]:
    db = fresh_db(corpus.tasks, corpus.findings)
    run_chore(db, now=NOW, registry=REGISTRY, settings=settings_)
    return invoices(db)


seeds = st.integers(min_value=0, max_value=2**32 - 1)


@examples
@given(seed=seeds, order=st.randoms(use_true_random=False), batch=st.integers(1, 12))
def test_scan_order_does_not_change_the_invoices(seed, order: random.Random, batch):
    corpus = make_corpus(seed)
    tasks, findings = list(corpus.tasks), list(corpus.findings)
    order.shuffle(tasks)
    order.shuffle(findings)
    batched = Settings(mongo_url="mongomock://test", batch_size=batch, redis_url=None)
    db = fresh_db(tasks, findings)
    run_chore(db, now=NOW, registry=REGISTRY, settings=batched)

    assert invoices(db) == clean_invoices(corpus)
    assert_matches_truth(db, corpus)


@examples
@given(
    seed=seeds,
    fractions=st.lists(st.floats(0.01, 0.99), min_size=1, max_size=4).map(sorted),
    findings_at=st.integers(0, 4),
    same_month=st.booleans(),
)
def test_observing_growing_documents_many_times_bills_what_one_observation_bills(
    seed, fractions, findings_at, same_month
):
    """Intermediate observations bill running runners at `now`, so the invoices equal a
    single observation's when every runner ends in `now`'s month (with its price)."""
    corpus = make_corpus(seed, NOVEMBER if same_month else OCTOBER)
    db = fresh_db([], [])
    observations = [corpus.at(f) for f in fractions] + [corpus.at(1.0)]
    for step, docs in enumerate(observations):
        if step == min(findings_at, len(observations) - 1) and corpus.findings:
            db.findings.insert_many(copy.deepcopy(corpus.findings))
        if step == 0:
            db.tasks.insert_many(copy.deepcopy(docs))
        else:
            for doc in docs:
                db.tasks.replace_one({"_id": doc["_id"]}, copy.deepcopy(doc))
        run_chore(db, now=NOW, registry=REGISTRY, settings=WATCHING)

    assert invoice_tokens(db) == tokens_by_org(corpus.truth)
    if same_month:
        assert invoices(db) == clean_invoices(corpus)
        assert_matches_truth(db, corpus)


@examples
@given(seed=seeds, later=st.integers(0, 3 * 86400))
def test_a_rerun_changes_nothing(seed, later):
    corpus = make_corpus(seed)
    db = fresh_db(corpus.tasks, corpus.findings)
    first = run_chore(db, now=NOW, registry=REGISTRY, settings=SETTINGS)
    assert first.entries_written > 0
    before = invoices(db, drop=("build_ticket",))
    ledger = list(db.billing_ledger.find())

    again = run_chore(db, now=NOW, registry=REGISTRY, settings=SETTINGS)
    assert (again.entries_written, again.tokens_billed) == (0, 0)
    assert invoices(db, drop=("build_ticket",)) == before
    assert list(db.billing_ledger.find()) == ledger

    # Later in the same month: still nothing new (a rebuilt draft may only be re-stamped).
    after = NOW + timedelta(seconds=later)
    assert month(after) == month(NOW)
    third = run_chore(db, now=after, registry=REGISTRY, settings=SETTINGS)
    assert (third.entries_written, third.tokens_billed) == (0, 0)
    assert invoices(db, drop=("updated_at", "build_ticket")) == {
        k: {f: v for f, v in d.items() if f not in ("updated_at", "build_ticket")}
        for k, d in before.items()
    }
    assert list(db.billing_ledger.find()) == ledger


@settings(max_examples=20, deadline=None, database=None)
@given(seed=seeds)
def test_batch_size_does_not_change_the_invoices(seed):
    corpus = make_corpus(seed)
    results = []
    for size in (1, 7, 1000):
        batched = Settings(mongo_url="mongomock://test", batch_size=size, redis_url=None)
        results.append(clean_invoices(corpus, batched))
    assert results[0] == results[1] == results[2]


@examples
@given(seed=seeds, order=st.permutations(ORGS), repeat=st.booleans())
def test_one_run_per_org_gives_the_invoices_of_one_run_for_all(seed, order, repeat):
    corpus = make_corpus(seed)
    db = fresh_db(corpus.tasks, corpus.findings)
    for org in order:
        run_chore(db, org=org, now=NOW, registry=REGISTRY, settings=SETTINGS)
    if repeat:  # an all-org run after the per-org ones finds nothing new
        report = run_chore(db, now=NOW, registry=REGISTRY, settings=SETTINGS)
        assert report.entries_written == 0
    assert invoices(db) == clean_invoices(corpus)
    assert_matches_truth(db, corpus)


def test_every_run_writes_the_decision_of_every_org_even_an_idle_one():
    """SPEC §3: each chore run writes the org's decision. An org whose runners did not
    change since the last run still gets a fresh decision, so that `check_quota` does
    not call it stale (and refuse it, fail-closed) while the chore runs every 5 minutes."""
    first = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)

    def finished(org: str, ended: datetime) -> dict[str, Any]:
        return {
            "_id": f"runner-of-{org}",
            "name": "ai",
            "status": "SUCCESS",
            "end_time": ended,
            "last_updated_db": ended.timestamp(),
            "context": {
                "workspace_id": org,
                "ai_model": "gpt-4o-mini",
                "ai_tokens": 1_500,
                "ai_prompt_tokens": 1_000,
                "ai_completion_tokens": 500,
            },
        }

    # acme's runner ended just now, globex's two hours ago: both billed by the first run.
    db = fresh_db([finished("acme", first), finished("globex", first - timedelta(hours=2))], [])
    fail_closed = Settings(
        mongo_url="mongomock://test", batch_size=50, redis_url=None, quota_fail_open=False
    )
    run_chore(db, now=first, registry=REGISTRY, settings=fail_closed)
    later = first
    for _ in range(4):  # the beat: every 5 minutes, nothing new
        later += timedelta(minutes=5)
        run_chore(db, now=later, registry=REGISTRY, settings=fail_closed)

    for org in ("acme", "globex"):
        decision = db.billing_quota.find_one({"_id": org})
        assert decision["used_tokens"] == 1_500, org
        assert decision["computed_at"] == later, org
        answer = check_quota(db, org, now=later + timedelta(seconds=1), settings=fail_closed)
        assert (answer.state, answer.allowed) == ("ok", True), org


def test_an_anomaly_flags_the_period_of_the_documents_final_usage_time():
    """The same final document gives the same invoices whatever was observed before
    (SPEC §4), and needs_review is on the invoice of its usage time (SPEC §7).

    A runner with a malformed counter is seen running on 1 November (usage time `now`),
    then finished with an `end_time` on 31 October. Observed once, at the end, it flags
    October; observed twice, its anomaly must move to October too."""
    malformed = {
        "_id": "runner-with-a-string-counter",
        "name": "ai",
        "status": "RUNNING",
        "last_updated_db": datetime(2026, 10, 31, 23, 0, tzinfo=UTC).timestamp(),
        "context": {
            "workspace_id": "acme",
            "ai_model": "gpt-4o-mini",
            "ai_tokens": "100",
            "ai_prompt_tokens": 60,
            "ai_completion_tokens": 40,
        },
    }
    finished = {
        **malformed,
        "status": "SUCCESS",
        "end_time": datetime(2026, 10, 31, 23, 30, tzinfo=UTC),
    }
    end = datetime(2026, 11, 1, 0, 10, tzinfo=UTC)

    once = fresh_db([finished], [])
    run_chore(once, now=end, registry=REGISTRY, settings=SETTINGS)
    twice = fresh_db([malformed], [])
    run_chore(twice, now=end - timedelta(minutes=5), registry=REGISTRY, settings=SETTINGS)
    twice.tasks.replace_one({"_id": malformed["_id"]}, finished)
    run_chore(twice, now=end, registry=REGISTRY, settings=SETTINGS)

    assert {d["_id"]: d["needs_review"] for d in once.billing_invoices.find()} == {
        "acme:2026-10": True
    }
    got, want = invoices(twice), invoices(once)
    assert got["acme:2026-10"] == want["acme:2026-10"]
    for invoice_id in set(got) - set(want):  # an empty draft left behind is harmless...
        assert got[invoice_id]["lines"] == [], invoice_id
        assert got[invoice_id]["needs_review"] is False, invoice_id  # ...a false flag is not


def test_an_anomaly_of_a_final_period_flags_the_open_draft_its_usage_will_land_in():
    """A final invoice never changes, so an anomaly of its period found after the freeze
    once flagged nothing at all: only `billing_anomalies` knew. It flags the open period's
    draft, where the document's usage lands as late usage once fixed, and heals there."""

    db = fresh_db([ai_runner("clean", ended=OCTOBER + timedelta(days=9), prompt=600)], [])
    run_chore(db, now=OCTOBER + timedelta(days=30), registry=REGISTRY, settings=SETTINGS)
    assert finalize_invoices(db, now=NOVEMBER + timedelta(days=5), settings=SETTINGS) == [
        "acme:2026-10"
    ]
    october = db.billing_invoices.find_one({"_id": "acme:2026-10"})

    db.tasks.insert_one(ai_runner("malformed", ended=OCTOBER + timedelta(days=11), tokens="1000"))
    run_chore(db, now=NOVEMBER + timedelta(days=6), registry=REGISTRY, settings=SETTINGS)
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) == october  # final
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert (november["needs_review"], november["lines"]) == (True, [])
    [anomaly] = db.billing_anomalies.find()
    assert (anomaly["kind"], anomaly["period"], anomaly["resolved"]) == (
        "malformed_counters", "2026-11", False,
    )  # fmt: skip

    fixed = ai_runner(
        "malformed",
        ended=OCTOBER + timedelta(days=11),
        prompt=600,
        stamp=(NOVEMBER + timedelta(days=6, hours=1)).timestamp(),
    )
    db.tasks.replace_one({"_id": "malformed"}, fixed)
    run_chore(db, now=NOVEMBER + timedelta(days=7), registry=REGISTRY, settings=SETTINGS)
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert november["needs_review"] is False
    assert [(line["late"], line["tokens"]) for line in november["lines"]] == [(True, 1_000)]
    assert db.billing_anomalies.find_one({"_id": anomaly["_id"]})["resolved"] is True
    assert db.billing_invoices.find_one({"_id": "acme:2026-10"}) == october


def test_an_anomaly_a_final_was_frozen_with_stays_with_that_final():
    """The daily full pass re-reads every runner: it once moved an anomaly off the final
    invoice frozen flagged for it, which then said "needs review" and listed no cause
    (review). It stays there; the open draft is not flagged for it."""
    held = ai_runner("malformed", ended=OCTOBER + timedelta(days=11), tokens="1000")
    db = fresh_db([held], [])
    run_chore(db, now=OCTOBER + timedelta(days=30), registry=REGISTRY, settings=SETTINGS)
    finalize_invoices(db, now=NOVEMBER + timedelta(days=5), settings=SETTINGS)
    october = db.billing_invoices.find_one({"_id": "acme:2026-10"})
    assert (october["status"], october["needs_review"]) == ("final", True)

    later = NOVEMBER + timedelta(days=6)
    run_chore(db, now=later, registry=REGISTRY, settings=SETTINGS, full=True)
    [anomaly] = db.billing_anomalies.find()
    assert (anomaly["period"], anomaly["resolved"]) == ("2026-10", False)
    november = db.billing_invoices.find_one({"_id": "acme:2026-11"})
    assert november is None or november["needs_review"] is False
