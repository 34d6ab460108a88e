"""`lineage.pair_spawns` pairs a batch of runners with their spawn findings as the plain
reading of its passes would: every document through every pass, each lookup asked the same.
It skips what cannot change the answer (a top-level run after the first pass, a runner whose
own finding was found in the session and task passes); this checks the skipping changes
nothing, on batches that mix secator's markers, odd ids and findings of other orgs."""

from __future__ import annotations

from typing import Any

from bson import ObjectId
from hypothesis import given, settings
from hypothesis import strategies as st

from chores.metering.lineage import (
    baseline_findings,
    pair_spawns,
    spawner_ids,
    unpaired_session,
    unpaired_task,
)

IDS = ["65f000000000000000000001", "65f000000000000000000002", "wf-1", "scan-1", "t-1"]
ORGS = ["acme", "globex"]


def every_pass(docs: list[dict[str, Any]], lookups: Any) -> list[list[Any]]:
    """The reference: each pass over every document, as `Source.spawns_of` read before."""
    found = lookups.spawn_contexts(sorted({i for doc in docs for i in spawner_ids(doc)}))
    sessions = {unpaired_session(doc, found) for doc in docs} - {None}
    by_session = lookups.subagent_spawns(sorted(s for s in sessions if s is not None))
    tasks = {unpaired_task(doc, found, by_session) for doc in docs} - {None}
    groups = lookups.task_groups(sorted(t for t in tasks if t is not None))
    members = {member for group in groups.values() for member in group}
    found = {**found, **lookups.spawn_contexts(sorted(members - found.keys()))}
    return [baseline_findings(doc, found, by_session, groups) for doc in docs]


class Lookups:
    """What the collections hold, answered as `Source` answers; every question recorded."""

    def __init__(self, docs: list[dict[str, Any]], by_runner: dict, by_session: dict) -> None:
        self.docs, self.by_runner, self.by_session = docs, by_runner, by_session
        self.asked: list[tuple[str, list[Any]]] = []

    def spawn_contexts(self, runner_ids: Any) -> dict[str, list[Any]]:
        self.asked.append(("spawn_contexts", list(runner_ids)))
        return {r: self.by_runner[r] for r in runner_ids if r in self.by_runner}

    def subagent_spawns(self, sessions: Any) -> dict[str, list[Any]]:
        self.asked.append(("subagent_spawns", list(sessions)))
        return {s: self.by_session[s] for s in sessions if s in self.by_session}

    def task_groups(self, tasks: Any) -> dict[tuple[str, str], list[str]]:
        self.asked.append(("task_groups", list(tasks)))
        groups: dict[tuple[str, str], list[str]] = {}
        for doc in self.docs:
            context = doc.get("context")
            if isinstance(context, dict):
                pair = (context.get("workspace_id"), context.get("task_id"))
                if pair in set(tasks):
                    groups.setdefault(pair, []).append(str(doc.get("_id")))  # type: ignore[arg-type]
        return groups


def optional(key: str, values: Any) -> Any:
    return st.one_of(st.just({}), values.map(lambda v: {key: v}))


contexts = st.builds(
    lambda *parts: {k: v for part in parts for k, v in part.items()},
    optional("workspace_id", st.sampled_from([*ORGS, "", None, 3])),
    optional("subagent", st.sampled_from(["scan the web tier", "", None, 1])),
    optional("ai_subagent_depth", st.sampled_from([0, 1, 2, "1", float("nan"), None])),
    optional("parent_session_id", st.sampled_from(["sess-0", ""])),
    optional("tool_call_id", st.sampled_from(["call-1", "call-2", ""])),
    optional("session_id", st.sampled_from(["sess-1", "sess-2", 5])),
    optional("workflow_id", st.sampled_from(["wf-1", "", IDS[0]])),
    optional("scan_id", st.sampled_from(["scan-1", ""])),
    optional("task_id", st.sampled_from(["t-1", IDS[1], 4])),
    optional("ai_tokens", st.sampled_from([0, 100, 2000])),
)
runner_ids = st.sampled_from([ObjectId(IDS[0]), ObjectId(IDS[1]), IDS[2], "t-1", 7, 1.5])
documents = st.builds(
    lambda _id, context: {"_id": _id, "context": context},
    runner_ids,
    st.one_of(contexts, contexts, contexts, st.sampled_from([None, [], "x"])),
)
findings = st.lists(st.one_of(contexts, st.sampled_from([None, "junk"])), min_size=1, max_size=2)


@settings(max_examples=400, deadline=None, database=None)
@given(
    docs=st.lists(documents, min_size=1, max_size=8),
    by_runner=st.dictionaries(st.sampled_from([*IDS, "7"]), findings, max_size=4),
    by_session=st.dictionaries(st.sampled_from(["sess-1", "sess-2"]), findings, max_size=2),
)
def test_pairing_a_batch_skips_only_what_cannot_change_the_answer(docs, by_runner, by_session):
    ours, reference = Lookups(docs, by_runner, by_session), Lookups(docs, by_runner, by_session)
    assert pair_spawns(docs, ours) == every_pass(docs, reference)
    assert ours.asked == reference.asked
