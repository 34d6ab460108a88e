"""Batched, read-only access to the platform's runner documents and spawn findings.

Which runner documents a run reads:

1. *changed*: AI runners whose `last_updated_db` is at or after the scope's cursor
   minus a lookback window, plus those whose stamp is missing or not a number
   (first writes carry none); `full=True` reads every AI runner;
2. *pending*: runners the chore last saw running or waiting for their spawn
   finding, re-read by `_id` whatever their stamp says (once an hour when idle:
   `progress.IDLE_RECHECK`). This is what catches a run's final write, whose stamp
   lags one write behind and can be older than the cursor.

Every query is a constant number of round trips per batch; values from the
source (org ids, runner ids) are only ever used under `$eq`/`$in`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bson import ObjectId

from chores.core.db import SPAWNED_RUNNER_TYPES, Collections, Doc
from chores.core.orgs import MAX_ORG
from chores.metering.lineage import pair_spawns

# Whole `context`s are projected, not their `ai_*` sub-fields: mongomock crashes
# projecting sub-fields of an array that holds non-documents, and a hostile
# runner can write exactly that.
RUNNER_PROJECTION = {
    "_id": 1,
    "name": 1,
    "status": 1,
    "start_time": 1,  # a held runner without another time (`pipeline.Batch.lets_go`)
    "end_time": 1,
    "last_updated_db": 1,
    "context": 1,
}
SPAWN_PROJECTION = {"extra_data": 1, "_context": 1}
# An org id as the server matches it: a string of at least one character (any) and not of
# MAX_ORG + 1. No `$` anchor: it also matches before a final newline, and MAX_ORG
# characters and a newline would pass for an org.
A_CHARACTER = "^[\\s\\S]"
TOO_LONG = f"^[\\s\\S]{{{MAX_ORG + 1}}}"
ORG_ID = {"$type": "string", "$regex": A_CHARACTER, "$not": {"$regex": TOO_LONG}}
LOWEST_STAMP = -sys.float_info.max  # every finite stamp is at least this; NaN is not


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class Source:
    """Reads runners and spawn findings; never writes."""

    def __init__(self, collections: Collections, *, ai_task_names: Sequence[str], batch_size: int):
        self._tasks = collections.tasks
        self._findings = collections.findings
        # A name, or a variant of it (`ai/triage`): secator keeps a workflow node's
        # `task/variant` key as the step's name (`tree.py`, `runners/workflow.py`), its class
        # stripped of the variant. An anchored prefix keeps the name index usable.
        variants = [re.compile(f"^{re.escape(name)}/") for name in ai_task_names]
        self._names: list[Any] = [*ai_task_names, *variants]
        self._batch_size = batch_size

    def _scope(self, org: str | None) -> Doc:
        query: Doc = {"name": {"$in": self._names}}
        if org is not None:
            query["context.workspace_id"] = {"$eq": org}
        return query

    def _changed(self, org: str | None, since: float | None) -> Doc:
        """AI runners stamped at or after `since`, or without a numeric stamp (every one
        when `since` is None): the one definition of a changed runner."""
        query = self._scope(org)
        if since is not None:
            query["$or"] = [
                {"last_updated_db": {"$gte": since}},
                # missing, null, not a number, NaN or -inf: no stamp to order it by
                {"last_updated_db": {"$not": {"$gte": LOWEST_STAMP}}},
            ]
        return query

    def changed_runners(self, org: str | None, since: float | None) -> Iterator[Doc]:
        """AI runners changed since the stamp `since` (every one when None), streamed in
        stamp order (documents without a numeric stamp first), so that a caller can keep
        a cursor after every batch.

        The order is a blocking sort on the server (the name index has no `_id`, and the
        names are several ranges), over every AI runner on a full pass: allowed to spill
        to disk, which servers before 6.0 refuse past 100 MB unless asked."""
        yield from self._tasks.find(
            self._changed(org, since),
            RUNNER_PROJECTION,
            sort=[("last_updated_db", 1), ("_id", 1)],
            batch_size=self._batch_size,
            allow_disk_use=True,
        )

    def orgs_changed(self, since: float | None) -> list[Any]:
        """The org ids of the AI runners changed since `since` (raw: the caller validates).

        Grouped, not `distinct`: distinct answers in one document of at most 16 MB, which
        a few huge workspace ids would overflow, stopping every fan-out. Only strings of
        1 to MAX_ORG characters are grouped: a longer one is no org (`no_org`), and the
        server neither groups nor sends it.
        """
        changed = {"$and": [self._changed(None, since), {"context.workspace_id": ORG_ID}]}
        pipeline = [{"$match": changed}, {"$group": {"_id": "$context.workspace_id"}}]
        return [group["_id"] for group in self._tasks.aggregate(pipeline, allowDiskUse=True)]

    def orgless_runners(
        self, since: float | None, *, besides_orgs: Sequence[str] | None = None
    ) -> Iterator[Doc]:
        """AI runners changed since `since` (every one when None) whose document holds no
        org id: no workspace_id, or one that is not a string of 1 to MAX_ORG characters,
        or one inside an array (SPEC §7), or no `context` document at all. No org's run
        reads them (`tasks.meter_all` records their anomaly `no_org`).

        A string of 1 to MAX_ORG characters that is not UTF-8 is no org to the rules
        either, but no query can name its bytes: given `besides_orgs` (the orgs the
        fan-out listed, when one of the ids it grouped was not UTF-8), every runner whose
        string id is none of them is read too, and the caller keeps those of no org."""
        other_ids: list[Doc] = []
        if besides_orgs is not None:
            other_ids = [{"context.workspace_id": {"$type": "string", "$nin": list(besides_orgs)}}]
        no_org_id = {
            "$or": [
                *other_ids,
                {"context.workspace_id": {"$not": {"$type": "string"}}},
                {"context.workspace_id": {"$not": {"$regex": A_CHARACTER}}},
                {"context.workspace_id": {"$regex": TOO_LONG}},
                {"context.workspace_id": {"$type": "array"}},
                {"context": {"$type": "array"}},
                {"context": {"$not": {"$type": "object"}}},
            ]
        }
        yield from self._tasks.find(
            {"$and": [self._changed(None, since), no_org_id]},
            RUNNER_PROJECTION,
            batch_size=self._batch_size,
        )

    def newest_stamp(self, *, since: float | None, horizon: float) -> float | None:
        """The newest plausible stamp of an AI runner changed since `since`: one past
        `horizon` is garbage and must not push a cursor past real writes."""
        stamped: Doc = {"$type": "number", "$lte": horizon}
        if since is not None:
            stamped["$gte"] = since
        newest = self._tasks.find_one(
            {**self._scope(None), "last_updated_db": stamped},
            {"last_updated_db": 1},
            sort=[("last_updated_db", -1)],
        )
        return None if newest is None else stamp_of(newest)

    def runners_by_id(self, source_ids: Sequence[Any], org: str | None) -> list[Doc]:
        """The AI runners with these `_id`s (one query; the caller batches)."""
        query = self._scope(org)
        query["_id"] = {"$in": list(source_ids)}
        # One batch for the lot (the server's default first batch is 101 documents).
        return list(self._tasks.find(query, RUNNER_PROJECTION, batch_size=len(source_ids)))

    def spawn_contexts(self, runner_ids: Sequence[str]) -> dict[str, list[Any]]:
        """The `_context` of every spawn finding naming these runners, by runner id.

        `extra_data.runner_id` is a string in the platform's documents; the
        ObjectId form is matched as well, in the same query. Every finding naming a
        runner is returned, whatever org wrote it: which of them may be a baseline (only
        the subagent's own org's) is a metering rule, `rules.read_spawn`.
        """
        if not runner_ids:
            return {}
        wanted: list[Any] = list(runner_ids)
        wanted += [ObjectId(r) for r in runner_ids if ObjectId.is_valid(r)]
        query = {
            "_type": "ai",
            "ai_type": {"$in": list(SPAWNED_RUNNER_TYPES)},
            "extra_data.runner_id": {"$in": wanted},
        }
        found: dict[str, list[Any]] = {}
        # Usually one spawn finding per subagent: one batch for the lot, not 101 + the rest.
        for finding in self._findings.find(query, SPAWN_PROJECTION, batch_size=len(wanted)):
            extra = finding.get("extra_data")
            if not isinstance(extra, Mapping):
                continue
            found.setdefault(str(extra.get("runner_id")), []).append(finding.get("_context"))
        return found

    def spawns_of(self, docs: Sequence[Doc]) -> list[list[Any]]:
        """For each runner document, the `_context`s of the spawn findings that may hold
        its baseline (`lineage.pair_spawns`): one query for the lot, and up to three more
        for subagents no finding names (the lookups below)."""
        return pair_spawns(docs, self)

    def task_groups(self, tasks: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        """The ids of the AI runners of each (org, `context.task_id`), by that pair: one
        query, none for none. A runner of another org under the same task id is no member."""
        if not tasks:
            return {}
        query = self._scope(None)
        query["context.workspace_id"] = {"$in": sorted({org for org, _ in tasks})}
        query["context.task_id"] = {"$in": sorted({task for _, task in tasks})}
        wanted = set(tasks)
        groups: dict[tuple[str, str], list[str]] = {}
        # Whole contexts, as RUNNER_PROJECTION (mongomock cannot project into odd arrays).
        for doc in self._tasks.find(query, {"_id": 1, "context": 1}):
            context = doc.get("context")
            if not isinstance(context, Mapping):
                continue  # an array of contexts matches the query: no member
            org, task = context.get("workspace_id"), context.get("task_id")
            if type(org) is str and type(task) is str and (org, task) in wanted:
                groups.setdefault((org, task), []).append(str(doc.get("_id")))
        return groups

    def subagent_spawns(self, sessions: Sequence[str]) -> dict[str, list[Any]]:
        """The `_context` of every subagent's spawn finding of these sessions
        (`extra_data.subagent_session_id`), by session; no query for none."""
        if not sessions:
            return {}
        query = {
            "_type": "ai",
            "ai_type": "task",
            "extra_data.subagent_session_id": {"$in": list(sessions)},
        }
        found: dict[str, list[Any]] = {}
        for finding in self._findings.find(query, SPAWN_PROJECTION, batch_size=len(sessions)):
            extra = finding.get("extra_data")
            if isinstance(extra, Mapping):
                session = str(extra.get("subagent_session_id"))
                found.setdefault(session, []).append(finding.get("_context"))
        return found


def stamp_of(doc: Mapping[str, Any]) -> float | None:
    """A runner's `last_updated_db` as a number, or None when it is not one (a bool, NaN,
    a string: the platform's stamp is a float of seconds)."""
    value = doc.get("last_updated_db")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value else None
