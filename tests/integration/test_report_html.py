"""`chore report`: one self-contained HTML page whose numbers are the invoice's, escaped
throughout, and that a real headless browser renders with its chart.

The browser test needs Debian's `chromium`; it fails under `CI=true` when chromium is
missing and skips elsewhere.
`UPDATE_REPORT_SCREENSHOT=1 pytest tests/integration/test_report_html.py` also refreshes
`docs/report.png` and `docs/report-example.html`.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import ObjectId
from click.testing import CliRunner

from chores import Settings, get_settings, run_chore
from chores.cli import main
from chores.core.money import usd
from chores.demo.corpus import generate_corpus
from chores.reports.breakdown import rows, total
from chores.reports.invoice_html import (
    FREE_COLOR,
    PALETTE,
    TIER_LABELS,
    UNPRICED_COLOR,
    collect_report,
    compact,
    daily_series,
    dollar_axis,
    model_color,
    nice_ticks,
    render_report,
)
from pricing import load_registry

from support import NOW, ai_runner, link_spawns, metered_months

DOCS = Path(__file__).resolve().parents[2] / "docs"
HOSTILE_ORG = "<script>alert(1)</script>"
HOSTILE_MODEL = "<img src=x onerror=alert(1)>"
WIDTH, HEIGHT = 1280, 2000
NOVEMBER = datetime(2026, 11, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def acme() -> Any:
    """A metered month of `acme` (final October, November draft with late lines)."""
    registry = load_registry()
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    metered_months(db, settings, registry, seed=6, orgs=("acme", "globex"))
    data = collect_report(db, "acme", "2026-11", settings=settings, registry=registry, now=NOW)
    return data, render_report(data)


def test_report_shows_the_invoice_and_adds_up(acme):
    data, page = acme
    invoice = data.allocation.invoice
    assert usd(invoice.total_micros) in page
    assert page.count("<svg") == 2 and page.count("<rect") > 20
    for line in invoice.lines:
        assert str(line.model) in page
    for section in ("Daily usage by model", "Free vs paid vs customer key", "Top runs by cost"):
        assert section in page
    assert "Anomalies needing review (" in page and "malformed_counters" in page
    labels, tokens, micros = daily_series(data.allocation.cells, invoice)
    assert labels[0] == "late" and labels[1:] == [str(d) for d in range(1, 31)]
    assert sum(sum(s.values) for s in micros) == invoice.total_micros
    assert sum(sum(s.values) for s in tokens) == sum(line.tokens for line in invoice.lines)
    by_tier = total(rows(data.allocation.cells, "tier"))
    assert by_tier.priced_micros == invoice.total_micros


def test_report_is_self_contained(acme):
    _, page = acme
    for needle in ("http:", "https:", "src=", "href=", "url(", "@import", "<script", "<link"):
        assert needle not in page.lower(), needle


def hostile_docs() -> list[dict[str, Any]]:
    start = NOW - timedelta(days=3)

    def ai(model: str, prompt: int, completion: int, **context: Any) -> dict[str, Any]:
        return {
            "_id": ObjectId(),
            "name": "ai",
            "status": "SUCCESS",
            "start_time": start,
            "end_time": start + timedelta(minutes=5),
            "last_updated_db": start.timestamp(),
            "context": {
                "workspace_id": HOSTILE_ORG,
                "session_id": "<b>session</b>",
                "ai_model": model,
                "ai_tokens": prompt + completion,
                "ai_prompt_tokens": prompt,
                "ai_completion_tokens": completion,
                **context,
            },
        }

    return [
        ai("gpt-4o-mini", 120_000, 30_000),
        ai(HOSTILE_MODEL, 5_000, 1_000),
        ai("gpt-4o-mini", 1, 1, ai_tokens="<script>alert(2)</script>"),
    ]


def test_every_value_from_the_data_is_escaped(db, settings, registry):
    db.tasks.insert_many(hostile_docs())
    run_chore(db, now=NOW, registry=registry, settings=settings)
    data = collect_report(db, HOSTILE_ORG, "2026-11", settings=settings, registry=registry, now=NOW)
    page = render_report(data)
    assert "<script" not in page.lower() and "<img" not in page.lower() and "<b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "alert(2)" in page  # the anomaly's detail, escaped
    assert usd(data.allocation.invoice.total_micros) in page


def test_control_characters_from_the_data_are_shown_as_escapes_and_statuses_stay_text(
    db, settings, registry
):
    """Outside review: a model named `\\x1b[2J\\x1b[31mRED` reached the page raw (in a cell,
    the title, the review text), a bidirectional override reversed the rest of its cell,
    and a status `FAILURE SUCCESS` gave its run's badge both classes."""
    import re

    docs = hostile_docs()
    docs[0]["status"] = "FAILURE SUCCESS"
    docs[0]["context"]["session_id"] = "abc\u202egnp.exe\t\u2028"
    docs[1]["context"]["ai_model"] = "\x1b[2J\x1b[31mRED\x00\u200f"
    db.tasks.insert_many(docs)
    run_chore(db, now=NOW, registry=registry, settings=settings)
    data = collect_report(db, HOSTILE_ORG, "2026-11", settings=settings, registry=registry, now=NOW)
    page = render_report(data)
    unsafe = "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2066-\u2069]"
    assert not re.search(unsafe, page)  # a line break (the page's own) is all there is
    assert "\\x1b[2J\\x1b[31mRED\\x00\\u200f" in page and "abc\\u202egnp.exe\\t\\u2028" in page
    assert 'class="pill">FAILURE SUCCESS<' in page and "st-FAILURE SUCCESS" not in page


