"""`chore run`'s warnings and `chore invoice show`'s review reasons at their edges.

Found untested by mutation testing of chores/cli/run.py and chores/cli/invoice.py (stop
55): each docstring names the mutant its test kills."""

from __future__ import annotations

import textwrap

from click.testing import CliRunner

from chores.cli import main

from support import NOW, ai_runner, closed_port

NOW_ARG = ["--now", NOW.isoformat()]
ENDED = NOW.replace(day=2)


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="chore")


def review_lines(output: str) -> list[str]:
    """The lines under `needs review:`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "needs review:")
    return lines[start + 1 :]


# --- chore run: what goes to stderr ---------------------------------------------------------


def test_a_mirror_the_run_could_not_write_is_warned_on_stderr(env_db, monkeypatch):
    """Mutant run.py:261 `click.echo(..., err=True)` -> `err=False`: the warning that the
    quota mirror was not written went to stdout, where a cron piping the table away does
    not look (the test of it reads `.output`, stdout and stderr mixed)."""
    env_db.tasks.insert_one(ai_runner("r1", ended=ENDED, org="ws-acme"))
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{closed_port()}/0")
    from chores import get_settings

    get_settings.cache_clear()
    plan = CliRunner().invoke(
        main, ["plan", "set", "--org", "ws-acme", "--token-limit", "1K", *NOW_ARG]
    )
    assert plan.exit_code == 0, plan.output
    ran = CliRunner().invoke(main, ["run", "--org", "ws-acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    assert "answers the previous ones" in " ".join(ran.stderr.split())
    assert "answers the previous ones" not in ran.stdout


# --- chore invoice show: the reasons it needs review ----------------------------------------


def test_a_draft_needing_review_without_an_open_anomaly_gets_no_review_hint(env_db):
    """Mutant invoice.py:164 `if anomalies and inv.status == "draft"` -> `or`: a draft
    flagged only for an unpriced model (no anomaly to review) was told to run
    `chore anomaly review`."""
    env_db.tasks.insert_one(ai_runner("odd", ended=ENDED, model="mystery-model-9000"))
    invoke("run", "--org", "acme", *NOW_ARG)
    output = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env={"COLUMNS": "200"}).output
    assert review_lines(output)[0] == (
        "    - unpriced: mystery-model-9000 (no registry price at its usage time)"
    )
    assert "chore anomaly review" not in output


def test_exactly_max_shown_anomalies_are_listed_without_a_more_line(env_db):
    """Mutant invoice.py:174 `len(anomalies) > MAX_SHOWN` -> `>=`: with exactly ten open
    anomalies the list ended with "and 0 more open" (the test has twelve)."""
    env_db.tasks.insert_many(
        [ai_runner(f"bad-{n:02}", ended=ENDED, tokens="12") for n in range(10)]
    )
    invoke("run", "--org", "acme", *NOW_ARG)
    output = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env={"COLUMNS": "200"}).output
    review = review_lines(output)
    assert len([line for line in review if "malformed_counters" in line]) == 10
    assert "more open" not in output


def _long_reason_lines(env_db, columns: int, runner: str = "bad-00") -> tuple[str, list[str]]:
    """One malformed runner: its reason as one line, and as shown at `columns`."""
    env_db.tasks.insert_one(ai_runner(runner, ended=ENDED, tokens="12"))
    invoke("run", "--org", "acme", *NOW_ARG)
    wide = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env={"COLUMNS": "400"}).output
    reason = review_lines(wide)[0].removeprefix("    - ")
    shown = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env={"COLUMNS": str(columns)})
    lines = review_lines(shown.output)
    return reason, lines[: next(i for i, line in enumerate(lines) if line.startswith("    ("))]


def test_a_long_reason_wraps_at_the_width_less_its_indent_in_order(env_db):
    """Mutants invoice.py:160 `out.width - 6` -> `- 7` and 161 `wrapped[0]` -> `wrapped[-1]`:
    the wrapped reason used one column less than the terminal leaves after the indent, or
    began with its last piece (the test of it only checks that some line wraps and that
    every line is indented)."""
    reason, lines = _long_reason_lines(env_db, 39)
    pieces = textwrap.wrap(reason, 39 - 6)  # 39: one column less wraps it otherwise
    assert len(pieces) >= 3
    assert lines == ["    - " + pieces[0], *("      " + more for more in pieces[1:])]


def test_at_26_columns_a_reason_still_wraps_at_20_and_fits(env_db):
    """Mutant invoice.py:160 `max(out.width - 6, 20)` -> `max(..., 21)`: at 26 columns a
    reason was wrapped at 21, one column more than the terminal leaves after the indent, so
    the terminal broke its lines again (no test runs `invoice show` below 80 columns)."""
    reason, lines = _long_reason_lines(env_db, 26, runner="bad-000")
    pieces = textwrap.wrap(reason, 20)
    assert pieces != textwrap.wrap(reason, 21)  # the runner id makes the two differ
    assert lines == ["    - " + pieces[0], *("      " + more for more in pieces[1:])]


def test_below_26_columns_a_reason_is_wrapped_at_20_never_narrower(env_db):
    """Mutant invoice.py:160 `max(out.width - 6, 20)` -> `max(..., 19)`: below 26 columns the
    reason was wrapped narrower than its floor of 20 (each piece of a 20-column wrap starts
    a line of its own; the terminal breaks the ones too long for it)."""
    reason, lines = _long_reason_lines(env_db, 25)
    pieces = textwrap.wrap(reason, 20)
    assert pieces != textwrap.wrap(reason, 19)
    starts = [line[6:] for line in lines if line.startswith(("    - ", "      "))]
    assert [start.split()[0] for start in starts] == [piece.split()[0] for piece in pieces]
