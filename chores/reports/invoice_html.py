"""The usage report of one invoice: one self-contained HTML file.

Inline CSS and an inline SVG chart drawn here; no script, nothing fetched, so
the file opens anywhere offline. Org ids, model names, runner and session ids
and anomaly details come from runner documents and are untrusted: every one
goes through `_e` (`html.escape`) before it reaches the page.

`collect_report` reads (invoice, ledger, anomalies) and allocates the invoice
with `allocation`; `render_report` is pure, so every amount on the page is a
sum of the same cells whose total is the invoice's.
"""

from __future__ import annotations

import hashlib
import html
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pymongo.database import Database

from chores.billing.invoice import FLAGGED_WHEN_BUILT, Invoice, line_review_reasons
from chores.billing.period_ledger import read_period
from chores.core.db import Collections, Doc
from chores.core.money import usd, usd_exact
from chores.core.periods import as_utc
from chores.core.settings import Settings
from chores.core.wording import for_terminal
from chores.metering.anomalies import AnomalyLog, OpenAnomaly
from chores.reports.allocation import Allocation, allocate
from chores.reports.breakdown import AllocatedUsage, Cell, registry_models, rows
from chores.reports.breakdown import total as rows_total
from chores.reports.run_trees import RunNode, run_trees
from pricing import Registry

ProgressFn = Callable[[str, int, int], None]  # (what, done, total)
# The tiers' own colours (the free / paid / customer-key split); no model ever takes one.
FREE_COLOR, UNPRICED_COLOR = "#59a14f", "#e15759"
TIER_LABELS = {
    "paid": ("Paid", "platform key, billed", "#1f3b5c"),
    "free": ("Free models", "metered, charged $0", FREE_COLOR),
    "byok": ("Customer key", "BYOK: metered, charged $0", "#5f5f5f"),
    "unpriced": ("Unpriced", "no price yet: needs review", UNPRICED_COLOR),
}
# Model colours: Tableau 20 without its greens, reds and greys (the tiers' colours), so a
# model never reads as "free" or "unpriced". A model keeps its colour in every report: it
# is chosen by a hash of the model's id, not by its rank in the month.
PALETTE = (
    "#4e79a7",
    "#a0cbe8",
    "#f28e2b",
    "#ffbe7d",
    "#b6992d",
    "#f1ce63",
    "#499894",
    "#86bcb6",
    "#b07aa1",
    "#d4a6c8",
    "#9d7660",
    "#d7b5a6",
    "#fabfd2",
)
OTHER_COLOR = "#bab0ac"
MAX_SERIES = 9
MAX_TREE_ROWS = 25


def model_color(model: str) -> str:
    """The colour of a model, the same in every report (a hash of its id into PALETTE)."""
    digest = hashlib.sha256(model.encode("utf-8")).digest()
    return PALETTE[int.from_bytes(digest[:4], "big") % len(PALETTE)]


def _e(value: object) -> str:
    """Text from the data, safe in element content and in quoted attributes, each control
    character or bidirectional override written as its escape (`\\x1b`, `\\u202e`), as
    a terminal shows it: a model named `abc\\u202egnp.exe` reads as written."""
    return html.escape(for_terminal(str(value)), quote=True)


KNOWN_STATUSES = ("SUCCESS", "FAILURE", "REVOKED", "RUNNING")  # those the style colours


def _status_class(status: str) -> str:
    """The pill class of a run's status: its own for a status the style knows, else none
    (a status from the data is text, never class names: `FAILURE SUCCESS` is one)."""
    return f"pill st-{status}" if status in KNOWN_STATUSES else "pill"


@dataclass(frozen=True)
class ReportData:
    allocation: Allocation
    anomalies: tuple[OpenAnomaly, ...]  # open ones, those a person reviewed included
    registry_version: str
    generated_at: datetime
    top: int = 10

    def waiting(self) -> list[OpenAnomaly]:
        """The open anomalies nobody reviewed: what the invoice is flagged for."""
        return [a for a in self.anomalies if not a.reviewed]

    def reviewed(self) -> list[OpenAnomaly]:
        """The open anomalies a person reviewed."""
        return [a for a in self.anomalies if a.reviewed]


