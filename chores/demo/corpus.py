"""Realistic runner documents in the platform's shape, with the usage they really represent.

Used by the demo, the tests and the benchmarks. `generate_corpus` writes what
secator would: top-level AI runs, subagents and grandchildren whose counters
start at their parent's (with the spawn findings), non-AI children and ordinary
findings carrying copied counters, running tasks, free / customer-key / unknown
models, runners without a split, and malformed documents. Beside the documents
it returns the *truth*: each AI runner's own usage, known by construction, so a
test can price it independently of the metering code.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId

DEFAULT_MODELS: tuple[tuple[str, str], ...] = (
    # (model name as the runner writes it, key source)
    ("gpt-4o-mini", "platform"),
    ("gpt-4o-mini", "platform"),
    ("anthropic/claude-sonnet-4-5", "platform"),
    ("gpt-4o", "platform"),
    ("openai/gpt-4.1-mini", "platform"),
    ("gemini-2.5-flash", "platform"),
    ("ollama/llama3.1", "platform"),
    ("gpt-4o", "byok"),
    ("mystery-model-9000", "platform"),
)


@dataclass(frozen=True, slots=True)
class OwnUsage:
    """What one AI runner really consumed by itself (input excludes cached)."""

    runner_id: str
    org: str
    model: str
    byok: bool
    prompt: int
    completion: int
    cached: int
    unsplit: int
    end_time: datetime | None  # None while running: usage time is the observation time

    @property
    def input(self) -> int:
        return self.prompt - self.cached

    @property
    def tokens(self) -> int:
        return self.prompt + self.completion + self.unsplit


@dataclass
class Corpus:
    tasks: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    truth: list[OwnUsage] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    baselines: dict[Any, dict[str, int]] = field(default_factory=dict)

    def at(self, fraction: float) -> list[dict[str, Any]]:
        """The task documents as they looked when each runner had done `fraction` of its
        own work (counters partly grown, not yet finished). 1.0 gives `tasks`."""
        if fraction >= 1:
            return [dict(t) for t in self.tasks]
        return [_partial(t, fraction, self.baselines.get(t["_id"], {})) for t in self.tasks]


def _partial(task: dict[str, Any], fraction: float, base: dict[str, int]) -> dict[str, Any]:
    grown = dict(task)
    context = dict(task["context"])
    for key in ("ai_tokens", "ai_prompt_tokens", "ai_completion_tokens", "ai_cached_tokens"):
        value = context.get(key)
        # Only valid counters grow: a malformed one (negative, bool, str, float) stays as it is.
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            start = base.get(key, 0)
            context[key] = start + int((value - start) * fraction)
    grown["context"] = context
    # Not yet finished: every ended AI runner (REVOKED too) is still running.
    if task.get("name") == "ai" and task.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
        grown["status"] = "RUNNING"
        grown.pop("end_time", None)
    return grown


def generate_corpus(
    *,
    seed: int,
    orgs: Sequence[str] = ("acme", "globex", "initech"),
    runs_per_org: int = 20,
    start: datetime,
    days: int = 28,
    models: Sequence[tuple[str, str]] = DEFAULT_MODELS,
    running_share: float = 0.05,
    malformed_share: float = 0.03,
) -> Corpus:
    """A month (by default) of runner documents for `orgs`, reproducible from `seed`."""
    rng = random.Random(seed)
    corpus = Corpus()
    for org in orgs:
        for _ in range(runs_per_org):
            began = start + timedelta(seconds=rng.randrange(days * 86400))
            model, key_source = rng.choice(models)
            running = rng.random() < running_share
            _add_run(
                corpus,
                rng,
                org=org,
                model=model,
                key_source=key_source,
                began=began,
                running=running,
                parent=None,
                depth=0,
            )
            if rng.random() < malformed_share:
                bad = _malformed(rng, org, began)
                corpus.tasks.append(bad)
                corpus.malformed.append(str(bad["_id"]))
    return corpus


def _object_id(rng: random.Random) -> ObjectId:
    """Ids drawn from the seed, so the same seed gives the same documents."""
    return ObjectId(rng.randbytes(12))


def _usage(rng: random.Random) -> tuple[int, int, int, int]:
    prompt = rng.randrange(500, 60_000)
    completion = rng.randrange(100, prompt // 2 + 200)
    cached = rng.randrange(0, prompt) if rng.random() < 0.3 else 0
    unsplit = rng.randrange(0, 3_000) if rng.random() < 0.1 else 0
    return prompt, completion, cached, unsplit


def _context(
    org: str, session: str, model: str, key_source: str, counters: dict[str, int]
) -> dict[str, Any]:
    context: dict[str, Any] = {
        "workspace_id": org,
        "workspace_name": org.upper(),
        "drivers": ["mongodb"],
        "session_id": session,
        "ai_model": model,
        **counters,
    }
    if key_source != "platform":
        context["ai_key_source"] = key_source
    return context


def _counters(prompt: int, completion: int, cached: int, unsplit: int) -> dict[str, int]:
    counters = {
        "ai_tokens": prompt + completion + unsplit,
        "ai_prompt_tokens": prompt,
        "ai_completion_tokens": completion,
    }
    if cached:
        counters["ai_cached_tokens"] = cached
    return counters


def _add_run(
    corpus: Corpus,
    rng: random.Random,
    *,
    org: str,
    model: str,
    key_source: str,
    began: datetime,
    running: bool,
    parent: dict[str, int] | None,
    parent_session: str | None = None,
    depth: int,
) -> None:
    runner_id = _object_id(rng)
    session = f"sess-{org}-{began:%m%d%H}"
    prompt, completion, cached, unsplit = _usage(rng)
    baseline = parent or {}
    own = _counters(prompt, completion, cached, unsplit)
    total = {
        k: baseline.get(k, 0) + own.get(k, 0)
        for k in ("ai_tokens", "ai_prompt_tokens", "ai_completion_tokens", "ai_cached_tokens")
    }
    if not total["ai_cached_tokens"]:
        total.pop("ai_cached_tokens")
    no_split = depth == 0 and rng.random() < 0.05
    if no_split:  # an older runner: only the total is recorded
        prompt, completion, cached, unsplit = 0, 0, 0, prompt + completion + unsplit
        total = {"ai_tokens": unsplit}
    ended = began + timedelta(minutes=rng.randrange(2, 90))
    context = _context(org, session, model, key_source, total)
    context["task_id"] = str(runner_id)
    corpus.baselines[runner_id] = baseline
    if parent is not None:
        # As secator writes a subagent: depth and parent session from the first write on,
        # `subagent` (the session name) only once its inner task started.
        context.update(ai_subagent_depth=depth, parent_session_id=parent_session)
        if not running:
            context["subagent"] = f"subagent of {parent_session}"
    task: dict[str, Any] = {
        "_id": runner_id,
        "name": "ai",
        "config": {"type": "task", "name": "ai"},
        "status": "RUNNING" if running else rng.choice(["SUCCESS"] * 8 + ["FAILURE", "REVOKED"]),
        "start_time": began,
        "context": context,
        "has_parent": False,  # secator writes it False on subagents too
        "last_updated_db": (ended if not running else began).timestamp(),
    }
    if not running:
        task["end_time"] = ended
    corpus.tasks.append(task)
    corpus.truth.append(
        OwnUsage(
            runner_id=str(runner_id),
            org=org,
            model=model,
            byok=key_source == "byok",
            prompt=prompt,
            completion=completion,
            cached=min(cached, prompt),
            unsplit=unsplit,
            end_time=None if running else ended,
        )
    )
    # Non-AI children and ordinary findings carry a copy of the counters: never usage.
    for tool in rng.sample(["nmap", "httpx", "nuclei", "command"], k=rng.randrange(0, 3)):
        child = {
            "_id": _object_id(rng),
            "name": tool,
            "config": {"type": "task", "name": tool},
            "status": "SUCCESS",
            "start_time": began,
            "end_time": ended,
            "context": {**_context(org, session, model, key_source, total), "has_parent": True},
            "has_parent": True,
            "last_updated_db": ended.timestamp(),
        }
        corpus.tasks.append(child)
        corpus.findings.append(
            {
                "_id": _object_id(rng),
                "_type": "port",
                "port": 443,
                "_context": _context(org, session, model, key_source, total),
            }
        )
    # Subagents start from this runner's counters at spawn time.
    if depth < 2 and not no_split and rng.random() < 0.35:
        for _ in range(rng.randrange(1, 3)):
            share = rng.random()
            at_spawn = {
                k: baseline.get(k, 0) + int((v - baseline.get(k, 0)) * share)
                for k, v in total.items()
            }
            child_running = running and rng.random() < 0.5
            corpus_len = len(corpus.tasks)
            _add_run(
                corpus,
                rng,
                org=org,
                model=model
                if rng.random() < 0.7
                else rng.choice(["gpt-4o-mini", "anthropic/claude-sonnet-4-5"]),
                key_source=key_source,
                began=began + timedelta(minutes=1),
                running=child_running,
                parent=at_spawn,
                parent_session=session,
                depth=depth + 1,
            )
            child_id = corpus.tasks[corpus_len]["_id"]
            corpus.findings.append(
                {
                    "_id": _object_id(rng),
                    "_type": "ai",
                    "ai_type": "task",
                    "content": "ai",
                    "extra_data": {"runner_id": str(child_id), "runner_type": "task"},
                    "_context": {
                        **_context(org, session, model, key_source, at_spawn),
                        "task_id": str(runner_id),  # the spawning runner
                    },
                }
            )


def _malformed(rng: random.Random, org: str, began: datetime) -> dict[str, Any]:
    bad: dict[str, Any] = rng.choice(
        [
            {"ai_tokens": "1200"},
            {"ai_prompt_tokens": True},
            {"ai_completion_tokens": -5},
            {"ai_tokens": float("nan")},
            {"ai_tokens": 12.5},
        ]
    )
    runner_id = _object_id(rng)
    return {
        "_id": runner_id,
        "name": "ai",
        "status": "SUCCESS",
        "start_time": began,
        "end_time": began + timedelta(minutes=5),
        "last_updated_db": began.timestamp(),
        "context": {
            "workspace_id": org,
            "ai_model": "gpt-4o-mini",
            "ai_tokens": 1000,
            "ai_prompt_tokens": 800,
            "ai_completion_tokens": 200,
            **bad,
        },
    }
