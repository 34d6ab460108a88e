"""Shared pieces of the benchmarks: the snapshot stream, the pure metering pipeline, LiteLLM.

Nothing here is imported by the package or by the tests: the benchmarks are run by hand
(see benchmarks/README.md).

- `snapshot_chunks` streams runner snapshots as the source query would return them (AI
  runners only), chunk by chunk, from `chores.demo.corpus.generate_corpus`: subagents with their
  spawn baselines, several models, byok, free and unknown models, runners without a split,
  malformed documents, and a share of runners observed twice (once half-way while running,
  once finished) so that the second observation has a ledger head.
- `new_meter` is the package's metering core with no I/O
  (`chores.metering.memory_meter.MemoryMeter`):
  `assess` per document, deltas summed by (org, period, model, byok, day), then
  `price_lines` per invoice.
- `litellm_map` loads LiteLLM's bundled price map offline, and `litellm_registry` converts
  that same map with `pricing.registry_from_litellm`, so both sides price with one set of rates.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from chores.demo.corpus import generate_corpus
from chores.metering.lineage import baseline_findings
from chores.metering.memory_meter import MemoryMeter
from chores.metering.source import SPAWNED_RUNNER_TYPES
from pricing import Registry, not_imported_keys, registry_from_litellm, zero_priced_keys

START = datetime(2026, 10, 1, tzinfo=UTC)  # usage month of the synthetic records
NOW = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)  # the observation time of the run
PRICES_VALID_FROM = date(2020, 1, 1)  # before every record
MAX_TOKENS_PER_RUN = 1_000_000_000
FUTURE_SKEW_SECONDS = 300.0  # Settings.future_skew_seconds' default

Observation = tuple[dict[str, Any], list[Any]]  # (runner document, spawn findings' _context)


def spawns_of(doc: Any, spawns: dict[str, list[Any]]) -> list[Any]:
    """The spawn findings' `_context`s of a runner document, as `Source.spawns_of` pairs."""
    return baseline_findings(doc, spawns)


def org_names(count: int) -> list[str]:
    return [f"org-{n:04d}" for n in range(count)]


def snapshot_chunks(
    total: int,
    *,
    seed: int = 20261030,
    orgs: int = 500,
    orgs_per_chunk: int = 10,
    runs_per_org: int = 400,
    repeat_share: float = 0.25,
) -> Iterator[list[Observation]]:
    """`total` AI runner snapshots, in chunks of a few thousand; never more than one chunk
    in memory. Deterministic in everything but the ObjectIds."""
    rng = random.Random(seed)
    names = org_names(orgs)
    emitted = 0
    chunk_no = 0
    while emitted < total:
        first = (chunk_no * orgs_per_chunk) % orgs
        chunk_orgs = [names[(first + n) % orgs] for n in range(orgs_per_chunk)]
        corpus = generate_corpus(
            seed=seed + chunk_no, orgs=chunk_orgs, runs_per_org=runs_per_org, start=START, days=28
        )
        chunk_no += 1
        spawns: dict[str, list[Any]] = defaultdict(list)
        for finding in corpus.findings:
            if finding.get("_type") == "ai" and finding.get("ai_type") in SPAWNED_RUNNER_TYPES:
                spawns[str(finding["extra_data"]["runner_id"])].append(finding["_context"])
        finals = [t for t in corpus.tasks if t.get("name") == "ai"]
        halfway = {t["_id"]: t for t in corpus.at(0.5) if t.get("name") == "ai"}
        chunk: list[Observation] = []
        # Runners observed while running come first, then every runner as it ended.
        for task in finals:
            if rng.random() < repeat_share:
                chunk.append((halfway[task["_id"]], spawns_of(halfway[task["_id"]], spawns)))
        for task in finals:
            chunk.append((task, spawns_of(task, spawns)))
        if emitted + len(chunk) > total:
            chunk = chunk[: total - emitted]
        emitted += len(chunk)
        yield chunk


def new_meter(now: datetime = NOW) -> MemoryMeter:
    """The pure metering core (`chores.metering.memory_meter`), as the benchmarks run it."""
    return MemoryMeter(
        now=now, max_tokens_per_run=MAX_TOKENS_PER_RUN, future_skew_seconds=FUTURE_SKEW_SECONDS
    )


# --- LiteLLM ----------------------------------------------------------------------------------


def import_litellm() -> Any:
    """LiteLLM with its bundled price map and no network (must run before any other import)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


def litellm_map_path(litellm: Any) -> Path:
    return Path(litellm.__file__).parent / "model_prices_and_context_window_backup.json"


def litellm_registry(litellm: Any) -> tuple[Registry, dict[str, Any], str]:
    """(registry, the raw map, version) from LiteLLM's bundled map, through our importer."""
    data = json.loads(litellm_map_path(litellm).read_text())
    version = _litellm_version()
    registry = registry_from_litellm(
        data, valid_from=PRICES_VALID_FROM, version=f"litellm-{version}"
    )
    return registry, data, version


def _litellm_version() -> str:
    from importlib.metadata import version

    return version("litellm")


def skipped_by_import(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """Text-mode entries of the map that the import left out, zero-priced ones included."""
    return sorted([*zero_priced_keys(data), *not_imported_keys(data, registry)])


# --- measuring ----------------------------------------------------------------------------------


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss) / (1024 * 1024)


class Stopwatch:
    """Accumulated CPU time of this process (`time.process_time`) over the timed blocks.

    CPU time rather than wall time: on a shared 2-core machine other processes steal wall
    time unevenly; both sides of a comparison are timed the same way, chunk by chunk.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._t0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds += time.process_time() - self._t0


def machine() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"


def at_least(least: int) -> Any:
    """An argparse type: a whole number of at least `least`, else a usage error naming the
    option (not a traceback once the benchmark has started: no median of 0 checks)."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is less than {least}")
        return value

    return whole


def sizes(text: str) -> list[int]:
    """An argparse type: comma-separated whole numbers of at least 0 (`10000,100000`)."""
    return [at_least(0)(size) for size in text.split(",")]


def write_json(path: str | None, data: Mapping[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