def collect_report(
    db: Database[Doc],
    org: str,
    period: str,
    *,
    settings: Settings,
    registry: Registry,
    now: datetime,
    top: int = 10,
    on_progress: ProgressFn | None = None,
) -> ReportData:
    """Everything the report of `(org, period)` shows, read once."""
    collections = Collections.of(db, settings)

    def reading(done: int, total: int) -> None:
        if on_progress is not None:
            on_progress("reading ledger entries", done, total)

    invoice, usages = read_period(
        collections, org, period, batch_size=settings.batch_size, on_progress=reading
    )
    if on_progress is not None:
        on_progress("allocating the invoice to runs", 0, 1)
    allocation = allocate(invoice, usages, registry)
    if on_progress is not None:
        on_progress("reading anomalies", 0, 1)
    anomalies = tuple(AnomalyLog(collections).open_anomalies(org, period, reviewed=True))
    return ReportData(allocation, anomalies, _priced_with(invoice, registry), now, top)


def _priced_with(invoice: Invoice, registry: Registry) -> str:
    """The version of the registry that priced the invoice's amounts, and today's beside it
    when it differs (a final keeps its prices; a draft is repriced by the next run)."""
    stored = invoice.priced_with
    if stored and "version" in stored:
        version = str(stored["version"])
    elif invoice.registry == registry.fingerprint:
        version = registry.version
    else:  # priced with another registry, whose version was not kept (no model of it priced)
        version = "another version"
    return version if version == registry.version else f"{version} (today's: {registry.version})"


# --- numbers ------------------------------------------------------------------------------


def compact(value: float) -> str:
    """`1.2M`, `350K`, `900`, `1,200B` (axis labels; never in exponent form). Rounded to
    three digits before its unit is chosen: 999,600 is `1M`, not `1,000K`."""
    rounded = float(f"{value:.3g}")
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(rounded) >= size:
            return f"{_three_digits(rounded / size)}{suffix}"
    return _three_digits(rounded)


