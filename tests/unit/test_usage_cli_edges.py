"""`chore usage` and `chore report` at their edges: an empty org, one day, the columns of
`--by model` and `--by run`, and the defaults of `report`.

Found untested by mutation testing of chores/cli/usage.py (stop 55): each docstring names
the mutant its test kills."""

from __future__ import annotations

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
