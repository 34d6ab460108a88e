"""`chore usage` and `chore report` at their edges: an empty org, one day, the columns of
`--by model` and `--by run`, and the defaults of `report`.

Found untested by mutation testing of chores/cli/usage.py (stop 55; stop 58 added an
invoice with no usage, the total row, partly unpriced rows, the session column, the line
under the table, the JSON's filters, the help's defaults, `--out` and the progress bar in a
terminal): each docstring names the mutant its test kills."""

from __future__ import annotations

import json
import re

from bson import ObjectId
from click.testing import CliRunner

from chores.cli import main

from support import NOW, ai_runner

NOW_ARG = ["--now", NOW.isoformat()]


def test_usage_filter_until_matching_nothing_names_it(env_db):
    """Mutant usage.py:150 `given += [f"--until ..."]` -> pass: the "no usage of ...
    matches" line left out the --until that matched nothing (only --since is tested)."""
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW))
    ran = CliRunner().invoke(main, ["run", "--org", "acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    result = CliRunner().invoke(
        main, ["usage", "--org", "acme", "--period", "2026-11", "--until", "2026-11-01"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "no usage of acme:2026-11 matches --until 2026-11-01\n"


def test_usage_with_an_empty_org_says_the_org_is_bad(env_db):
    """Mutant usage.py:112 `org = validate_org(org)` -> pass: `usage --org ""` said "no
    invoice for org '' ...; run `chore run --org ''` first" instead of naming a bad org."""
    result = CliRunner().invoke(main, ["usage", "--org", "", "--period", "2026-11"])
    assert result.exit_code == 1, result.output
    assert "org must be a non-empty string" in result.output


def _one_run_billed(env_db):
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW))
    ran = CliRunner().invoke(main, ["run", "--org", "acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output


def _usage_after_a_run(by: str, columns: int):
    """`chore run` of acme, then `chore usage --by BY` of November on a terminal `columns`
    wide: its result (exit 0 checked for both)."""
    ran = CliRunner().invoke(main, ["run", "--org", "acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    args = ["usage", "--org", "acme", "--period", "2026-11", "--by", by]
    result = CliRunner().invoke(main, args, env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    return result


def test_usage_by_run_shows_the_session_column_from_110_columns_on(env_db):
    """Mutants usage.py:218 `WIDE = 110` -> 111 / 109: the session column of `--by run`
    appeared from 109 columns, or only from 111 (no test sits at the boundary)."""
    _one_run_billed(env_db)
    args = ["usage", "--org", "acme", "--period", "2026-11", "--by", "run"]

    def header(columns: int) -> str:
        result = CliRunner().invoke(main, args, env={"COLUMNS": str(columns)})
        assert result.exit_code == 0, result.output
        return next(line for line in result.stdout.splitlines() if line.lstrip().startswith("run"))

    assert "session" in header(110)
    assert "session" not in header(109)


def test_report_without_now_uses_the_clock(env_db):
    """Mutant usage.py:345 `now = now or datetime.now(UTC)` -> pass: `chore report`
    without --now (as an operator runs it) failed with exit 1 instead of writing the page;
    every test gives --now."""
    _one_run_billed(env_db)
    result = CliRunner().invoke(
        main, ["report", "--org", "acme", "--period", "2026-11", "--out", "-"]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<!DOCTYPE html>")


def test_report_without_period_is_the_month_of_now(env_db):
    """Mutant usage.py:346 `period = period_or_month_of(period, now)` -> pass: `chore
    report` without --period failed with exit 1 instead of reporting the month of now."""
    _one_run_billed(env_db)
    result = CliRunner().invoke(main, ["report", "--org", "acme", "--out", "-", *NOW_ARG])
    assert result.exit_code == 0, result.output
    assert "invoice acme:2026-11" in result.stderr


def test_report_with_an_empty_org_says_the_org_is_bad(env_db):
    """Mutant usage.py:344 `org = validate_org(org)` (report) -> pass."""
    result = CliRunner().invoke(
        main, ["report", "--org", "", "--period", "2026-11", "--out", "-", *NOW_ARG]
    )
    assert result.exit_code == 1, result.output
    assert "org must be a non-empty string" in result.output


def test_since_equal_to_until_is_one_day_not_an_error(env_db):
    """Mutant usage.py:110 `since > until` -> `>=`: `--since D --until D` (one day) was
    refused as "no day can match both"."""
    _one_run_billed(env_db)
    day = f"{NOW:%Y-%m-%d}"
    result = CliRunner().invoke(
        main, ["usage", "--org", "acme", "--period", "2026-11", "--since", day, "--until", day]
    )
    assert result.exit_code == 0, result.output
    assert "no day can match" not in result.output


def test_usage_by_model_row_has_every_count_under_its_column(env_db):
    """Mutants usage.py:259 (runs cell) and :260 (input/cached/output/unsplit cells) ->
    pass: `--by model` rows lost cells, so the numbers shifted under the wrong headings;
    mutant usage.py:245 `spawned_elsewhere = False` -> True: the "* a subagent whose
    spawning run ..." footnote printed with no such subagent."""
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW, tokens=1234))
    CliRunner().invoke(main, ["run", "--org", "acme", *NOW_ARG])
    result = CliRunner().invoke(
        main,
        ["usage", "--org", "acme", "--period", "2026-11", "--by", "model"],
        env={"COLUMNS": "150"},
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    row = next(line for line in lines if line.startswith("gpt-4o-mini"))
    assert header.split() == [
        "model",
        "runs",
        "input",
        "cached",
        "output",
        "unsplit",
        "tokens",
        "amount",
    ]
    assert row.split() == ["gpt-4o-mini", "1", "1,234", "0", "0", "0", "1,234", "$0.000185"]
    assert "a subagent whose spawning run" not in result.stdout


# Found untested by mutation testing (stop 58).


def test_usage_of_an_invoice_holding_no_usage_says_so_whatever_the_view(env_db):
    """Mutants usage.py:146 `if not filters.active:` -> pass / forced False and :147 its
    `return f"{invoice} has no usage"` -> pass: with no filter given, an invoice that holds
    no usage (only the flag of a runner whose counters are malformed) printed "no usage of
    acme:2026-11 matches " (naming no filter) instead of saying it has none."""
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW, tokens="12.5"))
    ran = CliRunner().invoke(main, ["run", "--org", "acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    assert env_db.billing_invoices.find_one({"_id": "acme:2026-11"})["lines"] == []
    for by in ("run", "model"):
        result = CliRunner().invoke(
            main, ["usage", "--org", "acme", "--period", "2026-11", "--by", by]
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == "acme:2026-11 has no usage\n"


def _ends(line: str) -> list[int]:
    """Where each word of a table line ends: right-aligned counts end at their column's."""
    return [word.end() for word in re.finditer(r"\S+", line)]


def test_usage_sets_the_total_row_apart_from_the_rows(env_db):
    """Mutant usage.py:267 `view.add_section()` -> pass: the total row followed the last
    row with nothing between, like one more row (a session or day could read `total`);
    mutant :277 `"[bold red]UNPRICED[/]" if summed.amount_micros is None ...` forced True:
    the total of priced rows said UNPRICED; mutant :247 `escape(row.key) if row.key is not
    None else "(none)"` forced True: the row of runs with no session failed; mutants :270
    (the blank cells that put the total's counts under their columns: `1 if per_run else
    2` forced, or either number one up or down) and :271 (the total's runs cell, forced
    out): the total's counts sat one column off, or in a column of their own past the
    table's. (`2 -> 3` is equivalent: a view other than `run` pads no cell either way.)"""
    _one_run_billed(env_db)
    for by in ("run", "session", "day"):
        result = CliRunner().invoke(
            main, ["usage", "--org", "acme", "--period", "2026-11", "--by", by]
        )
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        at = next(n for n, line in enumerate(lines) if line.startswith("total "))
        assert lines[at - 1].strip() == "", result.stdout
        counts = ["1,000", "0", "0", "0", "1,000", "$0.00015"]
        assert lines[at - 2].split()[-6:] == counts
        if by != "run":  # a run with no session is under "(none)"
            assert lines[at - 2].split()[0] == {"session": "(none)", "day": "2026-11-25"}[by]
        assert lines[at].split() == ["total", *([] if by == "run" else ["1"]), *counts]
        # under the same columns: each count ends where the row's does
        assert _ends(lines[at])[-6:] == _ends(lines[at - 2])[-6:], result.stdout


# rich draws a progress bar only where it writes to a terminal; `TTY_COMPATIBLE=1` tells it
# standard error is one (CliRunner's streams are not).
A_TERMINAL = {"TTY_COMPATIBLE": "1"}


def test_report_in_a_terminal_draws_its_progress_on_stderr_up_to_done(env_db, tmp_path):
    """Mutants usage.py:314 `progress.update(...)` -> pass (the bar stayed at "report 0/?"),
    :368 `update("done", 1, 1)` -> pass or with 1 -> 0 / 2 (it ended at "rendering the
    page", 0/1, 2/1, 1/0 or 1/2), :306
    `Console(stderr=True)` -> False (the bar went to standard output, into the summary a
    script reads) and :309 `not err.is_terminal` -> `err.is_terminal` (no bar in a
    terminal): in a terminal the bar is on standard error and ends full, at done 1/1."""
    _one_run_billed(env_db)
    out = tmp_path / "r.html"
    args = ["report", "--org", "acme", "--period", "2026-11", "--out", str(out), *NOW_ARG]
    result = CliRunner().invoke(main, args, env=A_TERMINAL)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"wrote {out}: invoice acme:2026-11 (draft), total $0.00015, 1 run, 0 anomalies to review\n"
    )
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)  # no colours, no cursor moves
    drawn = [state.strip() for state in re.split(r"[\r\n]", plain) if "━" in state]
    assert re.fullmatch(r"done +━+ 1/1 \S+", drawn[-1]), repr(result.stderr)


def test_report_quiet_in_a_terminal_draws_no_progress_bar(env_db, tmp_path):
    """Mutant usage.py:309 `quiet or not err.is_terminal` -> `and`: `--quiet` ("no progress
    bar and no summary", for cron) drew the bar all the same where stderr is a terminal."""
    _one_run_billed(env_db)
    out = tmp_path / "r.html"
    args = ["report", "--org", "acme", "--period", "2026-11", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, [*args, *NOW_ARG], env=A_TERMINAL)
    assert result.exit_code == 0, result.output
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert result.stdout == ""
    assert "done" not in result.stderr and "report" not in result.stderr


def test_report_in_a_terminal_shows_the_page_being_rendered_as_its_one_step_to_do(
    env_db, tmp_path, monkeypatch
):
    """Mutants usage.py:361 `update("rendering the page", 0, 1)` -> pass or with 0 -> 1 / -1
    or 1 -> 2 / 0: while the page rendered, the bar said "report", 1/1 (done), -1/1, 0/2 or
    0/0. Each state the bar is given is drawn at once (rich otherwise redraws ten times a
    second, on a thread: no timing here), and the page is rendered at 0 of its 1 step."""
    from rich.progress import Progress

    given = Progress.update

    def update_and_draw(self, *args, **kwargs):
        given(self, *args, **kwargs)
        self.refresh()

    monkeypatch.setattr(Progress, "update", update_and_draw)
    _one_run_billed(env_db)
    args = ["report", "--org", "acme", "--period", "2026-11", "--out", str(tmp_path / "r.html")]
    result = CliRunner().invoke(main, [*args, *NOW_ARG], env=A_TERMINAL)
    assert result.exit_code == 0, result.output
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    drawn = {state.strip() for state in re.split(r"[\r\n]", plain) if "rendering" in state}
    assert drawn and all(re.search(r"rendering the page +━+ 0/1 ", s) for s in drawn), drawn


def test_a_row_partly_unpriced_says_its_amount_leaves_tokens_out(env_db):
    """Mutant usage.py:215 `... if usage.unpriced_tokens else text` forced False: a day
    holding a priced run ($0.00015) and a run of a model no registry prices showed
    `$0.00015` alone, as if that were the whole day's cost."""
    env_db.tasks.insert_many(
        [
            ai_runner("r1", ended=NOW, tokens=1_000),
            ai_runner("r2", ended=NOW, tokens=500, model="no-such-model"),
        ]
    )
    result = _usage_after_a_run("day", 150)
    lines = result.stdout.splitlines()
    (day,) = [line for line in lines if line.startswith("2026-11-25")]
    counts = ["1,500", "0", "0", "0", "1,500"]
    assert day.split() == ["2026-11-25", "2", *counts, "$0.00015", "+", "unpriced"]
    assert "rows: 2 runs, $0.00015 + 500 unpriced tokens, 1,500 tokens" in result.stdout


def test_usage_by_run_puts_the_session_under_its_column_when_wide(env_db):
    """Mutant usage.py:257 `cells += [escape(run.session_id or "")] if with_session ...` ->
    pass or forced False: from 110 columns on the session column was there but empty, and
    every count moved one column left (the input tokens under "session")."""
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW, tokens=1_000, session_id="sess-1"))
    result = _usage_after_a_run("run", 120)
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    row = next(line for line in lines if "gpt-4o-mini" in line)
    assert header.split()[3:5] == ["session", "input"]
    counts = ["1,000", "0", "0", "0", "1,000", "$0.00015"]
    assert row.split()[1:] == ["gpt-4o-mini", "SUCCESS", "sess-1", *counts]


def test_usage_says_when_its_rows_are_filtered(env_db):
    """Mutants usage.py:283 `"filtered rows" if filters.active else "rows"` forced True /
    False: the line under the table said "filtered rows" with no filter given, or "rows"
    when a filter left rows out (so its sums were not the invoice's)."""
    _one_run_billed(env_db)
    args = ["usage", "--org", "acme", "--period", "2026-11"]
    summary = "rows: 1 run, $0.00015, 1,000 tokens · invoice total $0.00015, 1,000 tokens"
    everything = CliRunner().invoke(main, args)
    assert everything.exit_code == 0, everything.output
    assert f"\n  {summary}" in everything.stdout
    filtered = CliRunner().invoke(main, [*args, "--status", "success"])
    assert filtered.exit_code == 0, filtered.output
    assert f"\n  filtered {summary}" in filtered.stdout


def test_usage_and_report_help_show_their_defaults():
    """Mutant usage.py:81 `show_default=True` -> False (--by): `chore usage -h` no longer
    said that rows are per run unless --by says otherwise."""
    usage_help = " ".join(CliRunner().invoke(main, ["usage", "-h"]).output.split())
    assert "(paid/free/byok/unpriced). [default: run]" in usage_help
    report_help = " ".join(CliRunner().invoke(main, ["report", "-h"]).output.split())
    assert "How many top-level runs to show. [default: 10; 1<=x<=1000]" in report_help


def test_usage_json_names_the_days_it_was_filtered_on(env_db):
    """Mutants usage.py:191/192 `filters.since.isoformat() if filters.since else None`
    (and `until`) forced False: the JSON's `filters` said `since`/`until` null when the
    rows were filtered on those days, so a script could not tell them from the invoice's."""
    _one_run_billed(env_db)
    args = ["usage", "--org", "acme", "--period", "2026-11", "--json"]
    days = ["--since", "2026-11-02", "--until", "2026-11-29"]
    result = CliRunner().invoke(main, [*args, *days])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["filters"] == {
        "models": [],
        "since": "2026-11-02",
        "until": "2026-11-29",
        "statuses": [],
    }
    assert data["total"]["tokens"] == 1_000
    unfiltered = json.loads(CliRunner().invoke(main, args).stdout)
    assert (unfiltered["filters"]["since"], unfiltered["filters"]["until"]) == (None, None)


def test_report_without_out_is_a_usage_error(env_db):
    """Mutant usage.py:324 `required=True` -> False (--out): `chore report` without --out
    failed on `Path(None)` instead of saying, as a usage error (exit 2), that --out is
    required."""
    _one_run_billed(env_db)
    result = CliRunner().invoke(main, ["report", "--org", "acme", "--period", "2026-11"])
    assert result.exit_code == 2, result.output
    assert "Missing option '--out'" in result.output


def test_usage_says_when_its_split_is_only_proportional(env_db):
    """Mutants usage.py:290 `"" if allocation.exact else " (weights proportional: ...)"`
    forced True / False: the line under the table never said that the rows' amounts are
    only proportional shares (no pricing gives the invoice's line amounts: here a draft
    without `priced_with`, its line edited a micro-dollar up), or said it of every split."""
    _one_run_billed(env_db)
    args = ["usage", "--org", "acme", "--period", "2026-11"]
    exact = CliRunner().invoke(main, args)
    assert exact.exit_code == 0, exact.output
    assert exact.stdout.endswith(", 1,000 tokens · priced as registry\n")
    env_db.billing_invoices.update_one(
        {"_id": "acme:2026-11"},
        {"$inc": {"lines.0.amount_micros": 1, "total_micros": 1}, "$unset": {"priced_with": ""}},
    )
    proportional = CliRunner().invoke(main, args)
    assert proportional.exit_code == 0, proportional.output
    assert proportional.stdout.endswith(
        "rows: 1 run, $0.000151, 1,000 tokens · invoice total $0.000151, 1,000 tokens · "
        "priced as registry (weights proportional: prices changed)\n"
    )
    assert json.loads(CliRunner().invoke(main, [*args, "--json"]).stdout)["exact_weights"] is False


def _long_names_by_run_at_80_columns(env_db):
    """`usage --by run` at 80 columns of a run whose id and model are too long for them."""
    runner = ai_runner(
        "r1-a-rather-long-runner-identifier-0123456789",
        ended=NOW,
        model="openai/a-model-with-a-long-name-x",
        status="CANCELLED_BY_USER",
    )
    env_db.tasks.insert_one(runner)
    result = _usage_after_a_run("run", 80)
    return result


def test_usage_by_run_at_80_columns_cuts_names_but_never_the_status(env_db):
    """Mutant usage.py:239 `name_column(view, "status", keep=True)` -> False: at 80 columns
    a long runner id and model name left the status column no room, and it was cut
    (`CANCEL…`) with them, where the names are cut to keep it whole."""
    result = _long_names_by_run_at_80_columns(env_db)
    (row,) = [line for line in result.stdout.splitlines() if line.startswith("str")]
    assert "…" in row and " CANCELLED_BY_USER " in row, result.stdout


def test_report_out_a_directory_is_refused_before_any_work(env_db, tmp_path):
    """Mutant usage.py:325 `dir_okay=False` -> True: `--out DIR` was taken, the whole
    report built, and only then refused when the page could not be written there."""
    _one_run_billed(env_db)
    args = ["report", "--org", "acme", "--period", "2026-11", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, *NOW_ARG])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--out': File '{tmp_path}' is a directory." in result.output
    assert list(tmp_path.iterdir()) == []


def test_report_out_dash_is_standard_output_even_beside_a_directory_named_dash(
    env_db, tmp_path, monkeypatch
):
    """Mutant usage.py:325 `allow_dash=True` -> False: `--out -` was taken for a path, and
    where the working directory holds a directory `-` it was refused as one instead of
    writing the page to standard output."""
    _one_run_billed(env_db)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").mkdir()
    args = ["report", "--org", "acme", "--period", "2026-11", "--out", "-", *NOW_ARG]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("<!DOCTYPE html>")


def _spawned(child: ObjectId, parent: ObjectId) -> dict:
    """The spawn finding of a subagent (baseline 0) naming the runner that spawned it."""
    counters = {"ai_tokens": 0, "ai_prompt_tokens": 0, "ai_completion_tokens": 0}
    return {
        "_type": "ai",
        "ai_type": "task",
        "extra_data": {"runner_id": str(child)},
        "_context": {"workspace_id": "acme", "task_id": str(parent), **counters},
    }


def test_usage_by_run_indents_each_level_of_subagents_two_more_spaces(env_db):
    """Mutants usage.py:251 `"  " * (depth - 1) + "↳ "` with `-` -> `+` or 1 -> 2 / 0: a
    subagent of a subagent was drawn at the same indent as its parent's own subagent, or
    every level one step off (only one level was tested)."""
    parent, child, grandchild = ObjectId(), ObjectId(), ObjectId()
    env_db.tasks.insert_many(
        [
            ai_runner(parent, ended=NOW, tokens=3_000, session_id="sP"),
            ai_runner(child, ended=NOW, tokens=2_000, session_id="sC", subagent="sC",
                      ai_subagent_depth=1, parent_session_id="sP"),
            ai_runner(grandchild, ended=NOW, tokens=1_000, session_id="sG", subagent="sG",
                      ai_subagent_depth=2, parent_session_id="sC"),
        ]
    )  # fmt: skip
    env_db.findings.insert_many([_spawned(child, parent), _spawned(grandchild, child)])
    result = _usage_after_a_run("run", 150)
    rows = [line.split("  gpt-4o-mini")[0].rstrip() for line in result.stdout.splitlines()]
    assert [f"{parent}", f"↳ {child}", f"  ↳ {grandchild}"] == [
        row for row in rows if row.lstrip("↳ ") in {str(parent), str(child), str(grandchild)}
    ], result.stdout
    assert "a subagent whose spawning run" not in result.stdout


def test_usage_by_run_at_80_columns_keeps_the_total_label_whole(env_db):
    """The names of a run are cut to fit 80 columns, but never below the width of the
    total row's label, which sits in their column: `tot…` was shown (found by a helper
    reading the layout of the test above)."""
    result = _long_names_by_run_at_80_columns(env_db)
    (total_row,) = [line for line in result.stdout.splitlines() if line.startswith("tot")]
    assert total_row.split()[0] == "total", result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80, result.stdout
