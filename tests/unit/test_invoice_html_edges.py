"""The HTML report (`chores/reports/invoice_html.py`): what mutation testing found untested.

Found untested by mutation testing of `invoice_html.py` (h410): each test pins a behaviour
of the page that no test noticed when it broke, among them the summary cards, the free /
paid / customer-key split, the runs' costs and trees, the needs-review reason, the chart's
series, scale and geometry, and the escaping of quotes. The runner documents are metered
on mongomock (no Redis, no browser).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId

from chores import run_chore
from chores.core.money import usd
from chores.reports.invoice_html import (
    OTHER_COLOR,
    ReportData,
    Series,
    collect_report,
    compact,
    daily_series,
    dollar_axis,
    nice_ticks,
    render_report,
    stacked_bars,
    token_axis,
)

from support import NOW, ai_runner

DAY_10 = datetime(2026, 11, 10, 12, tzinfo=UTC)


def metered(db: Any, settings: Any, registry: Any, docs: list[dict[str, Any]]) -> None:
    db.tasks.insert_many(docs)
    run_chore(db, now=NOW, registry=registry, settings=settings)


def report(db: Any, settings: Any, registry: Any, org: str = "acme", **kwargs: Any) -> Any:
    data = collect_report(
        db, org, "2026-11", settings=settings, registry=registry, now=NOW, **kwargs
    )
    return data, render_report(data)


def models_used(count: int) -> list[dict[str, Any]]:
    """`count` models on Nov 10, model-k with k thousand tokens (so their rank is known)."""
    return [
        ai_runner(ObjectId(), ended=DAY_10, tokens=k * 1_000, model=f"model-{k:02}")
        for k in range(1, count + 1)
    ]


# --- the chart's series ------------------------------------------------------------------


def test_past_ten_models_the_smallest_are_drawn_as_one_other_models_series(db, settings, registry):
    """Eleven models: the nine largest are drawn each in its colour, the two smallest as one
    grey "2 other models" block holding their sum, so the legend stays readable."""
    metered(db, settings, registry, models_used(11))
    data, page = report(db, settings, registry)
    _, tokens, _ = daily_series(data.allocation.cells, data.allocation.invoice)
    names = [s.label.removesuffix(" (unpriced)") for s in tokens]
    assert names == [f"model-{k:02}" for k in range(11, 2, -1)] + ["2 other models"]
    others = tokens[-1]
    assert others.color == OTHER_COLOR
    assert others.values[10 - 1] == 1_000 + 2_000 and sum(others.values) == 3_000
    assert len(others.values) == len(tokens[0].values) == 30  # one per day of November
    assert "2 other models" in page


def test_ten_models_are_all_named_rather_than_one_other_model(db, settings, registry):
    """One model past the nine shown is named like the others: an "other models" series
    of a single model would hide its name for nothing."""
    metered(db, settings, registry, models_used(10))
    data, page = report(db, settings, registry)
    _, tokens, _ = daily_series(data.allocation.cells, data.allocation.invoice)
    assert len(tokens) == 10 and "model-01 (unpriced)" in {s.label for s in tokens}
    assert "other models" not in page


# --- the axes ----------------------------------------------------------------------------


def test_cost_axis_labels_take_the_digits_their_ticks_need_down_to_the_micro_dollar():
    """Ticks between cents are written with as many digits as they need (2,500 micros is
    $0.0025), the same for every label; never past the micro-dollar, the smallest amount
    the chore bills, even for ticks of a fraction of one."""
    assert dollar_axis([0, 2_500, 5_000]) == ["$0.0000", "$0.0025", "$0.0050"]
    assert dollar_axis([0, 10_000, 20_000]) == ["$0.00", "$0.01", "$0.02"]
    assert dollar_axis([0.0, 0.5]) == ["$0.000000", "$0.000000"]


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (0, [0, 1]),  # nothing to cover: a unit scale
        (1, [0, 0.25, 0.5, 0.75, 1]),  # a quarter is 0.25: steps of 2.5 x 10^-1
        (7, [0, 2, 4, 6, 8]),  # a quarter is 1.75: steps of 2
        (9, [0, 2.5, 5, 7.5, 10]),  # 2.25: steps of 2.5
        (18, [0, 5, 10, 15, 20]),  # 4.5: steps of 5
        (35, [0, 10, 20, 30, 40]),  # 8.75: steps of 10
        (40, [0, 10, 20, 30, 40]),  # 10 exactly: steps of 10, ending on the top
        (3_000, [0, 1_000, 2_000, 3_000]),  # 750: steps of 1,000
    ],
)
def test_axis_ticks_are_round_steps_from_zero_just_covering_the_top(top, ticks):
    """The scale of a chart: about four steps of 1, 2, 2.5 or 5 x 10^k (the smallest such
    step at least a quarter of the top), from 0 to the first tick at or above the top, so
    the tallest bar reaches near the top of the plot and the labels are round numbers."""
    assert nice_ticks(top) == pytest.approx(ticks)


def test_token_axis_labels_take_the_larger_unit_from_its_first_whole_one():
    """A tick of exactly one thousand, million or billion tokens reads 1K, 1M, 1B (not
    "1,000", "1,000K", "1,000M"): the unit changes at its first whole one."""
    assert token_axis([0, 1_000, 1_000_000, 1_000_000_000]) == ["0", "1K", "1M", "1B"]
    assert token_axis([999, 2_500, 750_000]) == ["999", "2.5K", "750K"]


def test_a_label_that_rounds_up_to_the_next_unit_reads_in_that_unit():
    """999,600 tokens round to three digits as one million: `1M`, never `1e+03K` (Python's
    `.3g` past 999) nor `1,000K`; likewise 999.6 reads `1K`. Below a unit, three digits."""
    assert compact(999_600) == "1M"
    assert compact(999.6) == "1K"
    assert compact(999_400) == "999K"
    assert compact(1_234_567) == "1.23M"


def test_the_chart_draws_a_labelled_grid_line_per_tick():
    """A bar of 2,500 micros (and an empty day): ticks every $0.001 up to $0.003, each a
    grid line with its label at its height, the plot spanning y=30 (top margin) to y=204
    (230 high, 26 of bottom margin), so a reader can read a bar's amount off the axis."""
    svg = stacked_bars(
        title="Cost per day",
        categories=["5", "6"],
        series=[Series("gpt-4o", "#111", (2_500, 0))],
        axis=dollar_axis,
        value=usd,
    )
    assert svg.count('class="grid"') == 4  # an empty day beside it changes nothing
    for n, label in enumerate(["$0.000", "$0.001", "$0.002", "$0.003"]):
        y = 204 - n * 174 / 3
        assert (
            f'<line x1="64" x2="1112" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="58" y="{y + 4:.1f}" class="axis" text-anchor="end">{label}</text>'
        ) in svg  # across the plot, the label right-aligned just left of it


