"""Which spawn findings may hold a runner's baseline: the subagent markers secator writes
(`is_subagent_context`), the runners that may have spawned a document (`spawner_ids`), and
the pairing of a document with its spawn findings (`baseline_findings`), chunks of
subagents and of `ai` runners included (`unpaired_session`, `unpaired_task`), for a batch
of documents (`pair_spawns`, which reads through the lookups it is handed). What the
findings then say (the baseline itself) is a rule: `rules.read_spawn`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from chores.metering.fields import bson_string, is_mapping


class SpawnLookups(Protocol):
    """Where `pair_spawns` finds spawn findings and runners (`source.Source` reads them from
    the platform's collections, one query each; the benchmark from memory)."""

    def spawn_contexts(self, runner_ids: Sequence[str]) -> dict[str, list[Any]]:
        """The `_context`s of the spawn findings naming these runners, by runner id."""
        ...

    def subagent_spawns(self, sessions: Sequence[str]) -> dict[str, list[Any]]:
        """The `_context`s of the subagents' spawn findings of these sessions, by session."""
        ...

    def task_groups(self, tasks: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """The ids of the runners of each (org, `context.task_id`), by that pair."""
        ...


def pair_spawns(docs: Sequence[Mapping[str, Any]], lookups: SpawnLookups) -> list[list[Any]]:
    """For each runner document, the `_context`s of the spawn findings that may hold its
    baseline (`baseline_findings`): one lookup for the lot; one more when some subagent is
    named by none (`unpaired_session`: the chunks of a subagent, a subagent whose finding is
    not stored yet); and two more when its session has none either (`unpaired_task`: the
    chunks of an `ai` runner started with `run_task`): the runners under its task id, then
    the findings naming them.

    A document no spawn finding can name (`spawner_ids` is empty: a top-level run) is
    paired with none and looked at once; one named by a finding found is not looked for
    elsewhere.
    """
    names = [spawner_ids(doc) for doc in docs]
    found = lookups.spawn_contexts(sorted({name for its_names in names for name in its_names}))
    unpaired = [
        doc
        for doc, its_names in zip(docs, names, strict=True)
        if its_names and _unpaired(doc, found)
    ]
    sessions = {unpaired_session(doc, found) for doc in unpaired} - {None}
    by_session = lookups.subagent_spawns(sorted(s for s in sessions if s is not None))
    tasks = {unpaired_task(doc, found, by_session) for doc in unpaired} - {None}
    groups = lookups.task_groups(sorted(t for t in tasks if t is not None))
    members = {member for group in groups.values() for member in group}
    found = {**found, **lookups.spawn_contexts(sorted(members - found.keys()))}
    return [
        baseline_findings(doc, found, by_session, groups) if its_names else []
        for doc, its_names in zip(docs, names, strict=True)
    ]


def is_subagent_context(context: Mapping[str, Any]) -> bool:
    """Whether a runner's context marks it a subagent, as secator writes it (SPEC §1 fact 4).

    `subagent` holds the session name (a string), and only from the child's second
    write on; `ai_subagent_depth` (>= 1) and `parent_session_id` are there from its
    first write, which already carries the inherited counters. `has_parent` marks
    nothing (secator writes it False on subagents).

    A depth that is not a number below 1 (a string, NaN, an object) marks a subagent
    too: read as top-level, a subagent's inherited counters would be billed twice; read as
    a subagent, it is held until a spawn finding gives its baseline.

    So does a `tool_call_id` (beyond SPEC §1, from secator 0.52.1's code): secator adds the
    action's to the context of every runner an AI run's action starts (`ai/actions.py`
    `_get_result_context`), and a workflow hands its context to its steps, so an `ai`
    step of a workflow an AI run started carries it, with the run's counters, and nothing
    else says so; its spawn finding, naming the workflow, may be stored after it
    (`_run_batch`). A run a person started has none.
    """
    if context.get("subagent"):
        return True
    tool_call = context.get("tool_call_id")
    if type(tool_call) is str and tool_call:
        return True
    depth = context.get("ai_subagent_depth")
    if depth is not None and not (_is_number(depth) and depth < 1):
        return True
    parent_session = context.get("parent_session_id")
    return parent_session is not None and parent_session != ""


def spawner_ids(doc: Mapping[str, Any]) -> list[str]:
    """The runners whose spawn finding may hold this document's baseline: its own `_id`
    when it is marked a subagent, and the `workflow_id` and `scan_id` of its context.

    An `ai` step of a workflow (or scan) that an AI run spawned starts from a copy of that
    run's context, counters included, and the spawn finding names the workflow (or scan),
    never the step; the step carries the subagent markers only when the spawning run was a
    subagent itself (secator 0.52.1: `ai/actions.py` `_get_result_context` and
    `_child_preamble`, `runners/workflow.py`). A workflow no AI run spawned has no spawn
    finding: its steps are top-level runs.
    """
    context = doc.get("context")
    if not is_mapping(context):
        return []
    ids = [str(doc.get("_id"))] if is_subagent_context(context) else []
    for started_by in (context.get("workflow_id"), context.get("scan_id")):
        if type(started_by) is str and started_by:
            ids.append(started_by)
    return ids


def baseline_findings(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]] | None = None,
    task_groups: Mapping[tuple[str, str], Sequence[str]] | None = None,
) -> list[Any]:
    """Of the spawn findings `found` (their `_context`s by the runner id they name), and of
    the subagents' spawn findings `by_session` (by their `extra_data.subagent_session_id`,
    `unpaired_session`), those that may hold this document's baseline. `task_groups`
    names, by (org, `context.task_id`), the runners of that org sharing that task id
    (`unpaired_task`); the findings naming them are in `found`.

    - The findings naming the document itself, when one of them is of its own org: a
      subagent's own.
    - Else those, and the findings naming the workflow or scan that started it written at
      its own subagent depth (`ai_subagent_depth`, 0 when absent): a workflow's steps run at
      the depth of the run that spawned the workflow, whose context the spawn finding
      carries. A subagent that one of those steps spawned is one deeper, and secator strips
      the workflow's id from its context; should a copy keep it, the workflow's finding is
      not its baseline, and it waits for its own (SPEC §1 fact 4). A finding of another org
      naming the document changes nothing (`rules.read_spawn` ignores it, SPEC §4).
    - Else, for a subagent no workflow or scan started, those and the spawn findings written
      for its own action (`tool_call_id`) of its session (`unpaired_session`) or, when its
      session has none, naming another runner of its org under its `context.task_id`
      (`unpaired_task`): a chunk of a subagent, or of a runner an AI action started. A
      runner the subagent started itself (`run_task`) shares the session under an action
      of its own, and waits for its own finding.
    """
    context = doc.get("context")
    if not is_mapping(context):
        return []
    names = spawner_ids(doc)
    if not names:
        return []  # a top-level run: no spawn finding is its baseline
    own_id = str(doc.get("_id"))
    naming_it = list(found.get(own_id, [])) if own_id in names else []
    org = bson_string(context.get("workspace_id"))
    if org is not None and own_org_spawns(naming_it, org):
        return naming_it
    started_by = [name for name in names if name != own_id]
    if not started_by:
        session_cards = _cards_of_its_session(doc, found, by_session or {})
        if session_cards:
            return naming_it + session_cards
        group = unpaired_task(doc, found, by_session or {})
        members = (task_groups or {}).get(group, []) if group is not None else []
        return naming_it + _of_its_action(
            context,
            [spawn for member in members if member != own_id for spawn in found.get(member, [])],
        )
    depth = subagent_depth(context)
    return naming_it + [
        spawn
        for name in started_by
        for spawn in found.get(name, [])
        if not is_mapping(spawn) or subagent_depth(spawn) == depth
    ]