def test_the_invoice_lines_are_shown_to_the_micro_dollar_and_add_up(acme):
    """Outside review: the lines, each rounded to the cent, added up to $0.33 under a total
    of $0.34, and the page said the runs "add up to $0.34": the invoice's own table is
    to the micro-dollar, as `invoice show` gives its exact total."""
    from chores.core.money import usd_exact

    data, page = acme
    invoice = data.allocation.invoice
    section = page[
        page.index("<h2>Invoice</h2>") : page.index("</section>", page.index("<h2>Invoice"))
    ]
    shown = [usd_exact(line.amount_micros) for line in invoice.lines if line.priced]
    assert shown and all(f">{amount}</td>" in section for amount in shown)
    assert f">{usd_exact(invoice.total_micros)}</td></tr></table>" in section
    assert f"for an invoice total of {usd_exact(invoice.total_micros)}" in page


def test_a_reviewed_anomaly_is_listed_apart_with_its_note_escaped(db, settings, registry):
    from chores.run.review import review_anomalies

    db.tasks.insert_many(hostile_docs())
    run_chore(db, now=NOW, registry=registry, settings=settings)
    before = render_report(
        collect_report(db, HOSTILE_ORG, "2026-11", settings=settings, registry=registry, now=NOW)
    )
    assert "Anomalies needing review (1)" in before and "Reviewed (" not in before
    note = "<script>alert(3)</script> checked by ops"
    review_anomalies(
        db, HOSTILE_ORG, "2026-11", note=note, now=NOW, registry=registry, settings=settings
    )
    page = render_report(
        collect_report(db, HOSTILE_ORG, "2026-11", settings=settings, registry=registry, now=NOW)
    )
    assert "None open for this period." in page and "Reviewed (1)" in page
    assert "&lt;script&gt;alert(3)&lt;/script&gt; checked by ops" in page
    assert "<script" not in page.lower()


@pytest.fixture
def report_db(env_db, registry):
    env_db.tasks.insert_many(hostile_docs())
    run_chore(env_db, now=NOW, registry=registry, settings=get_settings())
    return env_db