# --- the page ----------------------------------------------------------------------------


def test_both_charts_are_closed_svg_elements(db, settings, registry):
    """Each chart ends its `<svg>`: an unclosed one swallows the rest of the page in a
    browser (the invoice table drawn inside the chart, or not at all)."""
    metered(db, settings, registry, models_used(2))
    _, page = report(db, settings, registry)
    assert page.count("<svg") == page.count("</svg>") == 2


def test_progress_names_each_step_in_order(db, settings, registry):
    """A long report says what it is doing: reading the ledger, allocating, reading the
    anomalies, in that order (the progress bar of `chore report`)."""
    metered(db, settings, registry, models_used(2))
    calls: list[tuple[str, int, int]] = []
    report(db, settings, registry, on_progress=lambda *call: calls.append(call))
    seen = [what for what, _, _ in calls]
    steps = [what for n, what in enumerate(seen) if n == 0 or seen[n - 1] != what]
    assert steps == [
        "reading ledger entries",
        "allocating the invoice to runs",
        "reading anomalies",
    ]
    # the last two are one step each, shown as started: 0 of 1 done
    assert calls[-2:] == [("allocating the invoice to runs", 0, 1), ("reading anomalies", 0, 1)]


def test_a_model_priced_throughout_is_labelled_by_its_name_alone(db, settings, registry):
    """Only a model with unpriced usage is marked "(unpriced)" or "(partly unpriced)" in the
    legend: a priced model marked so would send a reader looking for a price problem that
    does not exist."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, model="gpt-4o-mini")])
    data, page = report(db, settings, registry)
    _, tokens, micros = daily_series(data.allocation.cells, data.allocation.invoice)
    assert [s.label for s in tokens] == [s.label for s in micros] == ["gpt-4o-mini"]
    assert "gpt-4o-mini (" not in page and '"></span>gpt-4o-mini</span>' in page  # the legend


# --- the free / paid / customer-key split --------------------------------------------------


def test_the_split_table_gives_each_tier_its_runs_tokens_share_and_amount(db, settings, registry):
    """10,000 tokens: 6,000 paid (two runs of gpt-4o-mini input, $0.15 per million: 900
    micros), 2,000 on a free model, 1,000 on the customer's key, 1,000 on a model with no
    price. Each tier is one row with its runs, tokens, share of all tokens and amount (none
    for the unpriced one), and a bar segment as wide as its share, in the table's order."""
    docs = [
        ai_runner(ObjectId(), ended=DAY_10, tokens=3_000),
        ai_runner(ObjectId(), ended=DAY_10, tokens=3_000),
        ai_runner(ObjectId(), ended=DAY_10, tokens=2_000, model="ollama/llama3.1"),
        ai_runner(ObjectId(), ended=DAY_10, tokens=1_000, ai_key_source="byok"),
        ai_runner(ObjectId(), ended=DAY_10, tokens=1_000, model="acme-labs/frontier-2"),
    ]
    metered(db, settings, registry, docs)
    _, page = report(db, settings, registry)
    split = page[page.index("<h2>Free vs paid") : page.index("</section>", page.index("<h2>Free"))]
    expected = [  # label, runs, tokens, share, amount
        ("Paid", 2, "6,000", "60.0%", usd(900)),
        ("Free models", 1, "2,000", "20.0%", "$0.00"),
        ("Customer key", 1, "1,000", "10.0%", "$0.00"),
        ("Unpriced", 1, "1,000", "10.0%", "–"),
    ]
    for label, runs, tokens, share, amount in expected:
        assert f'{label} <span class="muted">' in split, label
        row = split[split.index(f"{label} <span") :]
        row = row[: row.index("</tr>")]
        cells = row.split('<td class="n">')[1:]
        assert [c.removesuffix("</td>") for c in cells] == [str(runs), tokens, share, amount]
    rows_at = [split.index(f"{label} <span") for label, *_ in expected]
    assert rows_at == sorted(rows_at)
    widths = split.split('<div style="width:')[1:]
    assert [w[: w.index("%")] for w in widths] == ["60.000", "20.000", "10.000", "10.000"]


