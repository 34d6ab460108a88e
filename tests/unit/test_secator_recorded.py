"""Documents written by the real secator 0.52.1, replayed snapshot by snapshot.

`scripts/record_secator.py` drove secator's own `ai` task (fake LLM with known usage,
mongomock behind secator's MongoDB hooks) and committed, in `tests/data/secator-0.52.1/`,
the `tasks` and `findings` collections at every write that changed an AI runner, plus
every call the fake LLM answered. Each snapshot replaces the source collections and is
metered by `run_chore`; after each one the invoices must equal the usage the snapshot's
documents reflect, per org, model and token kind, to the token and to the micro-dollar.
Nothing here needs secator installed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from bson import json_util
from bson.json_util import JSONOptions

from chores import Settings, run_chore
from pricing import Registry, load_registry

DATA = Path(__file__).resolve().parents[1] / "data" / "secator-0.52.1"
JSON_OPTIONS = JSONOptions(tz_aware=True)

Key = tuple[str, str]  # (org, registry model id)


def load_json(name: str) -> Any:
    return json.loads((DATA / name).read_text())


MANIFEST = load_json("manifest.json")
RUNNERS: dict[str, dict[str, Any]] = {
    r["runner_id"]: r for r in load_json("true_usage.json")["runners"]
}
RUNNERS_BY_ORG = {r["org"]: r for r in RUNNERS.values() if r["role"] == "parent"}


def load_snapshot(entry: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return json_util.loads((DATA / entry["file"]).read_text(), json_options=JSON_OPTIONS)


def micros(amount: Decimal) -> int:
    return int(amount.to_integral_value(rounding=ROUND_HALF_UP))


def true_usage(persisted_calls: dict[str, int], registry: Registry) -> dict[Key, list[int]]:
    """[prompt, completion] per (org, model) of the calls the snapshot's documents reflect,
    priced under the model the runner bills them as (its `ai_model`)."""
    usage: dict[Key, list[int]] = defaultdict(lambda: [0, 0])
    for runner_id, count in persisted_calls.items():
        runner = RUNNERS.get(runner_id)
        if runner is None:  # an AI runner the fake LLM never answered
            assert count == 0, runner_id
            continue
        for call in runner["calls"][:count]:
            model = registry.resolve(call["billed_as"])
            assert model is not None, call["billed_as"]
            key = (runner["org"], model.id)
            usage[key][0] += call["prompt_tokens"]
            usage[key][1] += call["completion_tokens"]
    return {key: value for key, value in usage.items() if any(value)}


def own_usage(runner_id: str, count: int) -> tuple[int, int]:
    calls = RUNNERS[runner_id]["calls"][:count] if runner_id in RUNNERS else []
    return sum(c["prompt_tokens"] for c in calls), sum(c["completion_tokens"] for c in calls)


def invoiced(db: Any) -> dict[Key, dict[str, Any]]:
    lines: dict[Key, dict[str, Any]] = {}
    for invoice in db.billing_invoices.find():
        assert invoice["unpriced_tokens"] == 0
        assert invoice["total_micros"] == sum(line["amount_micros"] for line in invoice["lines"])
        for line in invoice["lines"]:
            key = (invoice["org"], line["model"])
            assert key not in lines, f"two lines for {key}"  # one period, one price version
            if line["tokens"]:
                lines[key] = line
    return lines


def test_the_recording_covers_what_the_issue_asks() -> None:
    assert MANIFEST["versions"]["secator"] == "0.52.1"
    labels = [s["label"] for s in MANIFEST["snapshots"]]
    assert any("subagent first write (PENDING, no subagent key)" in label for label in labels)
    assert any("spawn finding" in label for label in labels)
    assert "ws-umbrella still RUNNING after ws-initech failed" in labels
    roles = {(r["org"], r["role"]) for r in RUNNERS.values()}
    assert {("ws-acme", "subagent"), ("ws-globex", "subagent")} <= roles
    # the auto-mode run's intent call: served by the intent model, billed as the run's model
    intent = RUNNERS_BY_ORG["ws-globex"]["calls"][0]
    assert intent["served_by"] != intent["billed_as"]
    last = load_snapshot(MANIFEST["snapshots"][-1])
    statuses = {
        t["context"]["workspace_id"]: t["status"] for t in last["tasks"] if t["name"] == "ai"
    }
    assert statuses["ws-initech"] == "FAILURE"
    for task in last["tasks"]:
        ctx = task["context"]
        if ctx.get("ai_subagent_depth"):
            assert isinstance(ctx["subagent"], str) and ctx["subagent"]
            assert ctx["parent_session_id"] and task.get("has_parent") is not True
            assert "has_parent" not in ctx


def test_replay_bills_exactly_the_true_usage_at_every_snapshot(
    db: Any, settings: Settings, registry: Registry
) -> None:
    subagents = {rid for rid, r in RUNNERS.items() if r["role"] == "subagent"}
    for index, entry in enumerate(MANIFEST["snapshots"]):
        where = f"snapshot {index:02d} ({entry['label']})"
        snapshot = load_snapshot(entry)
        for name in ("tasks", "findings"):
            db[name].delete_many({})
            if snapshot[name]:
                db[name].insert_many(snapshot[name])
        now = datetime.fromisoformat(entry["now"])
        report = run_chore(db, now=now, registry=registry, settings=settings)
        assert report.error is None, where

        expected = true_usage(entry["persisted_calls"], registry)
        lines = invoiced(db)
        assert set(lines) == set(expected), where
        for (org, model_id), (prompt, completion) in expected.items():
            line = lines[(org, model_id)]
            got = (line["input_tokens"], line["cached_tokens"], line["output_tokens"])
            assert got == (prompt, 0, completion), f"{where}: {org} {model_id}"
            assert (line["unsplit_tokens"], line["tokens"]) == (0, prompt + completion), where
            price = registry.resolve(model_id).price_at(now)
            assert line["price_valid_from"] == price.valid_from.isoformat(), where
            exact = Decimal(prompt) * price.input + Decimal(completion) * price.output
            assert line["amount_micros"] == micros(exact), f"{where}: {org} {model_id}"

        # Per runner: a subagent is billed its own calls only, at its own model's rate.
        ledger: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for e in db.billing_ledger.find():
            assert e["runner_id"] in RUNNERS, (
                f"{where}: billed {e['runner_id']}, which made no call"
            )
            runner = RUNNERS[e["runner_id"]]
            assert e["model"] == runner["ai_model"], where
            assert e["priced_as"]["model"] == registry.resolve(runner["ai_model"]).id, where
            assert e["subagent"] is (e["runner_id"] in subagents), where
            ledger[e["runner_id"]][0] += e["input_tokens"] + e["unsplit_tokens"]
            ledger[e["runner_id"]][1] += e["output_tokens"]
        for runner_id, count in entry["persisted_calls"].items():
            prompt, completion = own_usage(runner_id, count)
            got = tuple(ledger.get(runner_id, [0, 0])[:2])
            assert got == (prompt, completion), f"{where}: runner {runner_id}"

        # Findings are copies of contexts, never usage.
        finding_ids = {str(f["_id"]) for f in snapshot["findings"]}
        assert not finding_ids & set(ledger), where


def test_subagent_first_write_bills_nothing_until_its_spawn_finding(
    db: Any, settings: Settings, registry: Registry
) -> None:
    for entry in MANIFEST["snapshots"]:
        if "subagent first write" not in entry["label"]:
            continue
        snapshot = load_snapshot(entry)
        # the new subagent: depth and parent session already set, no `subagent` key yet
        child = next(
            t
            for t in snapshot["tasks"]
            if t["context"].get("ai_subagent_depth") and "subagent" not in t["context"]
        )
        assert child["status"] == "PENDING" and "subagent" not in child["context"]
        assert child["context"]["ai_tokens"] > 0  # inherited from its parent
        db.tasks.delete_many({})
        db.findings.delete_many({})
        db.tasks.insert_many(snapshot["tasks"])
        db.findings.insert_many(snapshot["findings"])
        run_chore(
            db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings
        )
        assert not db.billing_ledger.find_one({"runner_id": str(child["_id"])})


def test_rerun_on_the_last_snapshot_changes_nothing(
    db: Any, settings: Settings, registry: Registry
) -> None:
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    db.tasks.insert_many(snapshot["tasks"])
    db.findings.insert_many(snapshot["findings"])
    now = datetime.fromisoformat(entry["now"])
    run_chore(db, now=now, registry=registry, settings=settings)
    first = {i["_id"]: i["lines"] for i in db.billing_invoices.find()}
    report = run_chore(db, now=now, registry=registry, settings=settings)
    assert report.tokens_billed == 0 and report.entries_written == 0
    assert {i["_id"]: i["lines"] for i in db.billing_invoices.find()} == first


def test_every_subagent_is_nested_under_the_runner_that_spawned_it(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """A ledger entry's `parent_id` is the document `_id` of the run that spawned it, the
    id the run trees of `chore usage` and `chore report` nest it under."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    db.tasks.insert_many(snapshot["tasks"])
    db.findings.insert_many(snapshot["findings"])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)
    runners = {str(task["_id"]) for task in snapshot["tasks"]}
    subagents = list(db.billing_ledger.find({"subagent": True}))
    assert subagents and all(e["parent_id"] in runners - {e["runner_id"]} for e in subagents)


