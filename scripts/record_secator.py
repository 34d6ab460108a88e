"""Record what the real secator writes to MongoDB for AI runs, for the replay tests.

Owns the recorded documents in ``tests/data/secator-<version>/``: it installs secator
(``secator[ai,mongodb]==<version>`` plus mongomock) in a venv of its own (secator pins
``packaging<25`` while celery brings 26, so it cannot share the project's environment),
then drives secator's REAL ``ai`` task offline, in that venv:

- ``litellm.completion`` is faked: every call hands out a known ``usage`` and is
  logged with the runner that made it (found on the call stack), the model that served
  it and the runner's ``context.ai_model``, which is what the runner bills it under;
- secator's MongoDB hooks (``secator.hooks.mongodb.get_mongodb_client``) get one shared
  ``mongomock`` client, so every document is written by secator's own hook code;
- ``CONFIG.runners.backend_update_frequency`` is 0, so a runner is rewritten after every
  item, as a long run is every few seconds (otherwise a run of fake calls would only be
  written at init, start and end).

Scenarios (one org each): a pinned-chat run that spawns a subagent on another model
(ws-acme), an auto-mode run whose intent-detection call is billed onto the runner under
its ``ai_model`` and that spawns a subagent (ws-globex), a run that fails after a call
(ws-initech), and a longer run paused while RUNNING while the failing run happens
(ws-umbrella). ``tasks`` and ``findings`` are snapshotted after every write that changes
an AI runner (status, counters, ``subagent`` marker) and after every spawn finding, so
the snapshots include the subagent's first write, mid-run states and the ends.

Written: ``manifest.json`` (versions, snapshots with their label, ``now`` and how many
calls of each runner its documents reflect), ``true_usage.json`` (every call the fake
LLM answered, per runner) and ``snapshots/NN.json`` (extended JSON, bson.json_util).

Usage::

    python scripts/record_secator.py [--venv /tmp/secator-0.52.1-venv]
                                     [--out tests/data/secator-0.52.1] [--version 0.52.1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VERSION = "0.52.1"

# The fake LLM's script per (org, role): each entry is one completion.
# kind "tool" answers a tool call, "text" a content-only reply, "raise" fails the call.
Step = dict[str, Any]
SCRIPTS: dict[tuple[str, str], list[Step]] = {
    ("ws-acme", "parent"): [
        {
            "tool": "run_subagent",
            "args": {
                "objective": "Check the TLS setup of acme.example and summarise",
                "targets": ["acme.example"],
                "description": "TLS review",
                "model": "anthropic/claude-haiku-4-5",
            },
            "prompt": 4_210,
            "completion": 388,
        },
        {"text": "Subagent reviewed TLS; nothing critical.", "prompt": 5_020, "completion": 241},
    ],
    ("ws-acme", "subagent"): [
        {
            "tool": "query_workspace",
            "args": {"query": {"_type": "port"}, "description": "Known ports"},
            "prompt": 2_930,
            "completion": 117,
        },
        {"text": "TLS 1.2+ only; verdict: inconclusive.", "prompt": 3_305, "completion": 402},
    ],
    ("ws-globex", "parent"): [
        # _detect_mode: served by the intent model, billed under the run's ai_model.
        {"text": "scan", "prompt": 812, "completion": 3},
        {
            "tool": "run_subagent",
            "args": {
                "objective": "Enumerate web paths on globex.example",
                "targets": ["globex.example"],
                "description": "Web paths",
                "mode": "scan",
                "model": "anthropic/claude-haiku-4-5",
            },
            "prompt": 6_140,
            "completion": 512,
        },
        {"text": "Done: see the subagent's handback.", "prompt": 7_033, "completion": 288},
    ],
    ("ws-globex", "subagent"): [
        {
            "tool": "query_workspace",
            "args": {"query": {"_type": "url"}, "description": "Known URLs"},
            "prompt": 3_620,
            "completion": 140,
        },
        {
            "tool": "query_workspace",
            "args": {"query": {"_type": "tag"}, "description": "Known tags"},
            "prompt": 4_001,
            "completion": 95,
        },
        {"text": "No extra paths; verdict: inconclusive.", "prompt": 4_480, "completion": 377},
    ],
    ("ws-initech", "parent"): [
        {
            "tool": "query_workspace",
            "args": {"query": {"_type": "vulnerability"}, "description": "Known vulns"},
            "prompt": 1_904,
            "completion": 66,
        },
        {"raise": "upstream provider returned HTTP 502"},
    ],
    ("ws-umbrella", "parent"): [
        {
            "tool": "query_workspace",
            "args": {"query": {"_type": "port"}, "description": f"Page {n}", "offset": n * 100},
            "prompt": 2_000 + 700 * n,
            "completion": 90 + 11 * n,
        }
        for n in range(4)
    ]
    + [{"text": "Summary of the four pages.", "prompt": 5_410, "completion": 633}],
}

RUNS: list[dict[str, Any]] = [
    {
        "org": "ws-acme",
        "mode": "chat",
        "model": "gpt-4o-mini",
        "target": "acme.example",
        "prompt": "Tell me about acme.example",
    },
    {
        "org": "ws-globex",
        "mode": "auto",
        "model": "anthropic/claude-sonnet-4-5",
        "intent_model": "claude-haiku-4-5",
        "target": "globex.example",
        "prompt": "Assess globex.example and decide the next step",
    },
    {
        "org": "ws-initech",
        "mode": "chat",
        "model": "gpt-4o-mini",
        "target": "initech.example",
        "prompt": "Tell me about initech.example",
    },
    {
        "org": "ws-umbrella",
        "mode": "chat",
        "model": "anthropic/claude-sonnet-4-5",
        "target": "umbrella.example",
        "prompt": "Tell me about umbrella.example",
    },
]


# --------------------------------------------------------------------------- outer


def ensure_venv(venv: Path, version: str) -> Path:
    """The venv's python, with secator[ai,mongodb]==version and mongomock installed."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('secator'))"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0 or probe.stdout.strip() != version:
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"secator[ai,mongodb]=={version}",
                "mongomock",
            ],
            check=True,
        )
    return python


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=DEFAULT_VERSION, help="secator release to record")
    parser.add_argument(
        "--venv", type=Path, help="venv for secator (default /tmp/secator-VERSION-venv)"
    )
    parser.add_argument(
        "--out", type=Path, help="output folder (default tests/data/secator-VERSION)"
    )
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = args.out or ROOT / "tests" / "data" / f"secator-{args.version}"
    if args.inner:
        record(out.resolve())
        return 0
    venv = args.venv or Path(tempfile.gettempdir()) / f"secator-{args.version}-venv"
    python = ensure_venv(venv, args.version)
    with tempfile.TemporaryDirectory(prefix="secator-home-") as home:
        log = Path(home) / "secator.log"
        env = {**os.environ, "HOME": home, "PYTHONHASHSEED": "0"}
        with log.open("w") as sink:
            done = subprocess.run(
                [
                    str(python),
                    str(Path(__file__).resolve()),
                    "--inner",
                    "--out",
                    str(out.resolve()),
                ],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            sys.stderr.write(log.read_text()[-6000:])
            return done.returncode
    print(f"recorded secator {args.version} into {out}")
    return 0


# --------------------------------------------------------------------------- inner


class Recorder:
    """The fake LLM, the write hook and the snapshots (runs inside secator's venv)."""

    def __init__(self, client: Any, ai_class: type) -> None:
        self.client = client
        self.ai_class = ai_class
        self.scripts = {key: list(steps) for key, steps in SCRIPTS.items()}
        self.calls: dict[str, list[dict[str, Any]]] = {}  # runner id -> calls
        self.runners: dict[str, dict[str, Any]] = {}  # runner id -> who
        self.persisted: dict[str, int] = {}  # runner id -> calls its document reflects
        self.seen: dict[str, tuple[Any, ...]] = {}  # runner id -> last snapshotted state
        self.snapshots: list[dict[str, Any]] = []
        self.scenario = ""
        self.paused = False

    # ---- who is calling
    def caller(self) -> Any:
        frame = sys._getframe(1)
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, self.ai_class):
                return candidate
            frame = frame.f_back
        raise RuntimeError("litellm.completion called outside an ai runner")

    @staticmethod
    def runner_id(runner: Any) -> str:
        ctx = runner.context
        return str(ctx.get("task_chunk_id") or ctx["task_id"])

    # ---- the fake LLM
    def completion(self, **kwargs: Any) -> Any:
        import litellm

        runner = self.caller()
        rid = self.runner_id(runner)
        org = runner.context["workspace_id"]
        role = "subagent" if runner.is_subagent else "parent"
        step = self.scripts[(org, role)].pop(0)
        if "raise" in step:
            raise RuntimeError(step["raise"])
        self.runners.setdefault(
            rid,
            {
                "runner_id": rid,
                "org": org,
                "role": role,
                "ai_model": runner.context.get("ai_model"),
                "parent_session_id": runner.context.get("parent_session_id"),
                "session_id": runner.context.get("session_id"),
            },
        )
        self.calls.setdefault(rid, []).append(
            {
                "served_by": kwargs["model"],
                "billed_as": runner.context.get("ai_model"),
                "prompt_tokens": step["prompt"],
                "completion_tokens": step["completion"],
                "tokens": step["prompt"] + step["completion"],
            }
        )
        message: dict[str, Any] = {"role": "assistant", "content": step.get("text")}
        if "tool" in step:
            n = sum(len(c) for c in self.calls.values())
            message["tool_calls"] = [
                {
                    "id": f"call_{n:03d}",
                    "type": "function",
                    "function": {"name": step["tool"], "arguments": json.dumps(step["args"])},
                }
            ]
        return litellm.ModelResponse(
            model=kwargs["model"],
            choices=[
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if "tool" in step else "stop",
                }
            ],
            usage={
                "prompt_tokens": step["prompt"],
                "completion_tokens": step["completion"],
                "total_tokens": step["prompt"] + step["completion"],
            },
        )

    # ---- the write hook
    def after_write(self, collection: str, op: str, doc_id: Any) -> None:
        db = self.client.main
        if collection == "tasks":
            doc = db.tasks.find_one({"_id": doc_id})
            if not doc or doc.get("name") != "ai":
                return
            rid = str(doc_id)
            self.persisted[rid] = len(self.calls.get(rid, []))
            ctx = doc.get("context") or {}
            state = (
                doc.get("status"),
                ctx.get("ai_tokens"),
                ctx.get("ai_prompt_tokens"),
                ctx.get("ai_completion_tokens"),
                "subagent" in ctx,
            )
            if self.seen.get(rid) == state:
                return
            first = rid not in self.seen
            self.seen[rid] = state
            kind = "subagent" if ctx.get("ai_subagent_depth") else "runner"
            what = "first write" if first else "write"
            marker = "" if "subagent" in ctx or kind == "runner" else ", no subagent key"
            self.snapshot(f"{ctx.get('workspace_id')} {kind} {what} ({doc.get('status')}{marker})")
        elif collection == "findings" and op == "insert":
            doc = db.findings.find_one({"_id": doc_id})
            if doc and doc.get("_type") == "ai" and doc.get("ai_type") == "task":
                org = (doc.get("_context") or {}).get("workspace_id")
                self.snapshot(f"{org} spawn finding written")

    def snapshot(self, label: str) -> None:
        from bson import json_util

        db = self.client.main
        # One document per line: {"tasks": [...], "findings": [...]}, diffable in git.
        parts = []
        for name in ("tasks", "findings"):
            docs = [json_util.dumps(doc, sort_keys=True) for doc in db[name].find().sort("_id", 1)]
            parts.append(f'"{name}": [\n' + ",\n".join(docs) + "\n]")
        body = "{" + ",\n".join(parts) + "}"
        self.snapshots.append(
            {
                "label": label,
                "now": datetime.now(UTC),
                "persisted_calls": dict(self.persisted),
                "body": body,
            }
        )


