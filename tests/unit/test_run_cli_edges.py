"""`chore run` at its edges: an org refused before the database is reached, the live
progress on a terminal (what it counts, when it is drawn, that it is erased), the table's
headers and its summary line.

Found untested by mutation testing of chores/cli/run.py (stop 55): each test names the
mutant it kills."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from chores.cli import main

from support import NOW, ai_runner, closed_port

NOW_ARG = ["--now", NOW.isoformat()]


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="chore")


@pytest.fixture
def cli_db(env_db, fixture_docs):
    env_db.tasks.insert_many(fixture_docs["tasks"])
    env_db.findings.insert_many(fixture_docs["findings"])
    return env_db


# --- run.py:77 `org = ... validate_org(org)` -> pass (mutant 10) ----------------------------


def test_a_malformed_org_is_refused_before_the_database_is_reached(monkeypatch):
    """`--org ''` is refused at once, naming the org; the mutant first tries an unreachable
    MongoDB (seconds) and says that instead."""
    from chores import get_settings

    monkeypatch.setenv("MONGO_URL", f"mongodb://127.0.0.1:{closed_port()}/main")
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run", "--org", "", *NOW_ARG])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "org must be a non-empty string" in result.output
    assert "MongoDB" not in result.output


# --- the live progress on a terminal (mutants 40, 41, 42, ...) --------------------------------


@pytest.fixture
def terminal(monkeypatch):
    """`chore run`'s console as on a terminal (rich draws its live display), into a buffer."""
    import io

    from rich.console import Console

    from chores.cli import run as run_command

    buffer = io.StringIO()
    monkeypatch.setattr(
        run_command, "console",
        lambda: Console(file=buffer, force_terminal=True, width=160, emoji=False),
    )  # fmt: skip
    return buffer


def test_on_a_terminal_the_progress_counts_documents_and_orgs_with_new_usage(cli_db, terminal):
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    shown = terminal.getvalue()
    assert "metering: 10 runner documents read · 2 orgs with new usage" in shown
    assert "Metering run" in shown  # the table after it


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_on_a_terminal_quiet_or_json_draws_no_progress(cli_db, terminal, flag):
    result = invoke("run", "--all", flag, *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "metering:" not in terminal.getvalue()


def test_on_a_terminal_the_progress_is_erased_before_the_table(cli_db, terminal):
    """run.py:149 transient=True -> False: the last progress line stayed above the table."""
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    shown = terminal.getvalue()
    between = shown[shown.rfind("metering:") : shown.find("Metering run")]
    assert "\x1b[2K" in between  # the live line erased (rich's restore_cursor)


def test_on_a_terminal_the_rate_is_documents_read_per_second_since_the_start(
    cli_db, terminal, monkeypatch
):
    """run.py:160 `time.monotonic() - started` -> `+ started`: a rate of ~0 documents/s."""
    import types

    from chores.cli import run as run_command

    ticks = iter([100.0] + [102.0] * 1000)  # started at 100 s; every batch at 102 s
    monkeypatch.setattr(run_command, "time", types.SimpleNamespace(monotonic=lambda: next(ticks)))
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "metering: 10 runner documents read · 2 orgs with new usage · 5 documents/s" in (
        terminal.getvalue()
    )


@pytest.mark.parametrize("on_terminal", [False, True])
def test_the_orgs_with_new_usage_are_read_only_for_a_person_watching_a_real_run(
    cli_db, monkeypatch, on_terminal, request
):
    """run.py:161 `show_progress and not dry_run` -> `or`: the dirty marks were read after
    every batch of a run nobody watches (a log, cron), and of a dry run (which writes none)."""
    from chores.cli import run as run_command

    if on_terminal:
        request.getfixturevalue("terminal")
    calls: list[Any] = []
    real = run_command.distinct_values
    monkeypatch.setattr(
        run_command, "distinct_values", lambda *a, **k: calls.append(a) or real(*a, **k)
    )
    args = ["run", "--all", *NOW_ARG] + (["--dry-run"] if on_terminal else [])
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert calls == []


def test_on_a_terminal_a_dry_run_counts_no_org_with_new_usage(cli_db, terminal):
    """run.py:161 `else 0` -> -1 / 1: a dry run (it marks nothing) showed -1 or 1 orgs."""
    result = invoke("run", "--all", "--dry-run", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "metering: 10 runner documents read · 0 orgs with new usage" in terminal.getvalue()


def test_the_table_title_names_the_run_by_the_first_8_characters_of_its_id(cli_db):
    """run.py:188 `run_id[:8]` -> [:7] / [:9]: the run named by 7 or 9 characters."""
    import re

    report = json.loads(invoke("run", "--all", "--json", *NOW_ARG).output)
    assert len(report["run_id"]) > 9
    result = invoke("run", "--all", *NOW_ARG)
    shown = re.search(r"Metering run (\S+)", result.output).group(1)
    assert len(shown) == 8 and shown.isalnum()


def test_the_table_has_a_header_for_each_column(cli_db):
    """run.py:189 / 191: the `org` column, or the three number columns, added without their
    header (rich adds a header-less column for each value of a row)."""
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[
        lines.index(next(line for line in lines if line.lstrip().startswith("Metering run"))) + 1
    ]
    assert header.split() == ["org", "new", "tokens", "entries", "anomalies", "decision"]


def test_on_a_narrow_terminal_the_decision_is_never_cut(cli_db):
    """run.py:192 `keep=True` -> False: the decision column was shrunk like a name column,
    its header cut to `dec…` on a narrow terminal."""
    result = invoke("run", "--all", *NOW_ARG, env={"COLUMNS": "30"})
    assert result.exit_code == 0, result.output
    assert "decision" in result.output and "dec…" not in result.output, result.output


def test_a_run_without_orgless_runners_says_nothing_of_them(env_db):
    """run.py:209 `.get(Anomaly.NO_ORG, 0)` -> -1 / 1: a run with no org-less runner said
    "-1 runner documents without an org (no_org) billed nothing"."""
    env_db.tasks.insert_one(ai_runner("r1", ended=NOW, org="acme"))
    result = invoke("run", "--all", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "1 document read" in result.output
    assert "without an org" not in result.output
    assert ", 0 anomalies, " in result.output  # run.py:227 counted(0, ...) -> -1 / 1