# --- the runs ----------------------------------------------------------------------------


def spawned(child: ObjectId, parent: ObjectId, depth: int = 0) -> dict[str, Any]:
    """The spawn finding of a subagent (baseline 0) naming the runner that spawned it."""
    counters = {"ai_tokens": 0, "ai_prompt_tokens": 0, "ai_completion_tokens": 0}
    context = {"workspace_id": "acme", "task_id": str(parent), **counters}
    if depth:
        context["ai_subagent_depth"] = depth
    return {
        "_type": "ai",
        "ai_type": "task",
        "extra_data": {"runner_id": str(child)},
        "_context": context,
    }


def test_a_tree_past_25_rows_says_how_many_runs_it_leaves_out(db, settings, registry):
    """A run that spawned 26 subagents, of which the costliest and the 23rd each spawned
    one more: 29 runs in its tree. The page shows 25 rows, costliest first (the run, the
    first subagent and its own, then the 2nd to 23rd subagents) and says "… 4 more runs in
    this tree" where the next row would be, below the 23rd's subagent. Each row is indented
    18 px per level below the run's 8 px, with a tree mark on subagents only."""
    parent, first, later = ObjectId(), ObjectId(), ObjectId()
    children = [ObjectId() for _ in range(26)]
    sub = {"subagent": "yes", "ai_subagent_depth": 1, "parent_session_id": "sP"}
    docs = [ai_runner(parent, ended=DAY_10, tokens=900_000, model="gpt-4o", session_id="sP")]
    docs += [
        ai_runner(child, ended=DAY_10, tokens=(30 - n) * 1_000, session_id=f"s{n}", **sub)
        for n, child in enumerate(children)
    ]
    for grandchild, tokens, n in ((first, 2_000, 0), (later, 500, 22)):
        docs.append(
            ai_runner(grandchild, ended=DAY_10, tokens=tokens, session_id=f"g{n}",
                      subagent="yes", ai_subagent_depth=2, parent_session_id=f"s{n}")
        )  # fmt: skip
    db.findings.insert_many(
        [spawned(child, parent) for child in children]
        + [spawned(first, children[0], 1), spawned(later, children[22], 1)]
    )
    metered(db, settings, registry, docs)
    _, page = report(db, settings, registry)
    runs = page[page.index("Top runs by cost") :]
    runs = runs[: runs.index("</table>")]
    rows = runs.split("<tr>")[2:]  # past the heading row
    assert len(rows) == 26 and "… 4 more runs in this tree" in rows[-1]
    shown = [row[row.index('class="mono">') + 13 :].split("<")[0] for row in rows[:-1]]
    order = [parent, children[0], first, *children[1:23]]
    assert shown == [str(runner) for runner in order]
    pads = [row.split("padding-left:")[1].split("px")[0] for row in rows]
    assert pads == ["8", "26", "44"] + ["26"] * 22 + ["44"]
    assert [row.count('class="tree">└') for row in rows[:3]] == [0, 1, 1]