def _patch_writes(recorder: Recorder) -> None:
    """Call the recorder after every insert/update that secator's hooks make."""
    from mongomock.collection import Collection

    insert_one = Collection.insert_one
    update_one = Collection.update_one

    def patched_insert(self: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        result = insert_one(self, document, *args, **kwargs)
        recorder.after_write(self.name, "insert", result.inserted_id)
        return result

    def patched_update(self: Any, spec: Any, update: Any, *args: Any, **kwargs: Any) -> Any:
        result = update_one(self, spec, update, *args, **kwargs)
        doc_id = result.upserted_id or (spec.get("_id") if isinstance(spec, dict) else None)
        if doc_id is not None:
            recorder.after_write(self.name, "update", doc_id)
        return result

    Collection.insert_one = patched_insert  # type: ignore[method-assign]
    Collection.update_one = patched_update  # type: ignore[method-assign]


def _start(ai_class: type, run: dict[str, Any]) -> Iterator[Any]:
    opts: dict[str, Any] = {
        "prompt": run["prompt"],
        "mode": run["mode"],
        "model": run["model"],
        "interactive": "auto",
        "sync": True,
        "dangerous": True,  # no permission prompts in an unattended recording
        "print_item": False,
        "print_line": False,
    }
    if "intent_model" in run:
        opts["intent_model"] = run["intent_model"]
    runner = ai_class(
        [run["target"]],
        context={"workspace_id": run["org"], "drivers": ["mongodb"]},
        **opts,
    )
    return iter(runner)


def _drain(items: Iterator[Any], until: Callable[[], bool] | None = None) -> bool:
    """Consume a runner's items; stop early (True) once `until` holds."""
    if until is None:
        for _ in items:
            pass
        return False
    return any(until() for _ in items)


def record(out: Path) -> None:
    import importlib.metadata as metadata
    from unittest import mock

    import mongomock
    import secator.hooks.mongodb as mongodb_hooks
    from secator.config import CONFIG
    from secator.tasks.ai import ai

    client = mongomock.MongoClient(tz_aware=True)
    mongodb_hooks._mongodb_client = client  # what get_mongodb_client() hands every hook
    CONFIG.runners.backend_update_frequency = 0
    recorder = Recorder(client, ai)
    _patch_writes(recorder)
    runs = {run["org"]: run for run in RUNS}

    with mock.patch("litellm.completion", side_effect=recorder.completion):
        _drain(_start(ai, runs["ws-acme"]))
        _drain(_start(ai, runs["ws-globex"]))
        # ws-umbrella: paused while RUNNING after two billed calls; ws-initech fails meanwhile.
        umbrella = _start(ai, runs["ws-umbrella"])

        def umbrella_running() -> bool:
            ids = [rid for rid, who in recorder.runners.items() if who["org"] == "ws-umbrella"]
            return bool(ids) and recorder.persisted.get(ids[0], 0) >= 2

        assert _drain(umbrella, until=umbrella_running), "ws-umbrella ended before it was paused"
        _drain(_start(ai, runs["ws-initech"]))
        recorder.snapshot("ws-umbrella still RUNNING after ws-initech failed")
        _drain(umbrella)
    recorder.snapshot("after every run ended")
    leftovers = {key: steps for key, steps in recorder.scripts.items() if steps}
    assert not leftovers, f"scripted calls never made: {leftovers}"

    snapshots_dir = out / "snapshots"
    snapshots_dir.mkdir(parents=True, exist_ok=True)
    for old in snapshots_dir.glob("*.json"):
        old.unlink()
    manifest: list[dict[str, Any]] = []
    for index, snap in enumerate(recorder.snapshots):
        name = f"{index:02d}.json"
        (snapshots_dir / name).write_text(snap["body"] + "\n")
        manifest.append(
            {
                "file": f"snapshots/{name}",
                "label": snap["label"],
                "now": snap["now"].isoformat(),
                "persisted_calls": snap["persisted_calls"],
            }
        )
    versions = {
        pkg: metadata.version(pkg) for pkg in ("secator", "litellm", "mongomock", "pymongo")
    }
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "versions": versions,
                "recorded_at": datetime.now(UTC).isoformat(),
                "runs": RUNS,
                "backend_update_frequency": 0,
                "snapshots": manifest,
            },
            indent=1,
        )
        + "\n"
    )
    runners = [
        {**who, "calls": recorder.calls[rid]}
        for rid, who in sorted(recorder.runners.items(), key=lambda item: item[0])
    ]
    (out / "true_usage.json").write_text(json.dumps({"runners": runners}, indent=1) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