@pytest.mark.parametrize("org", ["ws-acme", "ws-globex", "ws-initech", "ws-umbrella"])
def test_final_invoice_per_org(db: Any, settings: Settings, registry: Registry, org: str) -> None:
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    db.tasks.insert_many(snapshot["tasks"])
    db.findings.insert_many(snapshot["findings"])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)
    expected = {
        k: v for k, v in true_usage(entry["persisted_calls"], registry).items() if k[0] == org
    }
    lines = {k: v for k, v in invoiced(db).items() if k[0] == org}
    assert {k: [v["input_tokens"], v["output_tokens"]] for k, v in lines.items()} == expected


def _orders() -> list[tuple[str, list[int]]]:
    import random

    n = len(MANIFEST["snapshots"])
    rng = random.Random(15)
    shuffled = list(range(n))
    rng.shuffle(shuffled)
    return [
        ("every 5th", [*range(0, n, 5), n - 1]),
        ("random subset", [*sorted(rng.sample(range(n), 8)), n - 1]),
        ("shuffled", [*shuffled, n - 1]),
    ]


@pytest.mark.parametrize(("name", "order"), _orders(), ids=[name for name, _ in _orders()])
def test_any_subset_or_order_of_the_writes_ends_on_the_true_usage(
    db: Any, settings: Settings, registry: Registry, name: str, order: list[int]
) -> None:
    """The chore rarely sees every write, and may see them out of order (a stale read):
    whichever it saw, once it has seen the last state the invoices are the true usage."""
    for index in order:
        entry = MANIFEST["snapshots"][index]
        snapshot = load_snapshot(entry)
        for collection in ("tasks", "findings"):
            db[collection].delete_many({})
            if snapshot[collection]:
                db[collection].insert_many(snapshot[collection])
        run_chore(
            db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings
        )
    expected = true_usage(MANIFEST["snapshots"][-1]["persisted_calls"], registry)
    got = {k: [v["input_tokens"], v["output_tokens"]] for k, v in invoiced(db).items()}
    assert got == expected