def run_row(page: str, runner: object) -> list[str]:
    """The cells of the row of `runner` in the runs table past its first (model, status,
    session, own tokens, own cost, with subagents), tags stripped."""
    import re

    runs = page[page.index("Top runs by cost") :]
    row = runs[runs.index(f">{runner}<") :]
    row = row[: row.index("</tr>")]
    return [re.sub("<[^>]*>", "", "<td" + cell) for cell in row.split("<td")[1:]]


def test_a_runs_cost_says_unpriced_when_none_or_part_of_it_has_a_price(db, settings, registry):
    """A priced run shows its own cost (1,000 gpt-4o-mini input tokens at $0.15 per million:
    150 micros); a run of a model with no price says UNPRICED, not $0.00; and the run that
    spawned it adds "+ unpriced" to its total with subagents, which is not the whole cost."""
    priced, alone, spawner, child = (ObjectId() for _ in range(4))
    docs = [
        ai_runner(priced, ended=DAY_10, tokens=1_000, session_id="s1"),
        ai_runner(alone, ended=DAY_10, tokens=1_000, model="acme-labs/frontier-2"),
        ai_runner(spawner, ended=DAY_10, tokens=1_000, session_id="s2"),
        ai_runner(child, ended=DAY_10, tokens=1_000, model="acme-labs/frontier-2",
                  session_id="s3", subagent="yes", ai_subagent_depth=1, parent_session_id="s2"),
    ]  # fmt: skip
    db.findings.insert_one(spawned(child, spawner))
    metered(db, settings, registry, docs)
    _, page = report(db, settings, registry)
    assert run_row(page, priced)[3:] == ["1,000", usd(150), ""]
    assert run_row(page, alone)[3:] == ["1,000", "UNPRICED", ""]
    assert run_row(page, spawner)[3:] == ["1,000", usd(150), f"{usd(150)} + unpriced"]
    assert run_row(page, child)[3:] == ["1,000", "UNPRICED", ""]


# --- the anomalies -----------------------------------------------------------------------