def _three_digits(value: float) -> str:
    """About three significant digits, with thousands separators past 999."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def dollar_axis(ticks: Sequence[float]) -> list[str]:
    """Axis labels of micros amounts, all with the same digits: cents, unless a tick falls
    between cents (then as many digits as the ticks need, the same for all)."""
    digits = 2
    while digits < 6 and any(
        abs(tick / 10 ** (6 - digits) - round(tick / 10 ** (6 - digits))) > 1e-9 for tick in ticks
    ):
        digits += 1
    return [f"${tick / 1e6:,.{digits}f}" for tick in ticks]


def token_axis(ticks: Sequence[float]) -> list[str]:
    return [compact(tick) for tick in ticks]


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """Round axis ticks from 0 covering `top` (steps of 1, 2, 2.5 or 5 x 10^k)."""
    if top <= 0:
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * i for i in range(math.ceil(top / step - 1e-9) + 1)]


# --- the chart ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Series:
    label: str
    color: str
    values: tuple[int, ...]  # one per category


def stacked_bars(
    *,
    title: str,
    categories: Sequence[str],
    series: Sequence[Series],
    axis: Callable[[Sequence[float]], list[str]],
    value: Callable[[int], str],
    empty: str = "no usage in this period",
    width: int = 1120,
    height: int = 230,
) -> str:
    """An inline SVG of stacked bars, one per category (escaped labels, a tooltip per block);
    `empty` is said across the plot when no bar has any height. Negative values (credits:
    tokens moved to a cheaper kind by a later write, SPEC §1.6) are not stacked: the chart
    says how much of them it leaves out."""
    left, right, top, bottom = 64, 8, 30, 26
    plot_w, plot_h = width - left - right, height - top - bottom
    stack_tops = [sum(max(s.values[i], 0) for s in series) for i in range(len(categories))]
    credits = sum(min(v, 0) for s in series for v in s.values)
    ticks = nice_ticks(max(stack_tops, default=0))
    scale = plot_h / ticks[-1]
    out = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{_e(title)}">',
        f'<text x="0" y="16" class="chart-title">{_e(title)}</text>',
    ]
    # An empty chart keeps only its baseline: no made-up scale above nothing.
    shown_ticks = ticks if any(stack_tops) else ticks[:1]
    for tick, label in zip(shown_ticks, axis(shown_ticks), strict=True):
        y = top + plot_h - tick * scale
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{_e(label)}</text>"
        )
    slot = plot_w / max(len(categories), 1)
    bar = max(slot * 0.72, 1.0)
    for i, category in enumerate(categories):
        x = left + i * slot + (slot - bar) / 2
        y = top + plot_h
        for s in series:
            amount = s.values[i]
            if amount <= 0:
                continue
            h = amount * scale
            y -= h
            out.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{max(h, 0.5):.1f}" '
                f'fill="{s.color}"><title>{_e(category)} · {_e(s.label)}: '
                f"{_e(value(amount))}</title></rect>"
            )
        out.append(
            f'<text x="{left + (i + 0.5) * slot:.1f}" y="{height - 8}" class="axis" '
            f'text-anchor="middle">{_e(category)}</text>'
        )
    if not any(stack_tops):
        out.append(
            f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" class="axis" '
            f'text-anchor="middle">{_e(empty)}</text>'
        )
    if credits:
        out.append(
            f'<text x="{width - right}" y="16" class="axis" text-anchor="end">'
            f"credits not drawn: {_e(value(credits))} (in the tables)</text>"
        )
    out.append("</svg>")
    return "".join(out)


def daily_series(
    cells: Iterable[Cell], invoice: Invoice
) -> tuple[list[str], list[Series], list[Series]]:
    """Days of the period (plus a `late` bar for usage of earlier periods billed late) and
    the tokens and micros per day stacked by model, the largest models first."""
    start = invoice.period_start.date()
    days = [start + timedelta(days=n) for n in range((invoice.period_end.date() - start).days)]
    index = {day: n + 1 for n, day in enumerate(days)}
    tokens: dict[str, list[int]] = defaultdict(lambda: [0] * (len(days) + 1))
    micros: dict[str, list[int]] = defaultdict(lambda: [0] * (len(days) + 1))
    unpriced: set[str] = set()
    priced: set[str] = set()
    for cell in cells:
        model = cell.line.model or "(no model)"
        slot = index.get(cell.day, 0)
        tokens[model][slot] += cell.usage.tokens
        micros[model][slot] += cell.usage.priced_micros
        if cell.usage.unpriced_tokens:
            unpriced.add(model)
        if cell.usage.tokens > cell.usage.unpriced_tokens:
            priced.add(model)
    ranked = sorted(tokens, key=lambda m: (-sum(tokens[m]), -sum(micros[m]), m))
    shown, rest = ranked[:MAX_SERIES], ranked[MAX_SERIES:]
    if len(rest) == 1:
        shown, rest = ranked, []
    late = any(values[0] for values in tokens.values())
    first = 0 if late else 1
    labels = (["late"] if late else []) + [str(day.day) for day in days]

    def series(table: dict[str, list[int]]) -> list[Series]:
        out = [
            Series(
                model + _priced_as(model in priced, model in unpriced),
                model_color(model),
                tuple(table[model][first:]),
            )
            for model in shown
        ]
        if rest:
            others = [sum(table[m][i] for m in rest) for i in range(first, len(days) + 1)]
            out.append(Series(f"{len(rest)} other models", OTHER_COLOR, tuple(others)))
        return out

    return labels, series(tokens), series(micros)


def _priced_as(priced: bool, unpriced: bool) -> str:
    """What a model's series says of its price: nothing when all its usage is priced."""
    if not unpriced:
        return ""
    return " (partly unpriced)" if priced else " (unpriced)"


# --- the page -----------------------------------------------------------------------------

CSS = """
*{box-sizing:border-box}
body{margin:0;background:#f4f5f7;color:#1f2933;font:14px/1.45 -apple-system,"Segoe UI",
Roboto,"Helvetica Neue",Arial,"Noto Sans","DejaVu Sans",sans-serif}
main{max-width:1200px;margin:0 auto;padding:24px 28px 40px}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 12px}
.sub{color:#52606d}
section{background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:18px 20px;
margin-top:18px}
.cards{display:flex;gap:14px;margin-top:18px}
.card{flex:1;background:#fff;border:1px solid #e4e7eb;border-radius:10px;padding:14px 16px}
.card .k{color:#52606d;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin-top:2px;font-variant-numeric:tabular-nums}
.card.warn .v{color:#c62828}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;
vertical-align:middle;margin-left:6px}
.draft{background:#fff3c4;color:#8d6708}.final{background:#d9f2dd;color:#1e6b2e}
.review{background:#fde2e1;color:#b3261e}
.review-why{color:#b3261e;margin:0 0 14px}
table{border-collapse:collapse;width:100%}
th{text-align:left;font-size:12px;color:#52606d;font-weight:600;border-bottom:2px solid #e4e7eb;
padding:6px 8px}
td{padding:5px 8px;border-bottom:1px solid #f0f2f4;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.total td{font-weight:700;border-top:2px solid #cbd2d9;border-bottom:0}
.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12px}
.muted{color:#7b8794}.bad{color:#c62828;font-weight:600}
.legend{display:flex;flex-wrap:wrap;gap:6px 18px;margin:4px 0 10px;font-size:13px}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:6px;
vertical-align:-1px}
.chart{display:block;max-width:100%;height:auto;margin-bottom:8px}
.chart .grid{stroke:#e4e7eb;stroke-width:1}
.chart .axis{fill:#616e7c;font-size:11px}
.chart .chart-title{fill:#1f2933;font-size:13px;font-weight:600}
.split{display:flex;height:16px;border-radius:8px;overflow:hidden;margin:2px 0 14px;
background:#e4e7eb}
.pill{display:inline-block;padding:0 7px;border-radius:9px;font-size:11px;font-weight:600;
background:#e4e7eb;color:#323f4b}
.st-SUCCESS{background:#d9f2dd;color:#1e6b2e}.st-FAILURE{background:#fde2e1;color:#b3261e}
.st-REVOKED{background:#ffe8cc;color:#9a4a00}.st-RUNNING{background:#dbeafe;color:#1d4ed8}
.tree{color:#9aa5b1;margin-right:4px}
footer{margin-top:16px;color:#7b8794;font-size:12px}
"""