# -- an `ai` step of a workflow that an AI run spawned ------------------------------------
# secator 0.52.1 (not recorded: no shipped workflow has an `ai` step, a customer's template
# may): the AI run's `run_workflow` gives the workflow a copy of its own context, counters
# included, and `workflow_id` = the workflow's id (`ai/actions.py` `_get_result_context`,
# `_child_preamble`); the workflow hands each step a copy of its context
# (`runners/workflow.py`), so its `ai` step starts from the spawning run's counters. The spawn
# finding (`ai_type: "workflow"`) names the workflow, never the step; the step carries the
# subagent markers only when the spawning run was itself a subagent.


def _workflow_step(snapshot: dict[str, Any], spawning: dict[str, Any], own: int) -> Any:
    """The step's document and the workflow's spawn finding, `own` tokens of its own."""
    import copy

    from bson import ObjectId

    at_spawn = copy.deepcopy(spawning["context"])
    workflow_id = str(ObjectId())
    card = copy.deepcopy(next(f for f in snapshot["findings"] if f.get("ai_type") == "task"))
    card.update(_id=ObjectId(), ai_type="workflow", content="customer_workflow")
    card["extra_data"] = {"runner_id": workflow_id, "runner_type": "workflow"}
    card["_context"] = {**at_spawn, "workflow_id": workflow_id, "tool_call_id": "call_1"}
    step_id = ObjectId()
    # `_get_result_context` adds the action's `tool_call_id` to the workflow's context
    context = {**at_spawn, "tool_call_id": "call_1", "tool_call_name": "run_workflow"}
    context |= {"workflow_id": workflow_id, "node_id": "ai", "task_id": str(step_id)}
    context["ai_tokens"] += own
    context["ai_prompt_tokens"] += own - 100
    context["ai_completion_tokens"] += 100
    step = copy.deepcopy(spawning)
    step.update(_id=step_id, context=context)
    return step, card


@pytest.mark.parametrize("spawned_by", ["a top-level run", "a subagent"])
def test_an_ai_step_of_a_workflow_an_ai_run_spawned_bills_its_own_tokens_only(
    db: Any, settings: Settings, registry: Registry, spawned_by: str
) -> None:
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    acme = [t for t in snapshot["tasks"] if t["context"]["workspace_id"] == "ws-acme"]
    spawning = next(
        t for t in acme if ("ai_subagent_depth" in t["context"]) == (spawned_by == "a subagent")
    )
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    db.tasks.insert_many([*snapshot["tasks"], step])
    db.findings.insert_many([*snapshot["findings"], card])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    (billed,) = list(db.billing_ledger.find({"runner_id": str(step["_id"])}))
    assert (billed["input_tokens"], billed["output_tokens"], billed["tokens"]) == (
        1_900,
        100,
        2_000,
    )
    # nested under the run that spawned its workflow: a subagent's document is keyed by its
    # `task_chunk_id`, its `task_id` names no document
    assert billed["subagent"] is True and billed["parent_id"] == str(spawning["_id"])
    assert db.billing_anomalies.count_documents({"runner_id": str(step["_id"])}) == 0
    truth = true_usage(entry["persisted_calls"], registry)
    expected = sum(sum(tokens) for (org, _), tokens in truth.items() if org == "ws-acme")
    invoiced_tokens = sum(
        line["tokens"] for i in db.billing_invoices.find({"org": "ws-acme"}) for line in i["lines"]
    )
    assert invoiced_tokens == expected + 2_000