def test_anomalies_say_when_they_were_first_seen_and_reviewed(db, settings, registry):
    """An anomaly row says when the run first saw it, and once reviewed, when and with what
    note, to the minute (the run and the review both at 2026-11-25 12:00 UTC)."""
    from chores.run.review import review_anomalies

    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, tokens="12")])
    _, page = report(db, settings, registry)
    assert '<td class="muted">2026-11-25 12:00</td></tr>' in page
    review_anomalies(db, "acme", "2026-11", note="ok", now=NOW, settings=settings)
    _, page = report(db, settings, registry)
    assert '<td class="muted">2026-11-25 12:00: ok</td></tr>' in page


def test_an_anomaly_whose_first_sighting_is_not_recorded_shows_an_empty_time(
    db, settings, registry
):
    """An anomaly record without `first_seen` (removed by hand) is still listed, its time
    left empty rather than written as `None`."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, tokens="12")])
    db.billing_anomalies.update_many({}, {"$unset": {"first_seen": 1}})
    _, page = report(db, settings, registry)
    assert "malformed_counters" in page and '<td class="muted"></td></tr>' in page
    assert "None" not in page


def test_stacked_bars_are_placed_in_their_slot_at_their_height():
    """The plot spans x 64..1112 (1120 wide, 64 px of axis labels on the left, 8 on the
    right) and y 30..204; two days share it, 524 px each, each bar 72% of its slot and
    centred in it. Ticks go to 3,000 (the taller day), so 1,000 is 58 px high: the first
    day's blocks (1,000 then 2,000) are stacked from the baseline up to the top of the plot,
    the second day's 2,000 reaches two thirds of it; a zero block is not drawn. Each day is
    labelled under the middle of its slot."""
    import re

    svg = stacked_bars(
        title="Tokens per day",
        categories=["1", "2"],
        series=[Series("a", "#111", (1_000, 2_000)), Series("b", "#222", (2_000, 0))],
        axis=dollar_axis,
        value=lambda v: f"{v:,}",
    )
    rects = re.findall(
        r'<rect x="([\d.]+)" y="([\d.]+)" width="([\d.]+)" height="([\d.]+)" fill="(#\d+)">'
        r"<title>([^<]*)</title>",
        svg,
    )
    assert rects == [
        ("137.4", "146.0", "377.3", "58.0", "#111", "1 · a: 1,000"),
        ("137.4", "30.0", "377.3", "116.0", "#222", "1 · b: 2,000"),
        ("661.4", "88.0", "377.3", "116.0", "#111", "2 · a: 2,000"),
    ]
    assert '<text x="326.0" y="222" class="axis" text-anchor="middle">1</text>' in svg
    assert '<text x="850.0" y="222" class="axis" text-anchor="middle">2</text>' in svg
    assert "credits not drawn" not in svg and "no usage" not in svg


def test_an_empty_chart_keeps_its_baseline_and_says_why_in_the_middle():
    """No bar has any height: the chart draws its baseline ($0.00 at y=204) and no scale
    above it, and says its `empty` text across the middle of the plot (588, 117), so the
    reader is not left with a blank box."""
    svg = stacked_bars(
        title="Cost per day (USD)",
        categories=["1", "2"],
        series=[Series("a", "#111", (0, 0))],
        axis=dollar_axis,
        value=usd,
        empty="no cost in this period: 5 tokens on free models",
    )
    assert svg.count('class="grid"') == 1 and "<rect" not in svg
    assert 'y="208.0" class="axis" text-anchor="end">$0.00</text>' in svg
    assert (
        '<text x="588.0" y="117.0" class="axis" text-anchor="middle">'
        "no cost in this period: 5 tokens on free models</text>"
    ) in svg


def test_credits_are_named_at_the_top_right_of_the_chart():
    """A negative block is not drawn; the chart names the credit at its top right corner
    (x=1112, the plot's right edge, y=16, the title's line), where it is seen."""
    svg = stacked_bars(
        title="Cost per day (USD)",
        categories=["1"],
        series=[Series("a", "#111", (5_000,)), Series("b", "#222", (-1_000,))],
        axis=dollar_axis,
        value=usd,
    )
    assert (
        '<text x="1112" y="16" class="axis" text-anchor="end">'
        f"credits not drawn: {usd(-1_000)} (in the tables)</text>"
    ) in svg
    only_credit = stacked_bars(
        title="Cost per day (USD)",
        categories=["1", "2"],
        series=[Series("b", "#222", (-1_000, 0))],
        axis=dollar_axis,
        value=usd,
    )  # no bar at all: the chart is empty, and still names the credit
    assert "<rect" not in only_credit and only_credit.count('class="grid"') == 1
    assert "no usage in this period" in only_credit and "credits not drawn" in only_credit
    # the one day's bar: 72% of the whole plot's width, centred; 5,000 of a 6,000 scale
    assert svg.count("<rect") == 1
    assert '<rect x="210.7" y="59.0" width="754.6" height="145.0" fill="#111">' in svg


# --- needs review ------------------------------------------------------------------------


def review_text(page: str) -> str | None:
    """What the page says under its title about why the invoice needs review, if anything."""
    if '<p class="review-why">' not in page:
        return None
    said = page[page.index('<p class="review-why">') + len('<p class="review-why">') :]
    return said[: said.index("</p>")]


def test_only_an_invoice_that_needs_review_is_badged_and_says_why(db, settings, registry):
    """A priced invoice with no anomaly carries no NEEDS REVIEW badge and no reason; one
    with an open anomaly carries both, the reason pointing at the anomalies listed below."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10)])
    _, clean = report(db, settings, registry)
    assert "NEEDS REVIEW" not in clean and review_text(clean) is None
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, tokens="12")])
    data, flagged = report(db, settings, registry)
    assert data.allocation.invoice.needs_review
    assert '<span class="badge review">NEEDS REVIEW</span></h1>' in flagged
    assert review_text(flagged) == "Needs review: open anomalies, listed below"