def _of_its_action(context: Mapping[str, Any], spawns: Sequence[Any]) -> list[Any]:
    """The spawn findings written for the runner's own action (its `tool_call_id`); none
    when it has no action."""
    action = bson_string(context.get("tool_call_id"))
    if not action:
        return []
    return [s for s in spawns if not is_mapping(s) or s.get("tool_call_id") == action]


def _cards_of_its_session(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]],
) -> list[Any]:
    """The spawn findings of an unpaired subagent's session written for its own action."""
    session = unpaired_session(doc, found)
    context = doc.get("context")
    if not session or not is_mapping(context):
        return []
    return _of_its_action(context, by_session.get(session, []))


def unpaired_session(doc: Mapping[str, Any], found: Mapping[str, Sequence[Any]]) -> str | None:
    """The session of a subagent that no spawn finding of its org in `found` names and no
    workflow or scan started: where its baseline may still be found, else None.

    secator splits a subagent with several targets into chunks (`celery.py` `break_task`:
    one per target outside a worker, per 100 in one), each a copy of its context, counters
    and markers included, under a new `task_chunk_id`: its own document, named by no spawn
    finding. They keep the subagent's own session id, which its spawn finding names as
    `extra_data.subagent_session_id` (`ai/actions.py`), and its `tool_call_id`, which the
    finding's card carries (`baseline_findings` takes only a card of the same action). A
    chunk's `parent_id` is then the subagent it is a chunk of (the id the card names).
    """
    if not _unpaired(doc, found):
        return None
    session = bson_string(doc["context"].get("session_id"))
    return session or None