def render_report(data: ReportData) -> str:
    """The whole page."""
    allocation = data.allocation
    invoice = allocation.invoice
    total = allocation.total
    status = invoice.status
    badges = f'<span class="badge {status}">{_e(status.upper())}</span>'
    review = ""
    if invoice.needs_review:
        badges += '<span class="badge review">NEEDS REVIEW</span>'
        reasons = line_review_reasons(invoice.lines)
        if data.waiting():
            reasons.append("open anomalies, listed below")
        said = "; ".join(reasons) or FLAGGED_WHEN_BUILT
        review = f'<p class="review-why">Needs review: {_e(said)}</p>'
    start = invoice.period_start.date().isoformat()
    end = (invoice.period_end - timedelta(days=1)).date().isoformat()
    body = [
        f"<h1>Usage report · {_e(invoice.org)}{badges}</h1>",
        f'<div class="sub">Invoice <span class="mono">{_e(invoice.id)}</span> · period '
        f"{_e(invoice.period)} ({start} to {end}) · prices: registry {_e(data.registry_version)}"
        f" · generated {_e(as_utc(data.generated_at).strftime('%Y-%m-%d %H:%M UTC'))}</div>",
        review,
        _cards(invoice, total, len(data.waiting())),
        _chart_section(allocation),
        _invoice_section(invoice),
        _split_section(allocation),
        _runs_section(allocation, data.top),
        _anomaly_section(data.waiting(), data.reviewed()),
        _footer(allocation),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Usage report {_e(invoice.id)}</title><style>{CSS}</style></head>"
        f"<body><main>{''.join(body)}</main></body></html>\n"
    )


def _cards(invoice: Invoice, total: AllocatedUsage, anomalies: int) -> str:
    cards = [
        ("Invoice total", f"{usd(invoice.total_micros)}", False),
        ("Tokens", f"{total.tokens:,}", False),
        ("Runs", f"{invoice.runs:,}", False),
        ("Unpriced tokens", f"{invoice.unpriced_tokens:,}", invoice.unpriced_tokens > 0),
        ("Open anomalies", f"{anomalies:,}", anomalies > 0),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card{" warn" if warn else ""}"><div class="k">{_e(k)}</div>'
            f'<div class="v">{_e(v)}</div></div>'
            for k, v, warn in cards
        )
        + "</div>"
    )


def _chart_section(allocation: Allocation) -> str:
    labels, tokens, micros = daily_series(allocation.cells, allocation.invoice)
    legend = "".join(
        f'<span><span class="sw" style="background:{s.color}"></span>{_e(s.label)}</span>'
        for s in tokens
    )
    token_chart = stacked_bars(
        title="Tokens per day",
        categories=labels,
        series=tokens,
        axis=token_axis,
        value=lambda v: f"{v:,} tokens",
    )
    cost_chart = stacked_bars(
        title="Cost per day (USD)",
        categories=labels,
        series=micros,
        axis=dollar_axis,
        value=usd,
        empty=_no_cost(allocation),
    )
    return (
        "<section><h2>Daily usage by model</h2>"
        f'<div class="legend">{legend}</div>{token_chart}{cost_chart}</section>'
    )