def test_an_ai_step_of_a_workflow_no_ai_run_spawned_is_a_top_level_run(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """A workflow started by a person: its step's counters start at 0 and are all its own
    (a spawn finding naming another workflow, or of another org, changes nothing)."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    spawning = next(t for t in snapshot["tasks"] if "ai_subagent_depth" not in t["context"])
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    for started_by_a_person in (step["context"], card["_context"]):
        started_by_a_person.pop("tool_call_id")
        started_by_a_person.pop("tool_call_name", None)
    card["_context"]["workspace_id"] = "ws-someone-else"
    db.tasks.insert_many([step])
    db.findings.insert_many([card])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    (billed,) = list(db.billing_ledger.find({"runner_id": str(step["_id"])}))
    assert billed["tokens"] == step["context"]["ai_tokens"] and billed["subagent"] is False


def test_an_ai_step_read_before_its_workflows_spawn_finding_waits_for_it(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """Several actions in one turn: secator stores each action's items, the spawn finding
    included, only once the action is over (`ai/actions.py` `_run_batch`), so the steps of
    a workflow it started are written first. A step whose context carries the action's
    `tool_call_id` is held (`baseline_missing`, re-read) until the finding gives its
    baseline, never billed whole."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    spawning = next(t for t in snapshot["tasks"] if "ai_subagent_depth" not in t["context"])
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    db.tasks.insert_many([*snapshot["tasks"], step])
    db.findings.insert_many(snapshot["findings"])
    now = datetime.fromisoformat(entry["now"])
    run_chore(db, now=now, registry=registry, settings=settings)
    step_id = str(step["_id"])
    assert db.billing_ledger.count_documents({"runner_id": step_id}) == 0
    (held,) = list(db.billing_anomalies.find({"runner_id": step_id}))
    assert (held["kind"], held["resolved"]) == ("baseline_missing", False)

    db.findings.insert_one(card)  # the action is over: its items are stored
    run_chore(db, now=now, registry=registry, settings=settings)
    (billed,) = list(db.billing_ledger.find({"runner_id": step_id}))
    assert (billed["tokens"], billed["subagent"]) == (2_000, True)
    assert db.billing_anomalies.find_one({"runner_id": step_id})["resolved"] is True


@pytest.mark.parametrize("own_finding", ["stored with it", "stored after its first write"])
def test_a_subagent_of_an_ai_step_waits_for_its_own_spawn_finding_not_its_workflows(
    db: Any, settings: Settings, registry: Registry, own_finding: str
) -> None:
    """A subagent that a workflow's `ai` step spawned runs one depth deeper than the step.
    secator strips `workflow_id` from its context; should a copy keep it, the workflow's
    spawn finding (the spawning run's counters, at the step's depth) is still not its
    baseline: read as one, the step's own tokens would be billed again on the subagent."""
    import copy

    from bson import ObjectId

    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    spawning = next(
        t
        for t in snapshot["tasks"]
        if t["context"]["workspace_id"] == "ws-acme" and "ai_subagent_depth" not in t["context"]
    )
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    subagent_id = ObjectId()
    at_spawn = copy.deepcopy(step["context"])  # the step's counters when it spawned it
    at_spawn |= {
        "ai_subagent_depth": int(at_spawn.get("ai_subagent_depth") or 0) + 1,
        "parent_session_id": at_spawn.get("session_id") or "step-session",
        "session_id": "subagent-session",
        "task_chunk_id": str(subagent_id),
    }
    subagent = copy.deepcopy(step)
    subagent.update(_id=subagent_id, context=copy.deepcopy(at_spawn))
    subagent["context"]["ai_tokens"] += 100
    subagent["context"]["ai_prompt_tokens"] += 60
    subagent["context"]["ai_completion_tokens"] += 40
    own_card = copy.deepcopy(card)
    own_card.update(_id=ObjectId(), ai_type="task")
    own_card["extra_data"] = {"runner_id": str(subagent_id), "runner_type": "task"}
    own_card["_context"] = {k: v for k, v in at_spawn.items() if k != "workflow_id"}
    db.tasks.insert_many([*snapshot["tasks"], step, subagent])
    db.findings.insert_many([*snapshot["findings"], card])
    now = datetime.fromisoformat(entry["now"])
    subagent_key = str(subagent_id)
    if own_finding == "stored after its first write":
        run_chore(db, now=now, registry=registry, settings=settings)
        assert db.billing_ledger.count_documents({"runner_id": subagent_key}) == 0
        (held,) = list(db.billing_anomalies.find({"runner_id": subagent_key}))
        assert held["kind"] == "baseline_missing"
    db.findings.insert_one(own_card)
    run_chore(db, now=now, registry=registry, settings=settings)

    billed = list(db.billing_ledger.find({"runner_id": subagent_key}))
    assert sum(e["tokens"] for e in billed) == 100
    assert sum(e["input_tokens"] for e in billed) == 60
    open_kinds = {
        a["kind"] for a in db.billing_anomalies.find({"runner_id": subagent_key, "resolved": False})
    }
    assert open_kinds == set()
    truth = true_usage(entry["persisted_calls"], registry)
    expected = sum(sum(tokens) for (org, _), tokens in truth.items() if org == "ws-acme")
    invoiced_tokens = sum(
        line["tokens"] for i in db.billing_invoices.find({"org": "ws-acme"}) for line in i["lines"]
    )
    assert invoiced_tokens == expected + 2_000 + 100


@pytest.mark.parametrize(
    "noise", ["another org's finding names it", "a finding without a context names it", "NaN depth"]
)
def test_an_ai_step_is_billed_from_its_workflows_finding_whatever_else_names_it(
    db: Any, settings: Settings, registry: Registry, noise: str
) -> None:
    """A finding of another org naming the step (or one with no readable context) is no
    baseline and hides none (SPEC §4); a depth copied from the spawning run as NaN is the
    same depth as its copy."""
    from bson import ObjectId

    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    spawning = next(t for t in snapshot["tasks"] if "ai_subagent_depth" in t["context"])
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    findings = [*snapshot["findings"], card]
    naming_the_step = {
        "_id": ObjectId(),
        "_type": "ai",
        "ai_type": "task",
        "extra_data": {"runner_id": str(step["_id"])},
    }
    if noise == "another org's finding names it":
        findings.append({**naming_the_step, "_context": {**card["_context"], "workspace_id": "x"}})
    elif noise == "a finding without a context names it":
        findings.append({**naming_the_step, "_context": "not a context"})
    else:
        step["context"]["ai_subagent_depth"] = card["_context"]["ai_subagent_depth"] = float("nan")
    db.tasks.insert_many([*snapshot["tasks"], step])
    db.findings.insert_many(findings)
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    (billed,) = list(db.billing_ledger.find({"runner_id": str(step["_id"])}))
    assert (billed["tokens"], billed["subagent"]) == (2_000, True)
    assert billed["parent_id"] == str(spawning["_id"])
    held = db.billing_anomalies.count_documents({"runner_id": str(step["_id"]), "resolved": False})
    assert held == 0


def test_an_ai_step_named_after_a_variant_is_billed(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """secator names a workflow step after its template's `task/variant` key (`nmap/light`
    in its own workflows), the task class stripped of the variant: an `ai/triage` step is
    the AI task. Another task whose name merely starts with `ai` is not."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    spawning = next(t for t in snapshot["tasks"] if "ai_subagent_depth" not in t["context"])
    step, card = _workflow_step(snapshot, spawning, own=2_000)
    step["name"] = "ai/triage"
    lookalike, _ = _workflow_step(snapshot, spawning, own=3_000)
    lookalike["name"] = "aimap"
    db.tasks.insert_many([*snapshot["tasks"], step, lookalike])
    db.findings.insert_many([*snapshot["findings"], card])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    (billed,) = list(db.billing_ledger.find({"runner_id": str(step["_id"])}))
    assert (billed["tokens"], billed["subagent"]) == (2_000, True)
    assert db.billing_ledger.count_documents({"runner_id": str(lookalike["_id"])}) == 0


def test_the_chunks_of_a_subagent_are_billed_above_its_spawn_baseline(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """secator splits a subagent with several targets into chunks (`celery.py`
    `break_task`), each a copy of its context, inherited counters, markers and session
    included, under a new `task_chunk_id`: documents no spawn finding names. The subagent's
    finding names their session (`extra_data.subagent_session_id`): each chunk is billed
    its own tokens above that baseline, never the inherited ones, and is not held."""
    import copy

    from bson import ObjectId

    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    subagent, card = _recorded_subagent_and_its_card(snapshot)
    baseline = card["_context"]
    chunks = []
    for own_prompt, own_completion in ((3_000, 200), (2_500, 150)):
        chunk = copy.deepcopy(subagent)
        chunk["_id"] = ObjectId()
        chunk["context"]["task_chunk_id"] = str(chunk["_id"])
        chunk["context"]["ai_prompt_tokens"] = baseline["ai_prompt_tokens"] + own_prompt
        chunk["context"]["ai_completion_tokens"] = baseline["ai_completion_tokens"] + own_completion
        chunk["context"]["ai_tokens"] = baseline["ai_tokens"] + own_prompt + own_completion
        chunks.append(chunk)
    db.tasks.insert_many([*snapshot["tasks"], *chunks])
    db.findings.insert_many(snapshot["findings"])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    _assert_each_chunk_billed_its_own(db, entry, registry, chunks, subagent, (3_200, 2_650))


def _assert_each_chunk_billed_its_own(
    db: Any, entry: Any, registry: Registry, chunks: Any, parent: Any, owns: tuple[int, ...]
) -> None:
    """Each chunk billed its own tokens once, as a child of the runner it is a chunk of,
    without an anomaly; its org's invoices hold the recorded truth and the chunks' own."""
    for chunk, own in zip(chunks, owns, strict=True):
        (billed,) = list(db.billing_ledger.find({"runner_id": str(chunk["_id"])}))
        assert (billed["tokens"], billed["subagent"]) == (own, True)
        assert billed["parent_id"] == str(parent["_id"])  # the runner it is a chunk of
        assert db.billing_anomalies.count_documents({"runner_id": str(chunk["_id"])}) == 0
    org = parent["context"]["workspace_id"]
    truth = true_usage(entry["persisted_calls"], registry)
    expected = sum(sum(tokens) for (o, _), tokens in truth.items() if o == org)
    invoiced = sum(
        line["tokens"] for i in db.billing_invoices.find({"org": org}) for line in i["lines"]
    )
    assert invoiced == expected + sum(owns)


def test_a_runner_a_subagent_started_waits_for_its_own_spawn_finding(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """A subagent's `run_task(name="ai/triage")` starts an AI runner with a copy of its
    context: the same session as the subagent's chunks, but the action's own
    `tool_call_id`. Its document is written before its card is stored: it waits for it
    (held), then bills its own tokens above the subagent's counters at its start, never
    above the subagent's own baseline (review of 07cd671: billed 4,000 tokens twice)."""
    import copy

    from bson import ObjectId

    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    subagent, card = _recorded_subagent_and_its_card(snapshot)
    started = ObjectId()
    at_start = copy.deepcopy(subagent["context"])  # the subagent's counters when it started it
    at_start |= {"tool_call_id": "call_run_task", "task_chunk_id": str(started)}
    at_start["task_id"] = str(subagent["_id"])
    runner = copy.deepcopy(subagent)
    runner.update(_id=started, name="ai/triage", context=copy.deepcopy(at_start))
    runner["context"]["ai_tokens"] += 700
    runner["context"]["ai_prompt_tokens"] += 600
    runner["context"]["ai_completion_tokens"] += 100
    db.tasks.insert_many([*snapshot["tasks"], runner])
    db.findings.insert_many(snapshot["findings"])
    now = datetime.fromisoformat(entry["now"])
    run_chore(db, now=now, registry=registry, settings=settings)
    assert db.billing_ledger.count_documents({"runner_id": str(started)}) == 0
    (held,) = list(db.billing_anomalies.find({"runner_id": str(started)}))
    assert held["kind"] == "baseline_missing"

    own_card = copy.deepcopy(card)
    own_card.update(_id=ObjectId())
    own_card["extra_data"] = {"runner_id": str(started), "runner_type": "task"}
    own_card["_context"] = at_start
    db.findings.insert_one(own_card)
    run_chore(db, now=now, registry=registry, settings=settings)
    (billed,) = list(db.billing_ledger.find({"runner_id": str(started)}))
    assert billed["tokens"] == 700
    open_kinds = {
        a["kind"] for a in db.billing_anomalies.find({"runner_id": str(started), "resolved": False})
    }
    assert open_kinds == set()


def _recorded_subagent_and_its_card(snapshot: dict[str, Any]) -> tuple[Any, Any]:
    """The recorded subagent's document and its spawn finding (the one naming a session)."""
    card = next(
        f for f in snapshot["findings"] if (f.get("extra_data") or {}).get("subagent_session_id")
    )
    subagent = next(
        t for t in snapshot["tasks"] if str(t["_id"]) == card["extra_data"]["runner_id"]
    )
    return subagent, card


def test_a_run_task_ai_runner_whose_card_is_late_never_takes_another_turns_card(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """secator names text tool calls `textcall_{index}_{name}` (`ai/utils.py`), the index
    counted per response: `run_task` calls of two turns of one session share an id. An
    `ai/triage` runner whose card is not stored yet must wait for it, never take the card
    of another turn's `run_task("nmap")` (review of 827047d: 880 inherited tokens billed
    twice, no anomaly)."""
    from bson import ObjectId

    now = datetime.fromisoformat(MANIFEST["snapshots"][-1]["now"])
    end = now - timedelta(minutes=1)
    parent, runner = ObjectId(), ObjectId()
    session, action = str(parent), "textcall_0_run_task"

    def context(prompt: int, completion: int, **more: Any) -> dict[str, Any]:
        return {"workspace_id": "ws-acme", "ai_model": "gpt-4o-mini", "session_id": session,
                "ai_prompt_tokens": prompt, "ai_completion_tokens": completion,
                "ai_tokens": prompt + completion, **more}  # fmt: skip

    def card(content: str, names: Any, at_spawn: dict[str, Any]) -> dict[str, Any]:
        return {"_id": ObjectId(), "_type": "ai", "ai_type": "task", "content": content,
                "extra_data": {"runner_id": str(names), "runner_type": "task"},
                "_context": {**at_spawn, "task_id": session}}  # fmt: skip

    started = context(1_000, 100, tool_call_id=action, task_chunk_id=str(runner))
    earlier_turn = context(200, 20, tool_call_id=action, task_chunk_id=str(ObjectId()))
    db.tasks.insert_many([
        {"_id": parent, "name": "ai", "status": "SUCCESS", "end_time": end,
         "last_updated_db": end.timestamp(), "context": context(9_000, 900, task_id=session)},
        {"_id": runner, "name": "ai/triage", "status": "SUCCESS", "end_time": end,
         "last_updated_db": end.timestamp(),
         "context": {**started, "ai_prompt_tokens": 1_300, "ai_completion_tokens": 150,
                     "ai_tokens": 1_450}},
    ])  # fmt: skip
    db.findings.insert_one(card("nmap", ObjectId(), earlier_turn))
    run_chore(db, now=now, registry=registry, settings=settings)
    assert db.billing_ledger.count_documents({"runner_id": str(runner)}) == 0
    (held,) = list(db.billing_anomalies.find({"runner_id": str(runner)}))
    assert held["kind"] == "baseline_missing"

    db.findings.insert_one(card("ai/triage", runner, started))
    run_chore(db, now=now + timedelta(minutes=1), registry=registry, settings=settings)
    (billed,) = list(db.billing_ledger.find({"runner_id": str(runner)}))
    assert billed["tokens"] == 350
    assert db.billing_anomalies.count_documents({"runner_id": str(runner), "resolved": False}) == 0


def _run_task_ai_runner_and_chunks(
    snapshot: dict[str, Any], owns: tuple[tuple[int, int], ...]
) -> tuple[Any, Any, list[Any]]:
    """An `ai/triage` runner the recorded top-level run started with `run_task`, its card,
    and one chunk per (own prompt, own completion) in `owns`, shaped as secator 0.52.1
    writes them: the runner keyed on its own `task_chunk_id` under a `task_id` it mints
    (`ai/actions.py` `_get_result_context` strips the spawning run's, `_child_preamble`
    stamps the chunk id), its card naming it with the action's `tool_call_id` and no
    `subagent_session_id`, written over the spawning run's context (its `task_id` on top,
    `runners/_base.py` `add_result`); each chunk a copy of the runner's context under a
    new chunk id (`celery.py` `break_task`, `hooks/mongodb.py` `on_build`)."""
    import copy

    from bson import ObjectId

    spawning = next(
        t for t in snapshot["tasks"] if t["_id"] == ObjectId(RUNNERS_BY_ORG["ws-acme"]["runner_id"])
    )
    runner_id, task_id = ObjectId(), str(ObjectId())
    at_start = {
        k: v for k, v in spawning["context"].items() if k not in ("task_id", "task_chunk_id")
    }
    at_start |= {"tool_call_id": "call_run_task_7", "tool_call_name": "run_task"}
    card = {
        "_id": ObjectId(), "_type": "ai", "ai_type": "task", "content": "ai/triage",
        "extra_data": {"runner_id": str(runner_id), "runner_type": "task", "targets": ["a", "b"]},
        "_context": {**at_start, "task_chunk_id": str(runner_id),
                     "task_id": spawning["context"]["task_id"]},
    }  # fmt: skip
    runner = copy.deepcopy(spawning)
    runner.update(_id=runner_id, name="ai/triage", has_parent=True)
    runner["context"] = {**at_start, "task_id": task_id, "task_chunk_id": str(runner_id)}
    chunks = []
    for number, (own_prompt, own_completion) in enumerate(owns, start=1):
        chunk = copy.deepcopy(runner)
        chunk.update(_id=ObjectId(), chunk=number, chunk_count=len(owns))
        chunk["context"]["task_chunk_id"] = str(chunk["_id"])
        chunk["context"]["ai_prompt_tokens"] += own_prompt
        chunk["context"]["ai_completion_tokens"] += own_completion
        chunk["context"]["ai_tokens"] += own_prompt + own_completion
        chunks.append(chunk)
    return runner, card, chunks


def test_the_chunks_of_an_ai_runner_started_with_run_task_are_billed_above_its_card(
    db: Any, settings: Settings, registry: Registry
) -> None:
    """`run_task("ai/triage")` with several targets: the runner is no subagent to secator
    (no session of its own, a card naming none), so only its `task_id`, which its chunks
    copy, leads from a chunk to it and its card. Each chunk is billed its own tokens above
    the card's counters (the spawning run's, already billed on it), never held, never the
    inherited ones; the runner itself bills nothing."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    runner, card, chunks = _run_task_ai_runner_and_chunks(snapshot, ((3_000, 200), (2_500, 150)))
    db.tasks.insert_many([*snapshot["tasks"], runner, *chunks])
    db.findings.insert_many([*snapshot["findings"], card])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)

    _assert_each_chunk_billed_its_own(db, entry, registry, chunks, runner, (3_200, 2_650))
    assert db.billing_ledger.count_documents({"runner_id": str(runner["_id"])}) == 0
    assert db.billing_anomalies.count_documents({}) == 0


@pytest.mark.parametrize("late", ["its card", "the runner it is a chunk of"])
def test_a_chunk_of_a_run_task_ai_runner_waits_for_what_is_not_stored_yet(
    db: Any, settings: Settings, registry: Registry, late: str
) -> None:
    """Until both the runner and its card are stored, a chunk is held (`baseline_missing`,
    re-read every run), then billed its own tokens once."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    runner, card, (chunk,) = _run_task_ai_runner_and_chunks(snapshot, ((1_000, 100),))
    now = datetime.fromisoformat(entry["now"])
    stored_late = card if late == "its card" else runner
    db.tasks.insert_many([*snapshot["tasks"], chunk, *([] if stored_late is runner else [runner])])
    db.findings.insert_many([*snapshot["findings"], *([] if stored_late is card else [card])])
    run_chore(db, now=now, registry=registry, settings=settings)
    assert db.billing_ledger.count_documents({"runner_id": str(chunk["_id"])}) == 0
    (held,) = list(db.billing_anomalies.find({"runner_id": str(chunk["_id"])}))
    assert held["kind"] == "baseline_missing"

    (db.findings if stored_late is card else db.tasks).insert_one(stored_late)
    run_chore(db, now=now + timedelta(minutes=1), registry=registry, settings=settings)
    (billed,) = list(db.billing_ledger.find({"runner_id": str(chunk["_id"])}))
    assert billed["tokens"] == 1_100
    open_ones = db.billing_anomalies.count_documents(
        {"runner_id": str(chunk["_id"]), "resolved": False}
    )
    assert open_ones == 0


@pytest.mark.parametrize("other", ["another org's runner", "another action's card"])
def test_a_chunk_takes_no_card_but_its_runners_of_its_own_org_and_action(
    db: Any, settings: Settings, registry: Registry, other: str
) -> None:
    """A runner of another org under the same task id, or a card of another action naming
    the runner, is no baseline: the chunk stays held (SPEC §4; never billed twice)."""
    entry = MANIFEST["snapshots"][-1]
    snapshot = load_snapshot(entry)
    runner, card, (chunk,) = _run_task_ai_runner_and_chunks(snapshot, ((1_000, 100),))
    if other == "another org's runner":
        runner["context"]["workspace_id"] = card["_context"]["workspace_id"] = "ws-globex"
    else:
        card["_context"]["tool_call_id"] = "call_run_task_8"
    db.tasks.insert_many([*snapshot["tasks"], runner, chunk])
    db.findings.insert_many([*snapshot["findings"], card])
    run_chore(db, now=datetime.fromisoformat(entry["now"]), registry=registry, settings=settings)
    assert db.billing_ledger.count_documents({"runner_id": str(chunk["_id"])}) == 0
    (held,) = list(db.billing_anomalies.find({"runner_id": str(chunk["_id"])}))
    assert held["kind"] == "baseline_missing"


def recorded_model_names() -> set[str]:
    """Every model name the recorded secator documents carry: the runners' `ai_model` and
    their task's `model` and `intent_model` options and defaults (secator's own defaults,
    `config.py`: what a run without `--model` writes)."""
    names: set[str] = set()
    for entry in MANIFEST["snapshots"]:
        for doc in load_snapshot(entry)["tasks"]:
            if doc.get("name") != "ai":
                continue
            options = doc["config"]["opts"]
            names |= {options[key]["default"] for key in ("model", "intent_model")}
            names |= {doc["run_opts"].get(key) for key in ("model", "intent_model")}
            names.add(doc["context"].get("ai_model"))  # not on a first write
    return names - {None}


def test_the_shipped_registry_prices_every_model_secator_names() -> None:
    """Outside hunt: secator 0.52.1's default model, `claude-sonnet-4-6`, was not in the
    shipped registry: every run without `--model` was billed $0 and held for review. Each
    model its documents name, defaults included, is priced by the registry the chore
    ships, at a paid list price."""
    shipped = load_registry()
    names = recorded_model_names()
    assert {"claude-sonnet-4-6", "claude-haiku-4-5"} <= names
    unpriced = sorted(n for n in names if shipped.resolve(n) is None)
    assert unpriced == []
    sonnet = shipped.resolve("claude-sonnet-4-6")
    assert sonnet is not None and sonnet.tier == "paid"
    price = sonnet.price_at(datetime.fromisoformat("2026-12-02T00:00:00+00:00"))
    assert (price.input, price.cached_input, price.output) == (
        Decimal("3"), Decimal("0.3"), Decimal("15"))  # fmt: skip
