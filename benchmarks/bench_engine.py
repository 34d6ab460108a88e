"""Benchmark 1: CPU per document metered end to end, against decoding alone and LiteLLM's loop.

    python benchmarks/bench_engine.py --snapshots 200000 --litellm-snapshots 50000
    python benchmarks/bench_engine.py                       # 1,000,000 snapshots, both sides
    python benchmarks/bench_engine.py --secator-fields      # contexts as secator writes them

What a user pays for is the headline: each chunk of runner snapshots is encoded to BSON as the
server would send it (untimed: runner documents projected as the run's query projects them,
each subagent's spawn findings as `Source.spawn_contexts` reads them), then, side by side in
the same process, chunk by chunk, in alternating order:

- *decoding alone*: `bson.decode_all` of those bytes with the run's codec options
  (`chores.core.db.reading`), the least a pymongo cursor does;
- *ours end to end*: the same decoding, the findings paired with their runners as a run
  pairs them (`lineage.pair_spawns`, every pass; dict lookups where the run queries), then the
  pure metering core (`chores.metering.memory_meter.MemoryMeter`:
  `chores.metering.rules.Rules.assess`, as a run calls it, deltas summed into usage
  groups) and, at the end, `price_lines` per invoice, in
  Decimal, rounded once per line to micro-dollars.

The ratio of the two is the engine's cost over the floor (issue 17's target: at most 1.5x).

For scale, a third side, timed the same way on the same bytes: *a bare loop*
(`BareLoop`), the least any metering does with no rules at all: decoding, then per runner
document its four counters (skipped unless plain ints), less the runner's previous
snapshot, summed by (org, model, day). No subagents, no anomalies, no ledger entries, no
pricing: a lower bound on what a loop in this interpreter costs, not a metering.

Theirs (what a team would write without this package): for each of the same usage records
(our deltas, computed by a second, untimed meter over the same chunk and handed over, so
their side is timed on pricing alone),
`litellm.cost_per_token(model, prompt_tokens, completion_tokens, cache_read_input_tokens)`,
summed per invoice line in float, rounded to micros at the end. Customer-key (byok) records
are charged 0 without a call; a model LiteLLM does not know is unpriced (the exception is
caught once per model name, then the name is skipped). Both sides price with the same rates:
LiteLLM's bundled `model_prices_and_context_window` map (offline,
`LITELLM_LOCAL_MODEL_COST_MAP=True`), converted for ours with `pricing.registry_from_litellm`.
Compared end to end, their side is the same decoding plus their loop.

Exits 1 when a line differs from LiteLLM's by more than float rounding on an exact half
micro-dollar (the ratios are reported, not enforced: CPU timings on a shared machine move).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import bson
from _workload import (
    Observation,
    Stopwatch,
    at_least,
    import_litellm,
    litellm_registry,
    machine,
    new_meter,
    peak_rss_mib,
    skipped_by_import,
    snapshot_chunks,
    write_json,
)
from bson.codec_options import CodecOptions

litellm = import_litellm()  # before anything else may import it

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from chores.core.db import reading  # noqa: E402
from chores.demo.corpus import DEFAULT_MODELS  # noqa: E402
from chores.metering.lineage import pair_spawns  # noqa: E402
from chores.metering.lines import EXACT, UsageGroup, price_group  # noqa: E402
from chores.metering.memory_meter import InvoiceKey, MemoryMeter  # noqa: E402
from chores.metering.rules import Delta  # noqa: E402
from chores.metering.source import RUNNER_PROJECTION  # noqa: E402
from pricing import Registry  # noqa: E402

LineId = tuple[str, str, str | None, str]  # org, period, line model, tier


# What a pymongo cursor hands the run: the run's client decodes with these options
# (`db.reading`: aware UTC datetimes; out-of-range dates and invalid UTF-8 as placeholders,
# which cost nothing measurable: 6.2-6.8 µs per document either way, 200,000 documents).
CODEC = reading(CodecOptions())
Wire = tuple[bytes, bytes]  # runner documents, spawn findings: BSON as the server sends them


def to_wire(chunk: list[Observation], *, secator_fields: bool = False) -> Wire:
    """A chunk as the server would send it (untimed): the runner documents projected to
    `RUNNER_PROJECTION`, each subagent's spawn findings projected to `SPAWN_PROJECTION`.
    With `secator_fields`, each runner's context also carries what secator writes there
    beside what the rules read (`with_secator_fields`)."""
    tasks = bytearray()
    findings = bytearray()
    seen: set[str] = set()
    for doc, spawn_contexts in chunk:
        projected = {k: v for k, v in doc.items() if k in RUNNER_PROJECTION}
        if secator_fields and isinstance(projected.get("context"), dict):
            projected["context"] = with_secator_fields(projected["context"])
        tasks += bson.encode(projected)
        runner_id = str(doc["_id"])
        if spawn_contexts and runner_id not in seen:
            seen.add(runner_id)
            for context in spawn_contexts:
                findings += bson.encode(
                    {"extra_data": {"runner_id": runner_id}, "_context": context}
                )
    return bytes(tasks), bytes(findings)


def with_secator_fields(context: dict[str, Any]) -> dict[str, Any]:
    """A generated context with the fields secator 0.52.1 writes on an AI runner's context
    that no rule reads (as in tests/data/secator-0.52.1: `ai_cost`, `ai_mode_is_auto`,
    `celery_ids`, `session_name`; a subagent's `celery_id`, `worker_name`), with values of
    the recorded documents' sizes. The generator leaves them out: its documents decode
    faster than secator's (430 against 611 bytes projected, on average)."""
    extra: dict[str, Any] = {
        "ai_cost": 0.0017618999999999998,
        "ai_mode_is_auto": False,
        "celery_ids": [],
        "session_name": f"Tell me about {context.get('workspace_id')}.example",
    }
    if "ai_subagent_depth" in context:
        extra["session_name"] = (
            "## Objective\nCheck the TLS setup of the target and summarise\n\n## Scope\nWork ON..."
        )
        extra["celery_id"] = "807ac45d-68bb-4627-ba3c-b3b1899ae994"
        extra["worker_name"] = "unknown"
    return {**context, **extra}


def decode_only(wire: Wire) -> int:
    """Decoding alone: the least a cursor does with the same bytes."""
    tasks, findings = wire
    return len(bson.decode_all(tasks, CODEC)) + len(bson.decode_all(findings, CODEC))


def decode_observations(wire: Wire) -> list[Observation]:
    """Decoding, then each runner paired with its spawn findings' `_context`s as
    `Source.spawns_of` pairs them (`lineage.pair_spawns`, every pass), the findings looked
    up in memory (`ChunkLookups`) where the run queries them."""
    tasks, findings = wire
    docs = bson.decode_all(tasks, CODEC)
    lookups = ChunkLookups(docs, bson.decode_all(findings, CODEC))
    return list(zip(docs, pair_spawns(docs, lookups), strict=True))


class ChunkLookups:
    """`lineage.SpawnLookups` over one chunk's decoded runners and findings: what
    `Source`'s queries would answer, from dicts (the findings are grouped by runner as
    `Source.spawn_contexts` groups its cursor's)."""

    def __init__(self, docs: list[dict[str, Any]], findings: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.by_runner: dict[str, list[Any]] = {}
        self.by_session: dict[str, list[Any]] = {}
        for finding in findings:
            extra = finding["extra_data"]
            context = finding.get("_context")
            self.by_runner.setdefault(str(extra.get("runner_id")), []).append(context)
            session = extra.get("subagent_session_id")
            if session is not None:
                self.by_session.setdefault(str(session), []).append(context)

    def spawn_contexts(self, runner_ids: Sequence[str]) -> dict[str, list[Any]]:
        return {r: self.by_runner[r] for r in runner_ids if r in self.by_runner}

    def subagent_spawns(self, sessions: Sequence[str]) -> dict[str, list[Any]]:
        return {s: self.by_session[s] for s in sessions if s in self.by_session}

    def task_groups(self, tasks: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[str]]:
        wanted = set(tasks)
        groups: dict[tuple[str, str], list[str]] = {}
        if wanted:
            for doc in self.docs:
                context = doc.get("context")
                if not isinstance(context, dict):
                    continue
                org, task = context.get("workspace_id"), context.get("task_id")
                if type(org) is str and type(task) is str and (org, task) in wanted:
                    groups.setdefault((org, task), []).append(str(doc["_id"]))
        return groups


class BareLoop:
    """The least any metering does, for scale (not a metering: no rules)."""

    def __init__(self) -> None:
        self.previous: dict[Any, tuple[int, int, int, int]] = {}
        self.sums: dict[tuple[Any, Any, int], list[int]] = {}

    def feed(self, wire: Wire) -> None:
        tasks, findings = wire
        bson.decode_all(findings, CODEC)  # decoded like ours, not looked at
        previous, sums = self.previous, self.sums
        for doc in bson.decode_all(tasks, CODEC):
            context = doc["context"]
            counters = (
                context.get("ai_tokens", 0),
                context.get("ai_prompt_tokens", 0),
                context.get("ai_completion_tokens", 0),
                context.get("ai_cached_tokens", 0),
            )
            if not all(type(count) is int for count in counters):
                continue
            before = previous.get(doc["_id"], (0, 0, 0, 0))
            previous[doc["_id"]] = counters
            end = doc.get("end_time")
            key = (context.get("workspace_id"), context.get("ai_model"), end.day if end else 0)
            summed = sums.setdefault(key, [0, 0, 0, 0])
            for kind, (now, then) in enumerate(zip(counters, before, strict=True)):
                summed[kind] += max(now - then, 0)


class LiteLLMSide:
    """The per-record loop; float USD per line."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str, str | None, bool], float | None] = {}
        self.unknown: set[str | None] = set()
        self.records = 0
        self.calls = 0

    def feed(self, records: list[Delta]) -> None:
        cost_per_token = litellm.cost_per_token
        sums, unknown = self.sums, self.unknown
        for delta in records:
            self.records += 1
            model, byok = delta.model, delta.byok
            input, cached, output, unsplit = delta.tokens
            key = (delta.org, delta.period, model, byok)
            if byok:
                sums.setdefault(key, 0.0)
                continue
            if model in unknown or model is None:
                sums[key] = None
                continue
            try:
                prompt_cost, completion_cost = cost_per_token(
                    model=model,
                    prompt_tokens=input + cached + unsplit,
                    completion_tokens=output,
                    cache_read_input_tokens=cached,
                )
            except Exception:
                unknown.add(model)
                sums[key] = None
                continue
            self.calls += 1
            previous = sums.get(key, 0.0)
            sums[key] = None if previous is None else previous + prompt_cost + completion_cost

    def lines(self, registry: Registry) -> dict[LineId, float | None]:
        """Their sums regrouped by our line identity (several raw names can be one model)."""
        out: dict[LineId, float | None] = {}
        for (org, period, model, byok), usd in self.sums.items():
            entry = registry.resolve(model)
            line_model = entry.id if entry else model
            tier = "byok" if byok else (entry.tier if entry else "paid")
            line: LineId = (org, period, line_model, tier)
            previous = out.get(line, 0.0)
            out[line] = None if usd is None or previous is None else previous + usd
        return out


def exact_lines(
    usage: dict[InvoiceKey, list[UsageGroup]], registry: Registry
) -> dict[LineId, Decimal | None]:
    """Our exact (unrounded) micros per line, for explaining differences."""
    out: dict[LineId, Decimal | None] = {}
    for (org, period), groups in usage.items():
        for group in groups:
            (line_model, tier, _, _), amount = price_group(group, registry)
            line: LineId = (org, period, line_model, tier)
            previous = out.get(line, Decimal(0))
            out[line] = None if amount is None or previous is None else EXACT.add(previous, amount)
    return out


def compare(ours: MemoryMeter, theirs: LiteLLMSide, registry: Registry) -> dict[str, Any]:
    our_lines: dict[LineId, int | None] = {}
    for (org, period), lines in ours.lines(registry).items():
        for line in lines:
            our_lines[(org, period, line.model, line.tier)] = line.amount_micros
    exact = exact_lines(ours.usage_groups(), registry)
    their_usd = theirs.lines(registry)
    assert set(our_lines) == set(their_usd), "the two sides produced different line sets"
    differing, max_diff, max_float_err = 0, 0, 0.0
    ties = differing_not_tie = differing_half_up = 0
    our_total = their_total = 0
    unpriced_both = 0
    for line, ours_micros in our_lines.items():
        usd = their_usd[line]
        if ours_micros is None or usd is None:
            assert ours_micros is None and usd is None, f"priced on one side only: {line}"
            unpriced_both += 1
            continue
        their_micros = round(usd * 1_000_000)  # what a team would write
        our_total += ours_micros
        their_total += their_micros
        diff = abs(their_micros - ours_micros)
        differing += diff != 0
        max_diff = max(max_diff, diff)
        exact_micros = exact[line]
        assert exact_micros is not None
        tie = exact_micros % 1 == Decimal("0.5")
        ties += tie
        differing_not_tie += diff != 0 and not tie
        # their float, rounded half-up like ours instead of Python's round-half-even
        half_up = int((Decimal(usd) * 1_000_000).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        differing_half_up += half_up != ours_micros
        max_float_err = max(max_float_err, abs(float(Decimal(usd) * 1_000_000 - exact_micros)))
    return {
        "lines": len(our_lines),
        "lines_unpriced_on_both_sides": unpriced_both,
        "lines_differing": differing,
        "lines_exactly_on_half_micro": ties,
        "lines_differing_not_on_half_micro": differing_not_tie,
        "lines_differing_if_their_float_rounded_half_up": differing_half_up,
        "max_line_diff_micros": max_diff,
        "max_float_error_micros": max_float_err,
        "our_total_micros": our_total,
        "their_total_micros": their_total,
    }


def check_same_rates(registry: Registry) -> None:
    """Both sides see the same per-token floats for the models of the workload."""
    for name, _ in DEFAULT_MODELS:
        entry = registry.resolve(name)
        if entry is None:
            continue
        spec = litellm.model_cost[entry.id]
        price = entry.prices[0]
        for ours, theirs in (
            (price.input, spec["input_cost_per_token"]),
            (price.output, spec["output_cost_per_token"]),
        ):
            assert ours == Decimal(str(theirs)) * 1_000_000, (name, ours, theirs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--snapshots", type=at_least(1), default=1_000_000)
    parser.add_argument(
        "--litellm-snapshots",
        type=at_least(0),
        default=None,
        help="price only the records of the first N snapshots with LiteLLM (default: all)",
    )
    parser.add_argument(
        "--secator-fields",
        action="store_true",
        help="runner contexts also carry the fields secator writes that no rule reads",
    )
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    out = Console(width=150)
    total = args.snapshots
    litellm_limit = total if args.litellm_snapshots is None else min(args.litellm_snapshots, total)

    registry, data, version = litellm_registry(litellm)
    check_same_rates(registry)
    skipped = skipped_by_import(data, registry)
    out.print(
        f"LiteLLM {version}: {len(data)} map entries -> registry of {len(registry.models)} "
        f"models; {len(skipped)} text-model entries not imported"
        + (f" (e.g. {', '.join(skipped[:3])})" if skipped else "")
    )
    out.print(f"machine: {machine()}")

    # Neither side should pay for the collector walking LiteLLM's import-time objects (a
    # worker would not have them): park everything alive now outside the collector's view.
    gc.collect()
    gc.freeze()
    ours = new_meter()
    # The same documents again, untimed, through a second meter that keeps each delta: the
    # records handed to LiteLLM. (Keeping a million records alive in the timed meter would
    # charge ours for the benchmark's plumbing: ~35% more time, mostly the cyclic collector
    # walking them.) Fed for LiteLLM's snapshots only, so its lines are what LiteLLM priced.
    twin = new_meter()
    theirs = LiteLLMSide()
    bare = BareLoop()
    generate, decode_alone, our_feed, bare_feed, their_feed = (
        Stopwatch(),
        Stopwatch(),
        Stopwatch(),
        Stopwatch(),
        Stopwatch(),
    )
    chunks = snapshot_chunks(total)
    started = time.perf_counter()
    chunk_no = 0
    runner_bytes = 0  # of the runner documents as the server sends them
    while True:
        with generate:
            chunk = next(chunks, None)
            wire = None if chunk is None else to_wire(chunk, secator_fields=args.secator_fields)
            gc.collect()  # the generator's garbage is not the core's to collect
        if chunk is None or wire is None:
            break
        chunk_no += 1
        runner_bytes += len(wire[0])
        # Decoding alone and decoding + metering, side by side on the same bytes, the order
        # alternating from chunk to chunk (whichever runs second finds warmer caches).
        steps = ("decode", "meter", "bare")
        for step in steps if chunk_no % 2 else reversed(steps):
            if step == "decode":
                with decode_alone:
                    decode_only(wire)
            elif step == "meter":
                with our_feed:
                    ours.feed(decode_observations(wire))
            else:
                with bare_feed:
                    bare.feed(wire)
            gc.collect()
        if twin.snapshots < litellm_limit:  # whole chunks: LiteLLM prices the whole chunk
            records: list[Delta] = []
            twin.feed(chunk, records)
            with their_feed:
                theirs.feed(records)
            del records
        if ours.snapshots % 100_000 < len(chunk):
            out.print(
                f"  {ours.snapshots:>9,} snapshots  decode {decode_alone.seconds:6.1f}s  "
                f"decode+ours {our_feed.seconds:6.1f}s  LiteLLM {their_feed.seconds:6.1f}s  "
                f"generating {generate.seconds:6.1f}s",
                highlight=False,
            )
    pricing = Stopwatch()
    with pricing:
        lines = ours.lines(registry)
    wall = time.perf_counter() - started
    n_lines = sum(len(v) for v in lines.values())

    n = ours.snapshots
    # End to end: decoding, the rules, grouping and `price_lines`, what a run pays per document
    # (the database work aside).
    ours_seconds = our_feed.seconds + pricing.seconds
    decode_seconds = decode_alone.seconds
    engine_seconds = ours_seconds - decode_seconds  # the engine's share, by difference
    vs_decode = ours_seconds / decode_seconds
    their_per_record = their_feed.seconds / max(theirs.records, 1)
    # LiteLLM's time for the records of all the snapshots, measured or extrapolated.
    their_full = their_per_record * ours.deltas
    litellm_limit = twin.snapshots
    extrapolated = litellm_limit < n
    if not extrapolated:
        assert twin.usage == ours.usage, "decoded documents metered differently"
    # What a team's loop costs end to end: the same decoding, then LiteLLM per record.
    ratio = (decode_seconds + their_full) / ours_seconds
    ratio_engine = their_full / engine_seconds  # engine alone vs their pricing alone
    check = compare(twin, theirs, registry)

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:.2f}"

    table = Table(title=f"Engine: {n:,} runner snapshots, BSON-decoded, into invoice lines")
    table.add_column("side")
    table.add_column("CPU (s)", justify="right")
    table.add_column("µs per document", justify="right")
    table.add_column("vs decoding alone", justify="right")
    table.add_row(
        "BSON decoding alone (decode_all)", f"{decode_seconds:.2f}", us(decode_seconds), "1x"
    )
    table.add_row(
        "[bold]ours end to end: decode + rules + group + price_lines[/]",
        f"{ours_seconds:.2f}",
        us(ours_seconds),
        f"[bold]{vs_decode:.2f}x[/]",
    )
    table.add_row(
        "  of which the engine (by difference)",
        f"{engine_seconds:.2f}",
        us(engine_seconds),
        f"{engine_seconds / decode_seconds:.2f}x",
    )
    table.add_row(
        f"  of which price_lines ({len(ours.usage):,} groups -> {n_lines:,} lines)",
        f"{pricing.seconds:.3f}",
        "",
        "",
    )
    table.add_row(
        "for scale: decode + a bare loop (counters summed, no rules)",
        f"{bare_feed.seconds:.2f}",
        us(bare_feed.seconds),
        f"{bare_feed.seconds / decode_seconds:.2f}x",
    )
    label = "LiteLLM cost_per_token loop" + (", extrapolated" if extrapolated else "")
    table.add_row(
        f"{label} ({theirs.records:,} records measured)",
        f"{their_full:.2f}",
        us(their_full),
        f"{their_full / decode_seconds:.1f}x",
    )
    table.add_row(
        "decode + LiteLLM loop",
        f"{decode_seconds + their_full:.2f}",
        us(decode_seconds + their_full),
        f"{(decode_seconds + their_full) / decode_seconds:.1f}x",
    )
    out.print(table)
    out.print(
        f"ours end to end = [bold]{vs_decode:.2f}x decoding alone[/] (target <= 1.5x: "
        + ("met" if vs_decode <= 1.5 else "[red]not met[/]")
        + f"); decode + LiteLLM's loop = [bold]{ratio:.1f}x[/] ours end to end; "
        f"the engine alone vs LiteLLM's loop alone: {ratio_engine:.1f}x; "
        f"a bare loop with no rules = {bare_feed.seconds / decode_seconds:.2f}x decoding alone"
    )

    comparison = Table(title="Totals per invoice line (micro-dollars)")
    comparison.add_column("figure")
    comparison.add_column("value", justify="right")
    snapshots_compared = litellm_limit if extrapolated else ours.snapshots
    comparison.add_row("snapshots compared", f"{snapshots_compared:,}")
    comparison.add_row("invoice lines", f"{check['lines']:,}")
    comparison.add_row("unpriced on both sides", f"{check['lines_unpriced_on_both_sides']:,}")
    comparison.add_row("lines that differ", f"{check['lines_differing']:,}")
    comparison.add_row("max per-line difference", f"{check['max_line_diff_micros']} µ$")
    comparison.add_row(
        "lines whose exact amount ends in .5 µ$", f"{check['lines_exactly_on_half_micro']:,}"
    )
    comparison.add_row(
        "differing lines not on a .5 µ$ tie", f"{check['lines_differing_not_on_half_micro']:,}"
    )
    comparison.add_row(
        "differing if their float is rounded half-up",
        f"{check['lines_differing_if_their_float_rounded_half_up']:,}",
    )
    comparison.add_row(
        "max float error of LiteLLM's sums", f"{check['max_float_error_micros']:.3g} µ$"
    )
    comparison.add_row("total, ours", f"{check['our_total_micros']:,}")
    comparison.add_row("total, LiteLLM", f"{check['their_total_micros']:,}")
    out.print(comparison)
    out.print(
        f"deltas {ours.deltas:,}, anomalies {ours.anomalies:,}, heads left (running) "
        f"{len(ours.heads):,}, {runner_bytes / max(n, 1):.0f} bytes per runner document, "
        f"generating {generate.seconds:.1f}s (not counted), wall {wall:.0f}s,"
        f" peak RSS {peak_rss_mib():.0f} MiB"
    )
    write_json(
        args.json,
        {
            "benchmark": "engine",
            "machine": machine(),
            "litellm_version": version,
            "registry_models": len(registry.models),
            "litellm_entries_not_imported": skipped,
            "secator_fields": args.secator_fields,
            "runner_bytes_per_document": runner_bytes / max(ours.snapshots, 1),
            "snapshots": ours.snapshots,
            "deltas": ours.deltas,
            "groups": len(ours.usage),
            "lines": n_lines,
            "decode_seconds": decode_seconds,
            "ours_decode_and_feed_seconds": our_feed.seconds,
            "ours_engine_seconds": engine_seconds,
            "ours_vs_decode": vs_decode,
            "bare_loop_seconds": bare_feed.seconds,
            "bare_loop_vs_decode": bare_feed.seconds / decode_seconds,
            "ratio_engine_alone": ratio_engine,
            "ours_price_lines_seconds": pricing.seconds,
            "ours_seconds": ours_seconds,
            "ours_snapshots_per_second": n / ours_seconds,
            "litellm_snapshots": litellm_limit,
            "litellm_records": theirs.records,
            "litellm_calls": theirs.calls,
            "litellm_seconds": their_feed.seconds,
            "litellm_records_per_second": theirs.records / max(their_feed.seconds, 1e-9),
            "litellm_seconds_all_records": their_full,
            "extrapolated": extrapolated,
            "ratio": ratio,
            **check,
            "peak_rss_mib": peak_rss_mib(),
        },
    )
    # Exact except for float rounding on their side: only exact half-micro ties may differ.
    ok = check["max_line_diff_micros"] <= 1 and check["lines_differing_not_on_half_micro"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
