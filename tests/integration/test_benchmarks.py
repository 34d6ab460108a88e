"""The benchmarks still run, as a person runs them by hand: each script in a fresh
interpreter (none of the tests' conftest, so no shim or fixture the scripts forget to set
up themselves), at tiny sizes. bench_roundtrips once died on its first write because only
the tests installed the mongomock shim. Times are never asserted: counts and totals are.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def bench(script: str, *args: str, json_out: Path | None = None) -> Any:
    """Run one benchmark script; its `--json` figures, or the JSON it prints."""
    command = [sys.executable, str(BENCHMARKS / script), *args]
    if json_out is not None:
        command += ["--json", str(json_out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(json_out.read_text() if json_out is not None else done.stdout)


def test_roundtrips_rerun_costs_the_same_round_trips_at_n_and_4n(tmp_path):
    figures = bench(
        "bench_roundtrips.py", "--sizes", "400,1600", "--changed", "10", json_out=tmp_path / "r"
    )
    small, large = (result["incremental"] for result in figures["results"])
    assert small["entries_written"] == large["entries_written"] == 10
    for count in ("round_trips", "entries_aggregated", "entries_folded"):
        assert small[count] == large[count], count
    assert [result["check_drafts"] for result in figures["results"]] == [[], []]


def test_engine_prices_what_litellm_prices_to_the_micro_dollar(tmp_path):
    figures = bench(
        "bench_engine.py", "--snapshots", "2000", "--litellm-snapshots", "2000",
        json_out=tmp_path / "e",
    )  # fmt: skip
    assert figures["snapshots"] == 2000 and figures["lines"] > 0
    # LiteLLM sums floats: its lines may differ by 1 µ$, and only on an exact half-micro.
    assert figures["max_line_diff_micros"] <= 1
    assert figures["lines_differing_not_on_half_micro"] == 0
    assert abs(figures["our_total_micros"] - figures["their_total_micros"]) <= figures["lines"]
    # What secator writes beside the counters is decoded, and bills nothing.
    shaped = bench(
        "bench_engine.py", "--snapshots", "2000", "--litellm-snapshots", "2000", "--secator-fields",
        json_out=tmp_path / "s",
    )  # fmt: skip
    assert shaped["secator_fields"] and not figures["secator_fields"]
    assert shaped["runner_bytes_per_document"] > figures["runner_bytes_per_document"] + 100
    assert (shaped["lines"], shaped["our_total_micros"], shaped["deltas"]) == (
        figures["lines"],
        figures["our_total_micros"],
        figures["deltas"],
    )


def test_quota_checks_answer_on_every_backend(tmp_path, redis_base_url):
    redis_url = f"{redis_base_url}/9"  # flushed by the benchmark, used by no other test
    figures = bench(
        "bench_quota.py", "--checks", "200", "--redis-url", redis_url, json_out=tmp_path / "q"
    )
    labels = [row["label"] for row in figures["rows"]]
    assert any("uncached" in label for label in labels)
    assert any("cached (Redis" in label for label in labels)
    assert all(row["checks"] >= 200 and row["per_second"] > 0 for row in figures["rows"])


def test_memory_children_meter_what_they_were_given():
    streamed = bench("bench_memory.py", "--child", "stream", "2000")
    assert streamed["n"] == 2000 and streamed["lines"] > 0
    run = bench("bench_memory.py", "--child", "run_chore", "200")
    assert run["docs_read"] == run["n"] > 0


def test_a_count_or_size_that_is_no_whole_number_is_a_usage_error_not_a_traceback():
    """Outside hunt: `bench_quota.py --checks 0` died on `StatisticsError` (no median),
    `bench_engine.py --snapshots 0` on `ZeroDivisionError` and `bench_roundtrips.py --sizes
    10k` on `int()`'s ValueError, each a traceback after its imports. Each is argparse's
    usage error now (exit 2, naming the option), before any work; the Redis of
    `--redis-url` is not even reached."""
    for script, args, option in (
        ("bench_quota.py", ["--checks", "0", "--redis-url", "redis://127.0.0.1:1/9"], "--checks"),
        ("bench_quota.py", ["--checks", "-5", "--redis-url", "redis://127.0.0.1:1/9"], "--checks"),
        ("bench_engine.py", ["--snapshots", "0"], "--snapshots"),
        ("bench_engine.py", ["--snapshots", "10", "--litellm-snapshots", "-1"], "--litellm"),
        ("bench_roundtrips.py", ["--sizes", "10k"], "--sizes"),
        ("bench_roundtrips.py", ["--sizes", "100,-4"], "--sizes"),
        ("bench_roundtrips.py", ["--sizes", "100", "--changed", "-1"], "--changed"),
    ):
        command = [sys.executable, str(BENCHMARKS / script), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=BENCHMARKS)
        assert done.returncode == 2, (script, args, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert f"error: argument {option}" in done.stderr, done.stderr