def test_report_command_writes_the_file(report_db, tmp_path):
    out = tmp_path / "report.html"
    args = ["report", "--org", HOSTILE_ORG, "--period", "2026-11", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--now", NOW.isoformat()], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    invoice = report_db.billing_invoices.find_one({"_id": f"{HOSTILE_ORG}:2026-11"})
    assert result.output.startswith(f"wrote {out}: invoice {HOSTILE_ORG}:2026-11 (draft)")
    assert usd(invoice["total_micros"]) in out.read_text()
    quiet = CliRunner().invoke(main, [*args, "--quiet"], catch_exceptions=False)
    assert quiet.exit_code == 0 and quiet.output == ""
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp file left
    assert result.stdout.rstrip().endswith(", 1 anomaly to review")


def test_the_report_commands_count_of_open_anomalies_is_the_pages(report_db, tmp_path):
    """Once reviewed, the summary line said "1 open anomaly" while the page said 0 open
    (walk-through review): both count the anomalies nobody reviewed, the line the reviewed
    ones apart."""
    from chores.run.review import review_anomalies

    settings = get_settings()
    review_anomalies(report_db, HOSTILE_ORG, "2026-11", note="ok", now=NOW, settings=settings)
    out = tmp_path / "report.html"
    args = ["report", "--org", HOSTILE_ORG, "--period", "2026-11", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--now", NOW.isoformat()], catch_exceptions=False)
    assert result.stdout.rstrip().endswith(", 0 anomalies to review, 1 reviewed")
    assert 'Open anomalies</div><div class="v">0<' in out.read_text()


def test_report_command_errors(report_db, tmp_path):
    missing = CliRunner().invoke(
        main, ["report", "--org", "nobody", "--period", "2026-11", "--out", str(tmp_path / "r")]
    )
    assert missing.exit_code == 1 and "no invoice for org 'nobody'" in missing.output
    assert not (tmp_path / "r").exists()
    nowhere = tmp_path / "missing-dir" / "r.html"
    args = ["report", "--org", HOSTILE_ORG, "--period", "2026-11", "--out", str(nowhere)]
    failed = CliRunner().invoke(main, args)
    assert failed.exit_code == 1 and "cannot write" in failed.output


def test_progress_is_reported_while_building(db, settings, registry):
    db.tasks.insert_many(hostile_docs())
    run_chore(db, now=NOW, registry=registry, settings=settings)
    seen: list[tuple[str, int, int]] = []
    collect_report(
        db,
        HOSTILE_ORG,
        "2026-11",
        settings=settings,
        registry=registry,
        now=NOW,
        on_progress=lambda what, done, total: seen.append((what, done, total)),
    )
    assert ("reading ledger entries", 2, 2) in seen
    assert seen[-1][0] == "reading anomalies"


# --- a real browser --------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("chromium is not installed; CI must `apt-get install -y chromium`")
    pytest.skip("chromium is not installed (apt-get install -y chromium)")


def screenshot(page: Path, png: Path, profile: Path, *, height: int = HEIGHT) -> None:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        f"--window-size={WIDTH},{height}",
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0 and png.exists(), done.stderr.decode(errors="replace")[-2000:]


def png_rows(data: bytes) -> tuple[int, int, int, Iterator[bytes]]:
    """Width, height, channels and the unfiltered rows of an 8-bit RGB(A) PNG, checking the
    signature and every chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, idat, header = 8, [], None
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        body = data[position + 8 : position + 8 + length]
        (crc,) = struct.unpack(">I", data[position + 8 + length : position + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        position += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, header
    channels = 3 if color == 2 else 4
    stride = width * channels
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == height * (stride + 1)

    def unfiltered() -> Iterator[bytes]:
        previous = bytearray(stride)
        for y in range(height):
            start = y * (stride + 1)
            kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
            if kind == 1:
                for i in range(channels, stride):
                    line[i] = (line[i] + line[i - channels]) & 0xFF
            elif kind == 2:
                line = bytearray((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
            elif kind == 3:
                for i in range(stride):
                    left = line[i - channels] if i >= channels else 0
                    line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
            elif kind == 4:
                for i in range(stride):
                    a = line[i - channels] if i >= channels else 0
                    b = previous[i]
                    c = previous[i - channels] if i >= channels else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (
                        line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)
                    ) & 0xFF
            yield bytes(line)
            previous = line

    return width, height, channels, unfiltered()


def test_report_renders_in_headless_chromium(acme, tmp_path):
    data, page = acme
    report = tmp_path / "report.html"
    report.write_text(page, encoding="utf-8")
    png = tmp_path / "report.png"
    screenshot(report, png, tmp_path / "profile")
    width, height, channels, lines = png_rows(png.read_bytes())
    assert (width, height) == (WIDTH, HEIGHT)
    colors: set[bytes] = set()
    chart_pixels = 0
    _, tokens, _ = daily_series(data.allocation.cells, data.allocation.invoice)
    first_series = bytes(int(tokens[0].color[i : i + 2], 16) for i in (1, 3, 5))
    for y, line in enumerate(lines):
        if y >= 1000:  # the header, cards, chart and invoice are above
            break
        pixels = [line[n : n + 3] for n in range(0, len(line), channels)]
        colors.update(pixels)
        chart_pixels += pixels.count(first_series)
    assert len(colors) > 100, "the page looks blank"
    assert chart_pixels > 500, "the chart's bars are not drawn"
    assert data.allocation.exact


# --- issue 18 item 8: free-only and unpriced orgs, stable colours, one axis format ----------

FREE_ORG, UNPRICED_ORG = "freebie", "newmodels"


@pytest.fixture(scope="module")
def free_and_unpriced() -> dict[str, Any]:
    """A month of an org that used only free models, and one whose models are partly
    unknown to the registry (unpriced), both rendered."""
    registry = load_registry()
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    corpus = generate_corpus(
        seed=7, orgs=(FREE_ORG, UNPRICED_ORG), runs_per_org=40, start=NOVEMBER, days=29
    )
    link_spawns(corpus)
    for n, task in enumerate(corpus.tasks):
        context = task.get("context")
        if not isinstance(context, dict) or "ai_model" not in context:
            continue
        if context.get("workspace_id") == FREE_ORG:
            context["ai_model"] = ("ollama/llama3.1", "qwen2.5:7b")[n % 2]
            context["ai_key_source"] = "platform"
        elif n % 3 == 0:
            context["ai_model"] = "acme-labs/frontier-2"  # no price in the registry
    db.tasks.insert_many(corpus.tasks)
    db.findings.insert_many(corpus.findings)
    now = datetime(2026, 11, 30, 20, tzinfo=UTC)
    run_chore(db, now=now, registry=registry, settings=settings)
    pages = {}
    for org in (FREE_ORG, UNPRICED_ORG):
        data = collect_report(
            db, org, "2026-11", settings=settings, registry=registry, now=now, top=6
        )
        pages[org] = (data, render_report(data))
    return pages


def test_free_only_usage_says_it_was_free_not_absent(free_and_unpriced):
    data, page = free_and_unpriced[FREE_ORG]
    invoice = data.allocation.invoice
    assert invoice.total_micros == 0 and data.allocation.total.tokens > 0
    assert {line.tier for line in invoice.lines} == {"free"}
    assert "no usage in this period" not in page
    assert f"no cost in this period: {data.allocation.total.tokens:,} tokens on free models" in page


def test_unpriced_usage_is_named_and_red(free_and_unpriced):
    data, page = free_and_unpriced[UNPRICED_ORG]
    assert data.allocation.invoice.unpriced_tokens > 0
    assert "no usage in this period" not in page
    cells = [c for c in data.allocation.cells if c.line.model == "acme-labs/frontier-2"]
    priced = any(c.usage.tokens > c.usage.unpriced_tokens for c in cells)
    unpriced = any(c.usage.unpriced_tokens for c in cells)
    assert unpriced
    # review: "(unpriced)" named a model whose usage was priced on other days
    label = "(partly unpriced)" if priced else "(unpriced)"
    assert f"acme-labs/frontier-2 {label}" in page


def test_a_model_keeps_its_colour_and_no_model_looks_free(free_and_unpriced, acme):
    tier_colors = {color for _, _, color in TIER_LABELS.values()}
    assert FREE_COLOR in tier_colors and UNPRICED_COLOR in tier_colors
    assert not tier_colors & set(PALETTE)  # "a model" never shares a colour with a tier
    colours: dict[str, set[str]] = {}
    for data, _ in (*free_and_unpriced.values(), acme[0:2]):
        _, tokens, _ = daily_series(data.allocation.cells, data.allocation.invoice)
        for series in tokens:
            name = series.label.removesuffix(" (unpriced)").removesuffix(" (partly unpriced)")
            colours.setdefault(name, set()).add(series.color)
    assert all(len(found) == 1 for found in colours.values()), colours
    assert colours["llama3.1"] == {model_color("llama3.1")}
    # a hash of the id (SHA-256 into PALETTE), not a rank or Python's salted hash(): the
    # same colour in every process and every report
    assert model_color("gpt-4o") == "#f1ce63"


@pytest.mark.parametrize("top", [0, 3_000, 12_000, 70_000, 2_500_000, 123_456_789])
def test_cost_axis_labels_share_one_format(top):
    labels = dollar_axis(nice_ticks(top))
    digits = {len(label.split(".")[1]) for label in labels}
    assert len(digits) == 1, labels
    if top >= 20_000:
        assert digits == {2}, labels  # cents as soon as the ticks are whole cents


def test_top_runs_show_registry_ids_like_the_invoice(acme):
    data, page = acme
    runs = page[page.index("Top runs by cost") :]
    invoice_models = {line.model for line in data.allocation.invoice.lines}
    raw_only = {c.run.model for c in data.allocation.cells} - invoice_models
    assert raw_only, "the fixture has raw names that differ from registry ids"
    for raw in raw_only:
        assert f"<td>{raw}</td>" not in runs
    assert any(f"<td>{model}</td>" in runs for model in invoice_models if model)


def test_free_and_unpriced_reports_render_in_headless_chromium(free_and_unpriced, tmp_path):
    """Both pages in a real browser (one screenshot each); the free org's page has no red
    and its green bars are the free model's. UPDATE_REPORT_SCREENSHOT=1 also writes
    docs/report.png and docs/report-example.html from these two orgs."""
    for org, (data, page) in free_and_unpriced.items():
        path = tmp_path / f"{org}.html"
        path.write_text(page, encoding="utf-8")
        png = tmp_path / f"{org}.png"
        screenshot(path, png, tmp_path / f"profile-{org}")
        _, tokens, _ = daily_series(data.allocation.cells, data.allocation.invoice)
        bar = bytes(int(tokens[0].color[i : i + 2], 16) for i in (1, 3, 5))
        width, height, channels, lines = png_rows(png.read_bytes())
        bar_pixels = sum(
            [line[n : n + 3] for n in range(0, len(line), channels)].count(bar)
            for y, line in enumerate(lines)
            if y < 1000
        )
        assert (width, height) == (WIDTH, HEIGHT) and bar_pixels > 300, (org, bar_pixels)
    if os.environ.get("UPDATE_REPORT_SCREENSHOT"):
        write_docs_example(free_and_unpriced, tmp_path)


def write_docs_example(pages: dict[str, Any], tmp_path: Path) -> None:
    """`docs/report-example.html` (the two reports, each in its own frame, self-contained)
    and `docs/report.png`, its screenshot in headless Chromium."""
    import html

    frames = "".join(
        f'<iframe title="{org}" srcdoc="{html.escape(page, quote=True)}" '
        'style="width:1264px;height:2050px;border:0;display:block"></iframe>'
        for org, (_, page) in pages.items()
    )
    example = DOCS / "report-example.html"
    example.write_text(
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>chore report: an org with only free usage, one with unpriced usage</title>"
        f'</head><body style="margin:0;background:#f4f5f7">{frames}</body></html>\n',
        encoding="utf-8",
    )
    screenshot(example, DOCS / "report.png", tmp_path / "docs-profile", height=4100)


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (900, "900"),
        (350_000, "350K"),
        (1_200_000, "1.2M"),
        (1e12, "1,000B"),
        (2.5e15, "2,500,000B"),
    ],
)
def test_token_axis_labels_never_use_exponent_form(value, label):
    assert compact(value) == label


def test_a_model_priced_on_some_days_only_is_partly_unpriced_and_the_page_says_why(tmp_path):
    """Review: a model with one unpriced day was labelled "(unpriced)" on every bar, priced
    days too; and a page flagged NEEDS REVIEW did not say why (a line below zero, an
    unpriced line), when no anomaly was open."""
    from pricing import Registry

    registry = Registry.model_validate(
        {
            "version": "partly",
            "models": [
                {"id": "m2", "tier": "paid", "prices": [
                    {"valid_from": "2026-11-15", "input": "1", "output": "2"}
                ]},
            ],
        }
    )  # fmt: skip
    settings = Settings(mongo_url="mongomock://unused", redis_url=None)
    db = mongomock.MongoClient(tz_aware=True)["main"]
    for n, day in enumerate((10, 20), start=1):
        ended = datetime(2026, 11, day, 12, tzinfo=UTC)
        db.tasks.insert_one(
            ai_runner(ObjectId(f"{n:024x}"), ended=ended, tokens=3_000, prompt=2_000, model="m2")
        )
    now = datetime(2026, 11, 30, tzinfo=UTC)
    run_chore(db, now=now, registry=registry, settings=settings)
    data = collect_report(db, "acme", "2026-11", settings=settings, registry=registry, now=now)
    page = render_report(data)

    assert "m2 (partly unpriced)" in page and "m2 (unpriced)" not in page
    assert "<title>20 · m2 (partly unpriced): $0.004</title>" in page  # 2,000 × $1 + 1,000 × $2
    assert (
        '<p class="review-why">Needs review: unpriced: m2 (no registry price at its usage time)</p>'
    ) in page