def _no_cost(allocation: Allocation) -> str:
    """What the cost chart says when it has no bar: why there is no cost."""
    by_tier = {row.key: row.usage.tokens for row in rows(allocation.cells, "tier")}
    if not any(by_tier.values()):
        return "no usage in this period"
    reasons = [
        f"{by_tier[tier]:,} tokens {what}"
        for tier, what in (
            ("free", "on free models"),
            ("byok", "on the customer's own key"),
            ("unpriced", "not priced yet (needs review)"),
        )
        if by_tier.get(tier)
    ]
    return "no cost in this period: " + ", ".join(reasons)


def _invoice_section(invoice: Invoice) -> str:
    head = "".join(
        f'<th class="{"n" if n > 2 else ""}">{h}</th>'
        for n, h in enumerate(
            [
                "Model",
                "Tier",
                "Price from",
                "Input",
                "Cached",
                "Output",
                "Unsplit",
                "Tokens",
                "Amount",
            ]
        )
    )
    lines = []
    for line in invoice.lines:
        tier = line.tier + (" · late" if line.late else "")
        amount = (
            _e(usd_exact(line.amount_micros))
            if line.priced and line.amount_micros is not None
            else '<span class="bad">UNPRICED</span>'
        )
        lines.append(
            f"<tr><td>{_e(line.model if line.model is not None else '(no model)')}</td>"
            f"<td>{_e(tier)}</td><td>{_e(line.price_valid_from or '–')}</td>"
            + "".join(
                f'<td class="n">{count:,}</td>'
                for count in (
                    line.input_tokens,
                    line.cached_tokens,
                    line.output_tokens,
                    line.unsplit_tokens,
                    line.tokens,
                )
            )
            + f'<td class="n">{amount}</td></tr>'
        )
    tokens = sum(line.tokens for line in invoice.lines)
    lines.append(
        f'<tr class="total"><td colspan="7">Total</td><td class="n">{tokens:,}</td>'
        f'<td class="n">{_e(usd_exact(invoice.total_micros))}</td></tr>'
    )
    return f"<section><h2>Invoice</h2><table><tr>{head}</tr>{''.join(lines)}</table></section>"


def _split_section(allocation: Allocation) -> str:
    by_tier = {row.key: row for row in rows(allocation.cells, "tier")}
    all_tokens = max(allocation.total.tokens, 1)
    bar, table = [], []
    for tier, (label, note, color) in TIER_LABELS.items():
        row = by_tier.get(tier)
        if row is None:
            continue
        share = row.usage.tokens / all_tokens
        bar.append(f'<div style="width:{share * 100:.3f}%;background:{color}"></div>')
        amount = "–" if row.usage.amount_micros is None else usd(row.usage.amount_micros)
        table.append(
            f'<tr><td><span class="sw" style="background:{color}"></span>{_e(label)}'
            f' <span class="muted">{_e(note)}</span></td><td class="n">{row.runs:,}</td>'
            f'<td class="n">{row.usage.tokens:,}</td><td class="n">{share:.1%}</td>'
            f'<td class="n">{_e(amount)}</td></tr>'
        )
    return (
        "<section><h2>Free vs paid vs customer key</h2>"
        f'<div class="split">{"".join(bar)}</div><table><tr><th>Usage</th>'
        '<th class="n">Runs</th><th class="n">Tokens</th><th class="n">Share</th>'
        f'<th class="n">Amount</th></tr>{"".join(table)}</table></section>'
    )


def _runs_section(allocation: Allocation, top: int) -> str:
    roots = run_trees(allocation.cells)
    shown = roots[:top]
    models = registry_models(allocation.cells)
    out: list[str] = []
    for root in shown:
        out += _tree_rows(root, models)
    head = (
        "<tr><th>Run</th><th>Model</th><th>Status</th><th>Session</th>"
        '<th class="n">Own tokens</th><th class="n">Own cost</th>'
        '<th class="n">With subagents</th></tr>'
    )
    more = (
        f'<p class="muted">{len(roots) - len(shown)} more top-level runs not shown; '
        '<span class="mono">chore usage --by run</span> lists them all.</p>'
        if len(roots) > len(shown)
        else ""
    )
    return (
        f"<section><h2>Top runs by cost, with their subagents</h2>"
        f"<table>{head}{''.join(out)}</table>{more}</section>"
    )


