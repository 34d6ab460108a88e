"""Benchmark 4: peak memory (RSS) of metering, streamed vs loaded, and of run_chore.

    python benchmarks/bench_memory.py                 # streamed core at 100k and 1M, ...
    python benchmarks/bench_memory.py --quick         # smaller sizes, for a smoke run

Every measurement runs in a fresh process (its peak RSS, `getrusage(RUSAGE_SELF).ru_maxrss`,
is then its own), and reports the RSS after imports and setup (baseline) and the peak:

- core, streamed: `chores.metering.memory_meter.MemoryMeter` over N snapshots generated
  chunk by chunk (one
  chunk, about 9,000 snapshots, alive at a time), as `run_chore` streams the source cursor
  batch by batch;
- core, loaded: the same snapshots first collected in a list, then metered: what "load the
  collection, then bill it" costs;
- run_chore on mongomock: seeded database, then one full run. mongomock holds every
  collection in this process, so the baseline includes the data; the figure that matters is
  the increase during the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

from _workload import machine, peak_rss_mib, rss_mib, snapshot_chunks, write_json
from rich.console import Console
from rich.table import Table


def child(mode: str, n: int) -> dict[str, Any]:
    from _workload import NOW, new_meter

    from pricing import load_registry

    registry = load_registry()
    started = time.perf_counter()
    if mode == "stream":
        meter = new_meter()
        baseline = rss_mib()
        for chunk in snapshot_chunks(n):
            meter.feed(chunk)
        lines = sum(len(v) for v in meter.lines(registry).values())
        extra = {"heads_left": len(meter.heads), "groups": len(meter.usage), "lines": lines}
    elif mode == "list":
        meter = new_meter()
        baseline = rss_mib()
        everything = [obs for chunk in snapshot_chunks(n) for obs in chunk]
        meter.feed(everything)
        lines = sum(len(v) for v in meter.lines(registry).values())
        extra = {"groups": len(meter.usage), "lines": lines}
    elif mode == "run_chore":
        import mongomock
        from bench_roundtrips import seed

        from chores import Settings, ensure_indexes, run_chore

        db = mongomock.MongoClient(tz_aware=True)["main"]
        settings = Settings(mongo_url="mongomock://bench", batch_size=1000, redis_url=None)
        seeded = seed(db, n)
        ensure_indexes(db, settings, source=True)
        n = seeded["ai_docs"]
        baseline = rss_mib()
        peak_before = peak_rss_mib()
        report = run_chore(db, now=NOW, registry=registry, settings=settings)
        extra = {
            "docs_read": report.docs_read,
            "peak_before_run_mib": peak_before,
            "seeded_tasks": seeded["tasks"],
            "seeded_findings": seeded["findings"],
        }
    else:
        raise SystemExit(f"unknown mode {mode}")
    return {
        "mode": mode,
        "n": n,
        "baseline_mib": baseline,
        "peak_mib": peak_rss_mib(),
        "seconds": time.perf_counter() - started,
        **extra,
    }


def measure(mode: str, n: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(n)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]))))
        return 0
    out = Console(width=150)
    if args.quick:
        plan = [("stream", 30_000), ("stream", 100_000), ("list", 30_000), ("run_chore", 2_000)]
    else:
        plan = [
            ("stream", 100_000),
            ("stream", 1_000_000),
            ("list", 50_000),
            ("list", 150_000),
            ("run_chore", 5_000),
            ("run_chore", 15_000),
        ]
    results = []
    for mode, n in plan:
        out.print(f"  {mode} N={n:,} ...", highlight=False)
        results.append(measure(mode, n))
    table = Table(title="Peak resident memory (fresh process per row)")
    for column in ("what", "N", "RSS after setup (MiB)", "peak RSS (MiB)", "peak - setup", "s"):
        table.add_column(column, justify="left" if column == "what" else "right")
    labels = {
        "stream": "pure core, snapshots streamed",
        "list": "pure core, snapshots loaded in a list first",
        "run_chore": "run_chore, mongomock (data in-process)",
    }
    for r in results:
        table.add_row(
            labels[r["mode"]],
            f"{r['n']:,}",
            f"{r['baseline_mib']:.0f}",
            f"{r['peak_mib']:.0f}",
            f"{r['peak_mib'] - r['baseline_mib']:.0f}",
            f"{r['seconds']:.0f}",
        )
    out.print(table)
    lists = [r for r in results if r["mode"] == "list"]
    if len(lists) >= 2:
        a, b = lists[0], lists[-1]
        per_doc = (b["peak_mib"] - a["peak_mib"]) * 1024 * 1024 / (b["n"] - a["n"])
        out.print(
            f"loading costs about {per_doc:,.0f} bytes per snapshot: "
            f"{per_doc * 1_000_000 / 2**30:.1f} GiB for 1,000,000 (extrapolated)",
            highlight=False,
        )
    out.print(f"machine: {machine()}")
    write_json(args.json, {"benchmark": "memory", "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