def unpaired_task(
    doc: Mapping[str, Any],
    found: Mapping[str, Sequence[Any]],
    by_session: Mapping[str, Sequence[Any]],
) -> tuple[str, str] | None:
    """(org, `context.task_id`) of a subagent that no spawn finding of its org names, no
    workflow or scan started, and no finding of its session (`by_session`) pairs: the
    runners of that org sharing that task id may be the one it is a chunk of. Else None.

    A runner an AI action starts is keyed on a `task_chunk_id` of its own, under a
    `task_id` it mints (secator 0.52.1: `ai/actions.py` `_get_result_context` strips the
    parent's, `_child_preamble` stamps the chunk id, `runners/_base.py` mints the task id).
    Its chunks (`celery.py` `break_task`) copy its context, `task_id` and `tool_call_id`
    included, under new chunk ids; the action's card names the runner they are chunks of.
    An `ai` runner started with `run_task("ai/<variant>")` is such a runner: no subagent
    to secator, its card names no session (`unpaired_session` finds nothing), only its
    task id leads from a chunk to it. A document keyed on its own task id (a top-level
    run) has no such group.
    """
    if not _unpaired(doc, found) or _cards_of_its_session(doc, found, by_session):
        return None
    context = doc["context"]
    org, task = bson_string(context.get("workspace_id")), bson_string(context.get("task_id"))
    if not org or not task or task == str(doc.get("_id")):
        return None
    return org, task


def _unpaired(doc: Mapping[str, Any], found: Mapping[str, Sequence[Any]]) -> bool:
    """A subagent that no workflow or scan started and no spawn finding of its org in
    `found` names."""
    context = doc.get("context")
    if not is_mapping(context) or not is_subagent_context(context):
        return False
    if [name for name in spawner_ids(doc) if name != str(doc.get("_id"))]:
        return False  # a workflow's or scan's step: its baseline is the workflow's finding
    org = bson_string(context.get("workspace_id"))
    return org is None or not own_org_spawns(found.get(str(doc.get("_id")), []), org)


def subagent_depth(context: Mapping[str, Any]) -> Any:
    """`ai_subagent_depth` as written, 0 when absent (as secator reads it); a NaN as the
    text "NaN", equal to itself, as the copy of one is."""
    depth = context.get("ai_subagent_depth") or 0
    return "NaN" if isinstance(depth, float) and math.isnan(depth) else depth


def _is_number(value: Any) -> bool:
    """An int (an `Int64` too) or a float, not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def own_org_spawns(spawn_contexts: Sequence[Any], org: str) -> list[Mapping[str, Any]]:
    """The spawn findings' `_context`s written in `org` (compared exactly)."""
    return [c for c in spawn_contexts if is_mapping(c) and c.get("workspace_id") == org]