def test_a_final_flagged_for_anomalies_reviewed_since_says_so(db, settings, registry):
    """A final invoice keeps the flag it was built with. Once its anomalies are reviewed,
    the page still shows NEEDS REVIEW, and says that no anomaly of it is waiting for review
    any more (a reviewed one stays open, docs/contract.md), rather than giving no reason or
    pointing at an empty list."""
    from chores import finalize_invoices
    from chores.run.review import review_anomalies

    october = datetime(2026, 10, 20, tzinfo=UTC)
    db.tasks.insert_many(
        [ai_runner(ObjectId(), ended=october), ai_runner(ObjectId(), ended=october, tokens="12")]
    )
    run_chore(db, now=datetime(2026, 10, 25, tzinfo=UTC), registry=registry, settings=settings)
    assert finalize_invoices(db, now=NOW, settings=settings)
    review_anomalies(db, "acme", "2026-10", note="ok", now=NOW, settings=settings)
    data = collect_report(db, "acme", "2026-10", settings=settings, registry=registry, now=NOW)
    page = render_report(data)
    assert data.allocation.invoice.status == "final" and not data.waiting()
    assert "NEEDS REVIEW" in page and "Reviewed (1)" in page
    assert review_text(page) == (
        "Needs review: flagged when it was built; no anomaly of it is waiting for review any more"
    )


def test_an_invoice_with_no_priced_model_names_todays_registry_when_it_was_built_with_it(
    db, settings, registry
):
    """No model of the invoice has a price, so no excerpt of the registry was stored with
    it; built with today's registry, the page names that registry's version, not "another
    version" as if it had been priced by a registry since replaced."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, model="acme-labs/x")])
    data, page = report(db, settings, registry)
    assert data.allocation.invoice.registry == registry.fingerprint
    assert data.registry_version == registry.version
    assert f"prices: registry {registry.version} · generated" in page


def test_a_report_of_one_token_gives_it_the_whole_share(db, settings, registry):
    """The smallest invoice, one token: it is 100% of the usage, a full bar."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, tokens=1)])
    _, page = report(db, settings, registry)
    assert '<div style="width:100.000%;' in page and '<td class="n">100.0%</td>' in page


