"""Benchmark 1: the pure metering core against a per-record `litellm.cost_per_token` loop.

    python benchmarks/bench_engine.py                       # 1,000,000 snapshots, both sides
    python benchmarks/bench_engine.py --litellm-snapshots 200000   # LiteLLM on the first 200k

Both sides price with the same rates: LiteLLM's bundled `model_prices_and_context_window`
map (offline, `LITELLM_LOCAL_MODEL_COST_MAP=True`), converted for our side with
`pricing.registry_from_litellm`.

Ours (`chores._meter.MemoryMeter`): every snapshot goes through `chores._usage.verdict`, the
rules `assess` wraps (counters, baselines, high-water marks, anomalies), the deltas are
summed into usage groups, and `price_lines` prices each invoice once, in Decimal, rounded
once per line to micro-dollars.

Theirs (what a team would write without this package): for each of the same usage records
(our deltas, computed by a second, untimed meter over the same chunk and handed over, so
their side is timed on pricing alone),
`litellm.cost_per_token(model, prompt_tokens, completion_tokens, cache_read_input_tokens)`,
summed per invoice line in float, rounded to micros at the end. Customer-key (byok) records
are charged 0 without a call; a model LiteLLM does not know is unpriced (the exception is
caught once per model name, then the name is skipped). The ratio is therefore conservative:
our time includes the metering rules, theirs does not.
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from _workload import (
    Stopwatch,
    import_litellm,
    litellm_registry,
    machine,
    new_meter,
    peak_rss_mib,
    skipped_by_import,
    snapshot_chunks,
    write_json,
)

litellm = import_litellm()  # before anything else may import it

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from chores._corpus import DEFAULT_MODELS  # noqa: E402
from chores._lines import UsageGroup, price_group  # noqa: E402
from chores._meter import InvoiceKey, MemoryMeter, Record  # noqa: E402
from pricing import Registry  # noqa: E402

LineId = tuple[str, str, str | None, str]  # org, period, line model, tier


class LiteLLMSide:
    """The per-record loop; float USD per line."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, str, str | None, bool], float | None] = {}
        self.unknown: set[str | None] = set()
        self.records = 0
        self.calls = 0

    def feed(self, records: list[Record]) -> None:
        cost_per_token = litellm.cost_per_token
        sums, unknown = self.sums, self.unknown
        for org, period, usage in records:
            self.records += 1
            _, model, byok, _, _, (input, cached, output, unsplit), *_ = usage
            key = (org, period, model, byok)
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
            out[line] = None if amount is None or previous is None else previous + amount
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
    parser.add_argument("--snapshots", type=int, default=1_000_000)
    parser.add_argument(
        "--litellm-snapshots",
        type=int,
        default=None,
        help="price only the records of the first N snapshots with LiteLLM (default: all)",
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
        f"models; {len(skipped)} token-priced chat entries not imported"
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
    generate, our_feed, their_feed = Stopwatch(), Stopwatch(), Stopwatch()
    chunks = snapshot_chunks(total)
    started = time.perf_counter()
    while True:
        with generate:
            chunk = next(chunks, None)
            gc.collect()  # the generator's garbage is not the core's to collect
        if chunk is None:
            break
        with our_feed:
            ours.feed(chunk)
        if twin.snapshots < litellm_limit:  # whole chunks: LiteLLM prices the whole chunk
            records: list[Record] = []
            twin.feed(chunk, records)
            with their_feed:
                theirs.feed(records)
            del records
        if ours.snapshots % 100_000 < len(chunk):
            out.print(
                f"  {ours.snapshots:>9,} snapshots  ours {our_feed.seconds:6.1f}s  "
                f"LiteLLM {their_feed.seconds:6.1f}s  generating {generate.seconds:6.1f}s",
                highlight=False,
            )
    pricing = Stopwatch()
    with pricing:
        lines = ours.lines(registry)
    wall = time.perf_counter() - started
    n_lines = sum(len(v) for v in lines.values())

    ours_seconds = our_feed.seconds + pricing.seconds
    our_rate = ours.snapshots / ours_seconds
    their_per_record = their_feed.seconds / max(theirs.records, 1)
    # LiteLLM's time for the records of all the snapshots, measured or extrapolated.
    their_full = their_per_record * ours.deltas
    litellm_limit = twin.snapshots
    extrapolated = litellm_limit < ours.snapshots
    if not extrapolated:
        assert twin.usage == ours.usage, "the timed meter and its twin disagree"
    ratio = their_full / ours_seconds
    check = compare(twin, theirs, registry)

    table = Table(title=f"Engine: {ours.snapshots:,} runner snapshots into invoice lines")
    table.add_column("side")
    table.add_column("records", justify="right")
    table.add_column("time (s)", justify="right")
    table.add_column("per record (µs)", justify="right")
    table.add_column("records/s", justify="right")
    table.add_column("vs LiteLLM", justify="right")
    table.add_row(
        "ours: rules + group",
        f"{ours.snapshots:,} snapshots",
        f"{our_feed.seconds:.2f}",
        f"{our_feed.seconds / ours.snapshots * 1e6:.2f}",
        f"{ours.snapshots / our_feed.seconds:,.0f}",
        "",
    )
    table.add_row(
        "ours: price_lines",
        f"{len(ours.usage):,} groups -> {n_lines:,} lines",
        f"{pricing.seconds:.3f}",
        "",
        "",
        "",
    )
    table.add_row(
        "[bold]ours: whole core[/]",
        f"{ours.snapshots:,} snapshots",
        f"{ours_seconds:.2f}",
        f"{ours_seconds / ours.snapshots * 1e6:.2f}",
        f"{our_rate:,.0f}",
        f"[bold]{ratio:.1f}x faster[/]",
    )
    table.add_row(
        "LiteLLM cost_per_token loop",
        f"{theirs.records:,} records ({theirs.calls:,} calls)",
        f"{their_feed.seconds:.2f}",
        f"{their_per_record * 1e6:.2f}",
        f"{theirs.records / max(their_feed.seconds, 1e-9):,.0f}",
        "1x",
    )
    if extrapolated:
        table.add_row(
            "LiteLLM, extrapolated to all records",
            f"{ours.deltas:,} records",
            f"{their_full:.1f}",
            "",
            "",
            "",
        )
    out.print(table)

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
        f"{len(ours.heads):,}, generating {generate.seconds:.1f}s (not counted), wall {wall:.0f}s,"
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
            "snapshots": ours.snapshots,
            "deltas": ours.deltas,
            "groups": len(ours.usage),
            "lines": n_lines,
            "ours_feed_seconds": our_feed.seconds,
            "ours_price_lines_seconds": pricing.seconds,
            "ours_seconds": ours_seconds,
            "ours_snapshots_per_second": our_rate,
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
    ok = (
        ratio >= 20
        and check["max_line_diff_micros"] <= 1
        and check["lines_differing_not_on_half_micro"] == 0
    )
    if not math.isfinite(ratio) or ratio < 20:
        out.print(f"[red]below the 20x target ({ratio:.1f}x)[/]")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