def _tree_rows(root: RunNode, models: dict[str, str]) -> list[str]:
    out: list[str] = []
    stack: list[tuple[RunNode, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        if len(out) == MAX_TREE_ROWS:
            out.append(
                f'<tr><td colspan="7" class="muted" style="padding-left:{8 + 18 * depth}px">'
                f"… {_count(root) - MAX_TREE_ROWS} more runs in this tree</td></tr>"
            )
            break
        out.append(_node_row(node, depth, models))
        stack.extend((child, depth + 1) for child in reversed(node.children))
    return out


def _count(node: RunNode) -> int:
    count, stack = 0, [node]
    while stack:
        current = stack.pop()
        count += 1
        stack.extend(current.children)
    return count


def _node_row(node: RunNode, depth: int, models: dict[str, str]) -> str:
    pad = f' style="padding-left:{8 + 18 * depth}px"'
    mark = '<span class="tree">└</span>' if depth else ""
    with_children = _e(_amount(node.total)) if node.children else ""
    if node.run is None:
        return (
            f'<tr><td{pad} colspan="4">{mark}<b>session</b> '
            f'<span class="mono">{_e(node.session_id or "(none)")}</span> '
            '<span class="muted">subagents whose spawning run is not in this period</span></td>'
            f'<td class="n"></td><td class="n"></td><td class="n">{with_children}</td></tr>'
        )
    run = node.run
    status = run.status or "?"
    kind = ' <span class="muted">subagent</span>' if run.subagent else ""
    return (
        f'<tr><td{pad}>{mark}<span class="mono">{_e(run.runner_id)}</span>{kind}</td>'
        f"<td>{_e(models.get(run.runner_id) or run.model or '(no model)')}</td>"
        f'<td><span class="{_status_class(status)}">{_e(status)}</span></td>'
        f'<td class="mono">{_e(run.session_id or "")}</td>'
        f'<td class="n">{node.own.tokens:,}</td><td class="n">{_e(_amount(node.own))}</td>'
        f'<td class="n">{with_children}</td></tr>'
    )


def _amount(usage: AllocatedUsage) -> str:
    if usage.amount_micros is None:
        return "UNPRICED"
    text = usd(usage.amount_micros)
    return f"{text} + unpriced" if usage.unpriced_tokens else text


def _anomaly_section(waiting: Sequence[OpenAnomaly], reviewed: Sequence[OpenAnomaly]) -> str:
    """The open anomalies nobody reviewed, then those a person reviewed, with the note."""
    if waiting:
        body = "".join(
            f'<tr><td><span class="pill st-FAILURE">{_e(a.kind)}</span></td>'
            f'<td class="mono">{_e(a.runner_id)}</td><td>{_e(a.detail)}</td>'
            f'<td class="muted">{_e(_when(a.first_seen))}</td></tr>'
            for a in waiting
        )
        section = (
            f"<section><h2>Anomalies needing review ({len(waiting)})</h2><table><tr><th>Kind"
            f"</th><th>Runner</th><th>Detail</th><th>First seen</th></tr>{body}</table>"
        )
    else:
        section = (
            "<section><h2>Anomalies needing review</h2>"
            '<p class="muted">None open for this period.</p>'
        )
    if reviewed:
        body = "".join(
            f'<tr><td><span class="pill">{_e(a.kind)}</span></td>'
            f'<td class="mono">{_e(a.runner_id)}</td><td>{_e(a.detail)}</td>'
            f'<td class="muted">{_e(_when(a.reviewed_at))}: {_e(a.review_note)}</td></tr>'
            for a in reviewed
        )
        section += (
            f"<h3>Reviewed ({len(reviewed)})</h3><table><tr><th>Kind</th><th>Runner</th>"
            f"<th>Detail</th><th>Reviewed</th></tr>{body}</table>"
        )
    return section + "</section>"


def _when(moment: datetime | date | None) -> str:
    if isinstance(moment, datetime):
        return moment.strftime("%Y-%m-%d %H:%M")
    return "" if moment is None else moment.isoformat()


def _footer(allocation: Allocation) -> str:
    invoice = allocation.invoice
    by_run = rows_total(rows(allocation.cells, "run"))
    weights = "exact amounts" if allocation.exact else "amounts proportional to the current prices"
    return (
        f"<footer>Every amount on this page is a share of an invoice line, split by "
        f"largest remainder on the {_e(allocation.pricing)} prices ({weights}); the runs add up "
        f"to {_e(usd_exact(by_run.priced_micros))} for an invoice total of "
        f"{_e(usd_exact(invoice.total_micros))} and {by_run.tokens:,} tokens. The invoice's "
        "lines are to the micro-dollar; the other amounts are rounded to the cent, each on "
        "its own. Self-contained page: it needs no network.</footer>"
    )