def test_only_top_level_runs_past_top_are_said_to_be_left_out(db, settings, registry):
    """Three top-level runs: with `top` 2 the page says one more is not shown (and where to
    find it); with `top` 3 every run is shown and no such note is written."""
    metered(db, settings, registry, models_used(3))
    _, cut = report(db, settings, registry, top=2)
    assert '<p class="muted">1 more top-level runs not shown; ' in cut
    _, whole = report(db, settings, registry, top=3)
    assert "more top-level runs not shown" not in whole


def test_quotes_in_a_model_name_are_escaped_too(db, settings, registry):
    """A model name is text from a runner document: its quotes are written as entities
    like its angle brackets, so it cannot close an attribute and add one of its own
    (`_e` is safe in quoted attributes as well as in element content)."""
    hostile = "x\" onmouseover='alert(1)"
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10, model=hostile)])
    _, page = report(db, settings, registry)
    assert "onmouseover" in page and "x&quot; onmouseover=&#x27;alert(1)" in page
    assert 'x" onmouseover' not in page and "onmouseover='" not in page


def cards(page: str) -> list[tuple[bool, str, str]]:
    """The summary cards: (shown as a warning, name, value)."""
    import re

    found = re.findall(
        r'<div class="card( warn)?"><div class="k">([^<]*)</div><div class="v">([^<]*)</div>',
        page,
    )
    return [(bool(warn), name, value) for warn, name, value in found]


def test_the_cards_sum_up_the_invoice_and_only_unpriced_usage_and_anomalies_warn(
    db, settings, registry
):
    """The five cards: the invoice total (1,000 gpt-4o-mini input tokens at $0.15 per
    million: 150 micros), its tokens, runs, unpriced tokens and open anomalies. None is red
    for a clean invoice; a single unpriced token and a single open anomaly each turn their
    card red, the others stay as they are."""
    metered(db, settings, registry, [ai_runner(ObjectId(), ended=DAY_10)])
    _, clean = report(db, settings, registry)
    assert cards(clean) == [
        (False, "Invoice total", usd(150)),
        (False, "Tokens", "1,000"),
        (False, "Runs", "1"),
        (False, "Unpriced tokens", "0"),
        (False, "Open anomalies", "0"),
    ]
    more = [
        ai_runner(ObjectId(), ended=DAY_10, tokens=1, model="acme-labs/x"),
        ai_runner(ObjectId(), ended=DAY_10, tokens="12"),
    ]
    metered(db, settings, registry, more)
    _, flagged = report(db, settings, registry)
    assert cards(flagged) == [
        (False, "Invoice total", usd(150)),
        (False, "Tokens", "1,001"),
        (False, "Runs", "2"),
        (True, "Unpriced tokens", "1"),
        (True, "Open anomalies", "1"),
    ]


def test_a_block_of_one_is_drawn_at_least_half_a_pixel_high():
    """One token beside 999 on a 1,000 scale is 0.17 px: it is still drawn, half a pixel
    high, so that no usage is invisible; the block above it starts where it ends."""
    svg = stacked_bars(
        title="Tokens per day",
        categories=["1"],
        series=[Series("a", "#111", (1,)), Series("b", "#222", (999,))],
        axis=token_axis,
        value=lambda v: f"{v:,} tokens",
    )
    assert '<rect x="210.7" y="203.8" width="754.6" height="0.5" fill="#111">' in svg
    assert '<rect x="210.7" y="30.0" width="754.6" height="173.8" fill="#222">' in svg


def test_a_month_without_late_usage_has_no_late_bar(db, settings, registry):
    """The charts open with a "late" bar only for usage of earlier periods billed late:
    usage on the first and the last day of November alone gives the 30 days, no more."""
    docs = [
        ai_runner(ObjectId(), ended=datetime(2026, 11, 1, 12, tzinfo=UTC)),
        ai_runner(ObjectId(), ended=datetime(2026, 11, 30, 12, tzinfo=UTC)),
    ]
    now = datetime(2026, 11, 30, 20, tzinfo=UTC)
    db.tasks.insert_many(docs)
    run_chore(db, now=now, registry=registry, settings=settings)
    data = collect_report(db, "acme", "2026-11", settings=settings, registry=registry, now=now)
    labels, tokens, micros = daily_series(data.allocation.cells, data.allocation.invoice)
    assert labels == [str(day) for day in range(1, 31)]
    assert all(len(s.values) == len(labels) for s in (*tokens, *micros))  # one per day
    assert tokens[0].values[0] == tokens[0].values[-1] == 1_000
    page = render_report(data)
    assert ">late</text>" not in page
    assert "period 2026-11 (2026-11-01 to 2026-11-30)" in page  # the last day is the 30th


def test_subagents_whose_spawning_run_is_not_in_the_period_are_held_by_their_session(
    db, settings, registry
):
    """A subagent whose spawn finding names a run this period does not hold is listed under
    a row of its session (the session's id, what the row is, the subagents' total), itself
    a row below it, not a top-level run nor under an unrelated run."""
    child = ObjectId()
    db.findings.insert_one(spawned(child, ObjectId()))  # a spawning run not in November
    doc = ai_runner(child, ended=DAY_10, session_id="sess-7", subagent="yes",
                    ai_subagent_depth=1, parent_session_id="sess-0")  # fmt: skip
    metered(db, settings, registry, [doc])
    _, page = report(db, settings, registry)
    runs = page[page.index("Top runs by cost") :]
    assert (
        '<td style="padding-left:8px" colspan="4"><b>session</b> <span class="mono">sess-7'
        '</span> <span class="muted">subagents whose spawning run is not in this period'
        f'</span></td><td class="n"></td><td class="n"></td><td class="n">{usd(150)}</td></tr>'
    ) in runs
    assert run_row(page, child)[3:] == ["1,000", usd(150), ""]


def test_the_invoice_table_aligns_its_numbers_right_and_its_names_left(db, settings, registry):
    """The invoice's lines: the model, tier and date of the price applied are text
    (left-aligned; an unpriced line's missing date is a dash), the five counts and the
    amount numbers (right-aligned, so their digits line up)."""
    docs = [ai_runner(ObjectId(), ended=DAY_10), ai_runner(ObjectId(), ended=DAY_10, model="x/y")]
    metered(db, settings, registry, docs)
    _, page = report(db, settings, registry)
    table = page[page.index("<h2>Invoice</h2>") :]
    mini = next(model for model in registry.models if model.id == "gpt-4o-mini")
    since = max(p.valid_from for p in mini.prices if p.valid_from <= DAY_10.date())
    names = ["Model", "Tier", "Price from"]
    numbers = ["Input", "Cached", "Output", "Unsplit", "Tokens", "Amount"]
    head = "".join(f'<th class="">{h}</th>' for h in names)
    head += "".join(f'<th class="n">{h}</th>' for h in numbers)
    assert f"<table><tr>{head}</tr>" in table
    assert f"<tr><td>gpt-4o-mini</td><td>paid</td><td>{since.isoformat()}</td>" in table
    assert "<tr><td>x/y</td><td>paid</td><td>–</td>" in table


def test_by_default_the_report_shows_ten_top_level_runs(db, settings, registry):
    """A caller of the library that gives no `top` to `collect_report` or `ReportData` gets
    ten top-level runs, as `chore report` without `--top`: of eleven, one is left out."""
    metered(db, settings, registry, models_used(11))
    data, page = report(db, settings, registry)  # no `top`
    assert '<p class="muted">1 more top-level runs not shown; ' in page
    rebuilt = ReportData(data.allocation, data.anomalies, data.registry_version, NOW)
    assert '<p class="muted">1 more top-level runs not shown; ' in render_report(rebuilt)
