"""The `chore` command line through click's CliRunner: exit codes, messages, no secrets."""

from __future__ import annotations

import json
import os
import re
import stat
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from chores import get_settings, run_chore
from chores.cli import main
from chores.core.exceptions import ConfigError
from pricing import load_registry

from support import NOW, WALL_CLOCK, ai_runner, closed_port
from support.fake_mongod import RefusingMongod

NOW_ARG = ["--now", NOW.isoformat()]


@pytest.fixture
def cli_db(env_db, fixture_docs):
    """The sample documents in the database every CLI invocation of this test shares."""
    env_db.tasks.insert_many(fixture_docs["tasks"])
    env_db.findings.insert_many(fixture_docs["findings"])
    return env_db


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_run_org_prints_a_table_and_writes_the_invoice(cli_db):
    result = invoke("run", "--org", "ws-acme", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "ws-acme" in result.output and "ws-beta" not in result.output
    invoice = cli_db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})
    assert invoice["total_micros"] > 0
    assert cli_db.billing_invoices.find_one({"_id": "ws-beta:2026-11"}) is None


def test_run_all_json_report(cli_db):
    result = invoke("run", "--all", "--json", *NOW_ARG)
    report = json.loads(result.output)
    ledger_tokens = sum(e["tokens"] for e in cli_db.billing_ledger.find())
    assert report["tokens_billed"] == ledger_tokens > 0
    assert set(report["orgs"]) == {"ws-acme", "ws-beta"}
    assert report["anomalies"] == {"malformed_counters": 1, "no_org": 1}


def test_dry_run_writes_nothing(cli_db):
    result = invoke("run", "--all", "--dry-run", "--json", *NOW_ARG)
    assert json.loads(result.output)["tokens_billed"] > 0
    assert [n for n in cli_db.list_collection_names() if n.startswith("billing_")] == []


def test_a_dry_run_may_preview_a_time_ahead_of_the_clock_a_run_may_not(cli_db):
    """Outside hunt: `run --dry-run` was refused a `--now` ahead of this machine's clock,
    though README says only a command that writes refuses one (a dry run writes nothing)."""
    ahead = ["--now", "2099-01-01T00:00:00Z"]
    dry = CliRunner().invoke(main, ["run", "--org", "ws-acme", "--dry-run", "--json", *ahead])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["tokens_billed"] > 0
    refused = CliRunner().invoke(main, ["run", "--org", "ws-acme", *ahead])
    assert refused.exit_code == 1 and "ahead of this machine's clock" in refused.output
    assert [n for n in cli_db.list_collection_names() if n.startswith("billing_")] == []


def test_a_dry_run_further_ahead_than_a_date_holds_is_refused_in_one_line(env_db):
    """Review: `run_chore(dry_run=True)` at the year 9999 (the API takes any datetime)
    raised OverflowError from the rules' `now` + a year."""
    with pytest.raises(ConfigError, match="ahead of this machine's clock"):
        run_chore(env_db, now=datetime(9999, 12, 31, tzinfo=UTC), dry_run=True)


@pytest.mark.parametrize("args", [[], ["--org", "a", "--all"]])
def test_run_needs_exactly_one_scope(cli_db, args):
    result = CliRunner().invoke(main, ["run", *args])
    assert result.exit_code == 2
    assert "exactly one of --org ORG or --all" in result.output


def test_invoice_show_table_json_and_csv(cli_db):
    invoke("run", "--all", *NOW_ARG)
    stored = cli_db.billing_invoices.find_one({"_id": "ws-beta:2026-11"})
    table = invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11")
    assert table.exit_code == 0
    for marker in ("UNPRICED", "free: metered, charged $0", "byok: the org's own key"):
        assert marker in table.output
    assert "NEEDS REVIEW" in table.output and "DRAFT" in table.output
    as_json = json.loads(
        invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11", "--json").output
    )
    assert as_json["total_micros"] == stored["total_micros"]
    assert as_json["lines"] == stored["lines"]
    rows = invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11", "--csv").output
    assert len(rows.strip().splitlines()) == 1 + len(stored["lines"])


def test_unknown_invoice_is_one_line_exit_1(cli_db):
    result = CliRunner().invoke(main, ["invoice", "show", "--org", "nope", "--period", "2026-11"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no invoice for org 'nope' in 2026-11; run `chore run --org nope` first"
    )


def test_the_hint_quotes_an_org_for_the_shell(cli_db):
    """The hint is a command to paste: an org with a space or `;` once ran as two words
    (review)."""
    org = "acme; rm -rf x"
    result = CliRunner().invoke(main, ["invoice", "show", "--org", org, "--period", "2026-11"])
    assert result.exit_code == 1
    assert result.output.strip().endswith("run `chore run --org 'acme; rm -rf x'` first")


def test_a_mistyped_org_is_said_with_the_known_ids_like_it(cli_db):
    """`run --org` and `finalize --org` of an org the billing knows nothing of exited 0
    with nothing done and nothing said, and `invoice show` told to run it first: a typo
    went unnoticed. An org with no usage yet is no error: exit codes are unchanged."""
    invoke("run", "--all", *NOW_ARG)  # invoices for ws-acme and ws-beta
    typo = ["--org", "ws-acmee"]
    note = "note: org 'ws-acmee' has no invoice of any month and no plan: nothing was billed"
    # (before a run of the mistyped id: that stores a decision for it)
    check = CliRunner().invoke(main, ["quota", "check", *typo, *NOW_ARG])
    assert check.exit_code == 0 and "ws-acmee: unknown — no quota decision yet" in check.stdout
    assert f"{note} to it yet; did you mean 'ws-acme'?" in check.stderr
    check_json = CliRunner().invoke(main, ["quota", "check", *typo, "--json", *NOW_ARG])
    assert json.loads(check_json.output)["state"] == "unknown"  # machine output: no note
    known = CliRunner().invoke(main, ["quota", "check", "--org", "ws-acme", *NOW_ARG])
    assert known.exit_code == 0 and "did you mean" not in known.stderr
    run = CliRunner().invoke(main, ["run", *typo, *NOW_ARG])
    assert run.exit_code == 0
    assert f"{note} to it yet; did you mean 'ws-acme'?" in run.stderr
    as_json = CliRunner().invoke(main, ["run", *typo, "--json", *NOW_ARG])
    assert json.loads(as_json.stdout)["tokens_billed"] == 0 and note in as_json.stderr
    quiet = CliRunner().invoke(main, ["run", *typo, "--quiet", *NOW_ARG])
    assert quiet.exit_code == 0 and quiet.output == ""
    finalized = CliRunner().invoke(main, ["finalize", *typo, *NOW_ARG])
    assert finalized.exit_code == 0 and note in finalized.stderr
    for command in (["invoice", "show"], ["reconcile"]):
        missing = CliRunner().invoke(main, [*command, *typo, "--period", "2026-11", *NOW_ARG])
        assert missing.exit_code == 1
        assert " ".join(missing.output.split()) == (
            "Error: no invoice for org 'ws-acmee' in 2026-11; did you mean 'ws-acme'? "
            "(a new org: run `chore run --org ws-acmee` first)"
        )
    in_november = ["invoice", "show", "--org", "WS-BETTA", "--period", "2026-11"]
    cased = CliRunner().invoke(main, in_november)  # ids are told apart by case, not matched
    assert "did you mean 'ws-beta'?" in cased.output
    in_october = CliRunner().invoke(main, [*in_november[:-1], "2026-10"])  # ws-beta: none
    assert in_october.output.strip().endswith("run `chore run --org WS-BETTA` first")
    unlike = CliRunner().invoke(main, ["run", "--org", "zz", *NOW_ARG])
    assert (
        "note: org 'zz' has no invoice of any month and no plan: nothing was billed to it yet\n"
        in unlike.stderr
    )
    known = CliRunner().invoke(main, ["run", "--org", "ws-acme", *NOW_ARG])  # nothing new
    assert known.exit_code == 0 and "note: org" not in known.output
    cli_db.tasks.insert_one({**cli_db.tasks.find_one({"context.workspace_id": "ws-acme"}),
                             "_id": "fresh", "context": {"workspace_id": "ws-acmf"}})  # fmt: skip
    read = CliRunner().invoke(main, ["run", "--org", "ws-acmf", *NOW_ARG])  # no tokens yet
    assert read.exit_code == 0 and "ws-acmf" in read.stdout and "note: org" not in read.output
    planned = CliRunner().invoke(main, ["plan", "set", "--org", "ws-new", "--token-limit", "1K"])
    assert planned.exit_code == 0, planned.output
    new = CliRunner().invoke(main, ["run", "--org", "ws-new", *NOW_ARG])
    assert new.exit_code == 0 and "note: org" not in new.output
    # last: a plan makes the id known
    planned = CliRunner().invoke(main, ["plan", "set", *typo, "--token-limit", "1M", *NOW_ARG])
    assert planned.exit_code == 0 and "ws-acmee: token limit 1,000,000 tokens" in planned.stdout
    assert f"{note} to it yet; did you mean 'ws-acme'?" in planned.stderr  # set all the same
    again = CliRunner().invoke(main, ["plan", "set", *typo, "--token-limit", "2M", *NOW_ARG])
    assert again.exit_code == 0 and note not in again.stderr  # its plan makes it known


def test_a_known_orgs_missing_month_is_said_for_what_it_is(cli_db):
    """Outside review: a month before any data, or one not begun, was answered "run `chore
    run --org acme` first", which bills nothing there (the test clock is 2030-01-01)."""
    invoke("run", "--all", *NOW_ARG)
    show = ["invoice", "show", "--org", "ws-acme", "--period"]
    past = CliRunner().invoke(main, [*show, "2026-09"])
    assert past.exit_code == 1 and past.output.strip() == (
        "Error: no invoice for org 'ws-acme' in 2026-09; no usage of it was billed in that month"
    )
    ahead = CliRunner().invoke(main, [*show, "2031-01"])
    assert ahead.output.strip().endswith("that month has not begun (this machine's is 2030-01)")
    this_month = CliRunner().invoke(main, [*show, "2030-01"])
    assert this_month.output.strip().endswith("run `chore run --org ws-acme` first")
    # after a run this month that found no usage, running again is no answer (walk-through)
    invoke("run", "--org", "ws-acme", "--now", WALL_CLOCK.isoformat())
    ran = CliRunner().invoke(main, [*show, "2030-01"])
    assert ran.exit_code == 1 and ran.output.strip() == (
        "Error: no invoice for org 'ws-acme' in 2030-01; no usage of it was billed this month yet"
    )
    nothing = invoke("finalize", *NOW_ARG)  # November has not ended at NOW
    assert nothing.output.startswith("finalized 0 invoices (none due: a month is finalized 3")


def test_bad_period_is_a_usage_error(cli_db):
    result = CliRunner().invoke(
        main, ["invoice", "show", "--org", "x", "--period", "11-2026"], prog_name="chore"
    )
    assert result.exit_code == 2
    assert result.output == (
        "Error: Invalid value for '--period': '11-2026' is not a month: expected YYYY-MM, "
        "such as 2026-11 (chore invoice show -h for help)\n"
    )


@pytest.mark.parametrize("org", ['{"$ne": null}', "$where", "a.b"])
def test_operator_like_org_ids_are_plain_data(cli_db, org):
    result = invoke("run", "--org", org, "--json", *NOW_ARG)
    assert json.loads(result.stdout)["docs_read"] == 0
    assert cli_db.billing_ledger.count_documents({}) == 0


@pytest.mark.parametrize("org", ["", "x" * 10_000])
def test_empty_or_huge_org_is_refused(cli_db, org):
    result = CliRunner().invoke(main, ["run", "--org", org])
    assert result.exit_code == 1 and "org must be a non-empty string" in result.output


def test_plan_set_and_quota_check_exit_codes(cli_db):
    result = invoke(
        "plan",
        "set",
        "--org",
        "ws-acme",
        "--token-limit",
        "10K",
        "--spend-limit",
        "$50",
        "--soft",
        "0.5",
        *NOW_ARG,  # the plan's decision is recomputed at once, for the period of now
    )
    assert result.exit_code == 0
    assert "10,000 tokens" in result.output and "spend limit $50.00," in result.output
    invoke("run", "--org", "ws-acme", *NOW_ARG)  # acme used 57,700 tokens: over the limit
    refused = CliRunner().invoke(main, ["quota", "check", "--org", "ws-acme", *NOW_ARG])
    assert refused.exit_code == 3
    assert refused.output.startswith("ws-acme: block — 57.7K of 10K tokens (577%)")
    invoke("plan", "set", "--org", "ws-acme", "--token-limit", "none", *NOW_ARG)
    invoke("run", "--org", "ws-acme", *NOW_ARG)
    allowed = CliRunner().invoke(main, ["quota", "check", "--org", "ws-acme", "--json", *NOW_ARG])
    assert allowed.exit_code == 0
    assert json.loads(allowed.output)["state"] == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--token-limit", "lots"], "not a token count"),
        (["--spend-limit", "-5"], "not a dollar amount"),
        (["--spend-limit", "0.0000001"], "more precision than a micro-dollar"),
        (["--soft", "1.5"], "1.5"),
        (["--token-limit", "99999999999999999999"], "at most 9,223,372,036,854,775,807 tokens"),
        (["--spend-limit", "$10000000000000"], "at most $9,223,372,036,854.775807"),
        (["--soft", "nan"], "invalid plan: soft_ratio"),
        (["--grace-tokens", "none"], "not a token count: 'none'"),
    ],
)
def test_plan_set_rejects_bad_values(cli_db, args, message):
    result = CliRunner().invoke(main, ["plan", "set", "--org", "a", *args])
    assert result.exit_code == 2 and message in result.output
    assert cli_db.billing_plans.count_documents({}) == 0  # nothing written


def test_a_nan_warn_ratio_leaves_the_plan_and_its_decision_as_they_were(cli_db):
    """Review: `--soft nan` passed click's FloatRange and was stored with the new limit; the
    plan could no longer be read, runs wrote no decision for the org, and the old `ok`
    answered checks (exit 1 from every later `plan set`)."""
    invoke("plan", "set", "--org", "ws-acme", "--token-limit", "10M", *NOW_ARG)
    invoke("run", "--org", "ws-acme", *NOW_ARG)
    plan = cli_db.billing_plans.find_one({"_id": "ws-acme"})
    refused = CliRunner().invoke(
        main, ["plan", "set", "--org", "ws-acme", "--token-limit", "1K", "--soft", "nan", *NOW_ARG]
    )
    assert refused.exit_code == 2
    assert "invalid plan: soft_ratio" in refused.output and "nothing was changed" in refused.output
    assert cli_db.billing_plans.find_one({"_id": "ws-acme"}) == plan
    lowered = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "1K", *NOW_ARG)
    assert "ws-acme: decision now block" in lowered.output


def test_plan_set_for_a_month_before_the_latest_decision_is_refused(cli_db):
    """Review: `plan set --now <an earlier month>` printed "decision now block" for that
    month, which was never stored (the later month's decision stands), and the later month
    went on answering `ok` under the old plan."""
    invoke("plan", "set", "--org", "ws-acme", "--token-limit", "10M", *NOW_ARG)
    plan = cli_db.billing_plans.find_one({"_id": "ws-acme"})
    decision = cli_db.billing_quota.find_one({"_id": "ws-acme"})
    earlier = CliRunner().invoke(
        main,
        ["plan", "set", "--org", "ws-acme", "--token-limit", "1K", "--now", "2026-10-31T23:00Z"],
    )
    assert earlier.exit_code == 2
    assert f"already has a decision for {decision['period']}, after --now's 2026-10" in (
        earlier.output
    )
    assert cli_db.billing_plans.find_one({"_id": "ws-acme"}) == plan
    assert cli_db.billing_quota.find_one({"_id": "ws-acme"}) == decision


@pytest.mark.parametrize(
    "stored",
    [
        {"computed_at": NOW},  # no period
        {"period": f"{NOW:%Y-%m}", "computed_at": NOW},  # no ticket: an older version's
        {"period": "Nov 2026", "computed_at": NOW},  # not a period: runs replace it
        {"period": "2026-13", "computed_at": NOW},
        {"period": "2026-12\n", "computed_at": NOW},
        {"period": ["2030-01"], "computed_at": NOW},
        {"period": "٢٠٢٦-١٢", "computed_at": NOW},  # Arabic-Indic digits
        {"period": "2026-12"},  # a later month, but no time it was computed at
        {"period": "2026-12", "computed_at": "2026-12-05"},
        {"period": f"{NOW:%Y-%m}", "computed_at": NOW, "draft_ticket": "9"},  # not a ticket
        {"period": f"{NOW:%Y-%m}", "computed_at": NOW, "draft_ticket": 10**9, "state": None},
        {"period": f"{NOW:%Y-%m}", "computed_at": NOW, "draft_ticket": 10**9, "state": 42},
        {"period": "2099-01", "computed_at": datetime(2099, 1, 1, tzinfo=UTC)},  # ahead
    ],
)
def test_a_decision_that_a_run_would_replace_does_not_stop_plan_set(cli_db, stored):
    """Review of the refusal above: a stored decision that `decide` itself replaces (a
    malformed period, one computed ahead of the clock) refused every `plan set`; and
    review of that fix: `plan set` and `decide` must agree on what a period is (a month
    13, a trailing newline, an array, other digits were kept by one and not the other)."""
    cli_db.billing_quota.insert_one({"_id": "ws-acme", "state": "ok"} | stored)
    result = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "1K", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert cli_db.billing_plans.find_one({"_id": "ws-acme"})["token_limit"] == 1_000
    decision = cli_db.billing_quota.find_one({"_id": "ws-acme"})
    assert decision["period"] == f"{NOW:%Y-%m}" and decision["computed_at"] == NOW
    assert decision["state"] in ("ok", "warn", "block")  # replaced, not kept
    assert decision["draft_ticket"] != stored.get("draft_ticket")
    assert f"ws-acme: decision now {decision['state']} " in result.output


def test_plan_set_prints_the_decision_that_stands(cli_db):
    """Review: with a decision of the month from a later draft stored (a run that read
    more usage), `plan set` printed the state it computed, which was not stored."""
    later = {"_id": "ws-acme", "period": f"{NOW:%Y-%m}", "state": "block", "computed_at": NOW}
    cli_db.billing_quota.insert_one({**later, "draft_ticket": 10**9})
    result = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "none", *NOW_ARG)
    assert result.exit_code == 0, result.output
    assert "ws-acme: decision now block" in result.output
    assert cli_db.billing_quota.find_one({"_id": "ws-acme"})["state"] == "block"


def test_a_new_plan_starts_from_the_default_and_none_clears_a_limit(cli_db, monkeypatch):
    monkeypatch.setenv("DEFAULT_TOKEN_LIMIT", "1000")
    get_settings.cache_clear()
    assert "token limit 1,000 tokens, spend limit no limit, warn at 90%" in (
        invoke("plan", "set", "--org", "ws-acme", "--soft", "0.9", *NOW_ARG).output
    )
    cleared = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "none", *NOW_ARG)
    assert "token limit no limit, spend limit no limit, warn at 90%" in cleared.output
    exact = invoke("plan", "set", "--org", "ws-acme", "--soft", "0.80000001", *NOW_ARG)
    assert "warn at 80.000001%" in exact.output  # as written, not rounded to 80% (review)


def test_plan_set_refuses_a_now_ahead_of_the_clock(cli_db):
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "ws-acme", "--soft", "0.9", "--now", "2099-01-01T00:00Z"]
    )
    assert result.exit_code == 1 and "ahead of this machine's clock" in result.output
    assert cli_db.billing_plans.count_documents({}) == 0
    assert cli_db.billing_quota.count_documents({}) == 0


def test_an_invalid_plan_is_named_not_a_traceback(cli_db):
    cli_db.billing_plans.insert_one({"_id": "ws-acme", "token_limit": "10M"})
    result = CliRunner().invoke(main, ["plan", "show", "--org", "ws-acme"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: the plan of 'ws-acme' is invalid (token_limit:")
    fixed = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "10M", *NOW_ARG)
    assert "token limit 10,000,000 tokens" in fixed.output


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("2.01M", 2_010_000), ("1.07B", 1_070_000_000), ("9007199254740993", 9007199254740993)],
)
def test_token_counts_are_read_exactly(text, tokens):
    from chores.cli.quota import parse_tokens

    assert parse_tokens(text) == tokens


@pytest.mark.parametrize("text", ["1,000", "12,345,678", "1_000", "1,000.5"])
def test_thousands_separators_group_thousands(text):
    from chores.cli.quota import parse_tokens
    from chores.core.money import parse_usd

    digits = text.replace(",", "").replace("_", "")
    assert parse_usd(text) == int(Decimal(digits) * 1_000_000)
    if "." not in text:
        assert parse_tokens(text + "K") == int(digits) * 1_000


@pytest.mark.parametrize(("text", "micros"), [("$ 50", 50_000_000), (" $.5 ", 500_000)])
def test_a_dollar_sign_may_stand_apart(text, micros):
    from chores.core.money import parse_usd

    assert parse_usd(text) == micros


@pytest.mark.parametrize("text", ["1e2", "１０", "٣", "0x10", "1.5e-3", "5 0", "+5", "Infinity"])
def test_a_dollar_amount_is_ascii_digits_and_a_point(cli_db, text):
    """Review: `--spend-limit 1e2` set $100.00 and `１０` (full-width) $10.00, which
    `--token-limit` refuses: `Decimal` reads exponents and every script's digits."""
    limit = invoke("plan", "set", "--org", "ws-acme", "--spend-limit", text, *NOW_ARG)
    assert limit.exit_code == 2 and "not a dollar amount" in limit.output
    assert cli_db.billing_plans.count_documents({}) == 0


@pytest.mark.parametrize(
    "text", ["1,5", "1,00", "12,34,5", ",000.50", "1,,000", "1.000,5", "1_5", "0,500", "00,500"]
)
def test_a_comma_that_groups_no_thousands_is_refused_not_dropped(cli_db, text):
    """Review: `--spend-limit 1,5` set $15.00 and `--token-limit 2,5M` 25M tokens (a
    European 1.5 and 2.5 read ten times too high); `--estimate 1,5M` refused a run."""
    limit = invoke("plan", "set", "--org", "ws-acme", "--spend-limit", text, *NOW_ARG)
    assert limit.exit_code == 2 and "not a dollar amount" in limit.output
    tokens = invoke("plan", "set", "--org", "ws-acme", "--token-limit", f"{text}M", *NOW_ARG)
    assert tokens.exit_code == 2 and "not a token count" in tokens.output
    estimate = invoke("quota", "check", "--org", "ws-acme", "--estimate", f"{text}M")
    assert estimate.exit_code == 2 and "not a token count" in estimate.output
    assert cli_db.billing_plans.count_documents({}) == 0


def test_an_estimate_cannot_be_none(cli_db):
    result = CliRunner().invoke(main, ["quota", "check", "--org", "ws-acme", "--estimate", "none"])
    assert result.exit_code == 2 and "not a token count: 'none'" in result.output


def test_unreachable_database_is_one_line_without_the_password(monkeypatch):
    monkeypatch.setenv(
        "MONGO_URL", "mongodb://billing:s3cret-pw@127.0.0.1:9/?directConnection=true"
    )
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "200")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run", "--all"])
        assert result.exit_code == 1
        assert "s3cret-pw" not in result.output
        assert "cannot reach MongoDB at mongodb://billing:***@127.0.0.1:9" in result.output
        assert len(result.output.strip().splitlines()) == 1
        quota = CliRunner().invoke(main, ["quota", "check", "--org", "acme"])
        assert quota.exit_code == 0 and "unknown" in quota.output  # fail-open by default
        assert "s3cret-pw" not in quota.output
    finally:
        get_settings.cache_clear()


def test_a_database_refusing_the_password_is_said_so_in_one_line(monkeypatch):
    """A wrong password read "cannot reach MongoDB ...: is the server running?" (pymongo's
    authentication failure was taken for an unreachable server)."""
    with RefusingMongod() as url:
        monkeypatch.setenv("MONGO_URL", url.replace("mongodb://", "mongodb://billing:s3cret-pw@"))
        monkeypatch.setenv("MONGO_TIMEOUT_MS", "2000")
        get_settings.cache_clear()
        try:
            result = CliRunner().invoke(main, ["run", "--all"])
            quota = CliRunner().invoke(main, ["quota", "check", "--org", "acme"])
        finally:
            get_settings.cache_clear()
    host = url.removeprefix("mongodb://")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: MongoDB at mongodb://billing:***@{host} refused the user or password of "
        "MONGO_URL (authentication failed): check them, and its authSource option if the "
        "user is not in the admin database"
    ]
    assert quota.exit_code == 0 and "unknown" in quota.output  # fail-open, as unreachable
    assert "refused the user or password" in quota.output
    assert "s3cret-pw" not in result.output + quota.output


def test_malformed_mongo_url_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MONGO_URL", "mongodb://user:pw@")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["run", "--all"])
        assert result.exit_code == 1 and "not a valid MongoDB URL" in result.output
        assert ":pw@" not in result.output
    finally:
        get_settings.cache_clear()


def test_finalize_makes_past_periods_final(cli_db):
    invoke("run", "--all", *NOW_ARG)
    result = invoke("finalize", "--now", "2026-12-04T00:00:00+00:00")
    assert result.exit_code == 0
    assert "finalized 2 invoices" in result.output
    assert {i["status"] for i in cli_db.billing_invoices.find()} == {"final"}


def test_a_late_line_is_explained_under_the_invoice(cli_db):
    """Outside review: `(late)` lines had no word under the table, where free and byok have
    one."""
    invoke("run", "--all", *NOW_ARG)
    invoke("finalize", "--now", "2026-12-04T00:00:00+00:00")
    november = NOW.replace(day=20)
    context = {"workspace_id": "ws-beta", "ai_model": "gpt-4o-mini", "ai_tokens": 1_000}
    cli_db.tasks.insert_one({"_id": "late-1", "name": "ai", "status": "SUCCESS",
                             "end_time": november, "last_updated_db": NOW.timestamp() + 86_400,
                             "context": context})  # fmt: skip
    december = ["--now", "2026-12-04T01:00:00+00:00"]
    assert invoke("run", "--org", "ws-beta", *december).exit_code == 0
    shown = invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-12", *december)
    assert shown.exit_code == 0, shown.output
    assert "(late)" in shown.output
    assert "late: usage of a month already final, billed here at its own price" in shown.output
    before = invoke("invoice", "show", "--org", "ws-beta", "--period", "2026-11", *december)
    assert "(late)" not in before.output and "late: usage" not in before.output


def test_registry_validate_names_the_bad_model(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "x"\nmodels:\n- id: cheap\n  tier: free\n  prices:\n'
        '  - {valid_from: "2026-01-01", input: "1", output: "0"}\n'
    )
    result = CliRunner().invoke(main, ["registry", "validate", str(bad)])
    assert result.exit_code == 1 and "cheap" in result.output
    good = CliRunner().invoke(main, ["registry", "list"])
    assert good.exit_code == 0 and "gpt-4o-mini" in good.output


def test_registry_import_litellm_round_trips(tmp_path):
    source = tmp_path / "prices.json"
    source.write_text(
        json.dumps(
            {
                "sample_spec": {"input_cost_per_token": 0},
                "gpt-4o-mini": {
                    "input_cost_per_token": 1.5e-07,
                    "output_cost_per_token": 6e-07,
                    "cache_read_input_token_cost": 7.5e-08,
                    "litellm_provider": "openai",
                    "mode": "chat",
                },
            }
        )
    )
    out = tmp_path / "registry.yaml"
    result = CliRunner().invoke(
        main,
        [
            "registry",
            "import-litellm",
            str(source),
            "--out",
            str(out),
            "--valid-from",
            "2026-11-01",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 1 model to {out}" in result.output
    check = CliRunner().invoke(main, ["registry", "validate", str(out)])
    assert check.exit_code == 0 and "version 2026-11-01, 1 model\n" in check.output
    assert "0.075" in out.read_text()
    # named .json, written as JSON: the same registry, loaded as the name says
    as_json = tmp_path / "registry.json"
    args = ["--out", str(as_json), "--valid-from", "2026-11-01"]
    result = CliRunner().invoke(main, ["registry", "import-litellm", str(source), *args])
    assert result.exit_code == 0, result.output
    assert json.loads(as_json.read_text())["models"][0]["prices"][0]["cached_input"] == "0.075"
    assert load_registry(as_json).models == load_registry(out).models
    for args, says in (
        (["--valid-from", "2026-13-01"], "2026-13-01 is not a calendar day"),
        (["--valid-from", "1/11/2026"], "'1/11/2026' is not a day: expected YYYY-MM-DD"),
        (["--out", str(tmp_path / "missing" / "r.yaml")], "cannot write"),
        (["--out", str(tmp_path / "r.txt")], "a registry file ends in .yaml, .yml or .json"),
    ):
        refused = CliRunner().invoke(main, ["registry", "import-litellm", str(source), *args])
        assert refused.exit_code in (1, 2) and says in refused.output, refused.output
        assert "Traceback" not in refused.output


def test_import_litellm_says_which_text_models_it_left_out(tmp_path):
    """Review: 140 chat entries of LiteLLM's map (tiered or per-second pricing, a cost
    missing, a name another key took) were left out without a word; only the zero-priced
    ones were named."""
    chat = {"litellm_provider": "openai", "mode": "chat"}
    source = tmp_path / "map.json"
    source.write_text(
        json.dumps(
            {
                "A/x": {**chat, "input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06},
                "a/x": {**chat, "input_cost_per_token": 9e-06, "output_cost_per_token": 9e-06},
                "tiered": {**chat, "tiered_pricing": [{"input_cost_per_token": 1e-06}]},
                "zero": {**chat, "input_cost_per_token": 0, "output_cost_per_token": 0},
                "embedder": {**chat, "mode": "embedding", "input_cost_per_token": 1e-06},
                # no price: left out, and never priced as A/x by an alias x (outside
                # review: heroku/claude-3-7-sonnet was billed at Snowflake's rates)
                "route/x": {**chat},
            }
        )
    )
    out = tmp_path / "registry.yaml"
    args = ["registry", "import-litellm", str(source), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--valid-from", "2026-11-01"])
    assert result.exit_code == 0, result.output
    assert [m.id for m in load_registry(out).models] == ["A/x"]
    assert "left out 1 model LiteLLM prices at 0 outside the free providers (zero)" in result.output
    assert (
        "left out 2 models LiteLLM does not price per input and output token as a registry "
        "needs (tiers or seconds only, a cost missing or out of range, a name another key "
        "already took) (route/x, tiered): their usage stays unpriced until a registry prices "
        "them"
    ) in result.output
    assert load_registry(out).resolve("a/x").id == "A/x"  # one name, whatever its case
    assert (  # ...whose rates LiteLLM gives otherwise: said (review)
        "priced 1 model at the rates of a key spelled the same but for case, though LiteLLM "
        "gives them others (a/x as A/x): a registry resolves names ignoring case"
    ) in result.output
    assert "embedder" not in result.output  # not a text model: nothing to price per token
    assert load_registry(out).resolve("route/x") is None


def test_demo_runs_without_a_server(tmp_path):
    (tmp_path / "[bold]").mkdir()  # a path is printed as written, never as rich markup
    store = tmp_path / "[bold]" / "demo.json"
    result = CliRunner().invoke(main, ["demo", "--seed", "3", "--store", str(store)])
    assert result.exit_code == 0, result.output
    for marker in ("Invoice acme:", "free: metered", "UNPRICED", "Quota decisions", "exactly once"):
        assert marker in result.output
    assert f"export MONGO_URL=file://{store}" in result.output and store.is_file()


def test_the_demos_quota_lines_show_the_standing_decision_then_a_run_ahead(tmp_path, monkeypatch):
    """Outside review: the demo printed the answer for its 200K estimate ("block") where `chore
    status` showed the standing decision ("warn")."""
    store = tmp_path / "demo.json"
    now = ["--now", "2025-07-10T12:00:00Z"]  # globex near its limit: a 200K run is refused
    demo = CliRunner().invoke(main, ["demo", "--store", str(store), *now])
    assert demo.exit_code == 0, demo.output
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    text = " ".join(demo.output.split())
    assert "globex: warn — " in text and "a run of ~200K tokens: refused (block)" in text
    standing = re.findall(r"(\S+): (ok|warn|block) — [^→]*→ a run of ~200K tokens", text)
    assert len(standing) == 3
    for org, state in standing:
        check = CliRunner().invoke(main, ["quota", "check", "--org", org, "--json", *now])
        assert json.loads(check.output)["state"] == state, (org, check.output)
    get_settings.cache_clear()


def test_a_demo_refused_for_its_now_or_its_options_leaves_the_store_as_it_was(tmp_path):
    store = tmp_path / "demo.json"
    first = CliRunner().invoke(main, ["demo", "--seed", "3", "--store", str(store)])
    assert first.exit_code == 0, first.output
    kept = store.read_bytes()

    ahead = (WALL_CLOCK + timedelta(days=30)).isoformat()
    refused = CliRunner().invoke(main, ["demo", "--store", str(store), "--replace", "--now", ahead])
    assert refused.exit_code == 1 and "ahead of this machine's clock" in refused.output
    assert "Seeded" not in refused.output
    both = CliRunner().invoke(main, ["demo", "--store", str(store), "--no-store"])
    assert both.exit_code == 2 and "--store and --no-store exclude each other" in both.output
    assert store.read_bytes() == kept


def test_a_demo_replaces_another_store_only_when_told_and_a_file_that_is_no_store_never(
    tmp_path,
):
    """Review: `chore demo --store mine.json` replaced a 27.8 MB store, and a text file,
    with the demo's data. Its own store (.chore-demo/store.json) each demo replaces;
    another existing store only with --replace; a file that is no store never."""
    store = tmp_path / "mine.json"
    first = CliRunner().invoke(main, ["demo", "--seed", "3", "--store", str(store)])
    assert first.exit_code == 0, first.output
    kept = store.read_bytes()
    again = CliRunner().invoke(main, ["demo", "--seed", "4", "--store", str(store)])
    assert again.exit_code == 1 and "Seeded" not in again.output
    assert "exists: `chore demo` replaces a store there only with --replace" in " ".join(
        again.output.split()
    )
    assert store.read_bytes() == kept
    told = CliRunner().invoke(main, ["demo", "--seed", "4", "--store", str(store), "--replace"])
    assert told.exit_code == 0, told.output
    assert store.read_bytes() != kept and store.read_bytes().startswith(b'{"format"')

    notes = tmp_path / "notes.txt"
    # Review: notes that quote a store's format were judged a store and replaced.
    notes.write_text('hello\n{"format": "chore-local-store", ...}\n')
    for args in (["--store", str(notes)], ["--store", str(notes), "--replace"]):
        refused = CliRunner().invoke(main, ["demo", *args])
        assert refused.exit_code == 1 and "Seeded" not in refused.output
        said = " ".join(refused.output.split())
        # Review: without --replace it said "only with --replace", which then refused too,
        # and each refusal left a notes.txt.lock beside it.
        assert "is not a local store written by `chore`: never replaced" in said
        assert "only with --replace" not in said
        assert notes.read_text().startswith("hello\n")
        assert not (tmp_path / "notes.txt.lock").exists()


def test_demo_refuses_a_named_pipe_without_waiting_on_it(tmp_path):
    """A path that is no regular file is no store: it used to be opened to read its format
    mark, and a named pipe with no writer hung the command for good."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    refused = CliRunner().invoke(main, ["demo", "--store", str(pipe), "--replace"])
    assert refused.exit_code == 1 and "Seeded" not in refused.output
    assert "is not a local store written by `chore`" in " ".join(refused.output.split())
    assert stat.S_ISFIFO(pipe.stat().st_mode)
    assert not (tmp_path / "pipe.lock").exists()


def test_each_demo_replaces_its_own_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in ("3", "4"):
        result = CliRunner().invoke(main, ["demo", "--seed", seed])
        assert result.exit_code == 0, result.output
    assert (tmp_path / ".chore-demo" / "store.json").is_file()


@pytest.mark.parametrize("org", ["", "x" * 300])
def test_plan_show_refuses_an_org_name_as_every_command_does(cli_db, org):
    result = CliRunner().invoke(main, ["plan", "show", "--org", org])
    assert result.exit_code == 1
    assert "org must be a non-empty string of at most 256 characters" in result.output
    assert "default plan" not in result.output


def test_db_indexes_lists_source_and_billing_indexes(cli_db):
    listed = invoke("db", "indexes")
    assert "tasks: chore_name_stamp" in listed.output
    assert "billing_ledger: runner_seq" in listed.output
    applied = invoke("db", "indexes", "--apply")
    assert applied.exit_code == 0
    assert "chore_spawn_runner" in cli_db.findings.index_information()


def test_status_lists_runs_and_decisions(cli_db):
    invoke("run", "--all", *NOW_ARG)
    result = invoke("status")
    assert result.exit_code == 0
    assert "ws-acme" in result.output and "all" in result.output
    # the fixtures' document without an org flags no invoice: said here, or nowhere
    assert (
        "Runners whose document names no org, not billed: 1 (`chore anomaly list --no-org`)"
        in result.output
    )
    an_hour_later = invoke("status", "--now", (NOW + timedelta(hours=1)).isoformat())
    assert "3,600s" in an_hour_later.output
    before = invoke("status", "--now", (NOW - timedelta(days=1)).isoformat())  # outside review
    assert "after --now" in before.output and "-86,400s" not in before.output


def test_quiet_run_prints_nothing_and_still_bills(cli_db):
    result = invoke("run", "--all", "--quiet", *NOW_ARG)
    assert result.exit_code == 0 and result.output == ""
    assert cli_db.billing_ledger.count_documents({}) > 0


def test_ctrl_c_exits_130_and_the_interrupted_run_is_recorded(cli_db, monkeypatch):
    from chores.metering import ledger as _ledger

    def interrupted(self, entries):
        raise KeyboardInterrupt

    monkeypatch.setattr(_ledger.Ledger, "append", interrupted)
    result = CliRunner().invoke(main, ["run", "--org", "ws-acme", *NOW_ARG])
    assert result.exit_code == 130
    assert "interrupted" in result.output and "Aborted" not in result.output
    (record,) = list(cli_db.billing_runs.find())
    assert record["error"].startswith("KeyboardInterrupt")


def test_a_draft_a_cut_run_wrote_usage_for_says_so_when_shown(cli_db, monkeypatch):
    """Local-store review: after a run cut short between its ledger entries and its
    settle, `invoice show` gave the draft's older total with no word of it (`chore usage`
    said the ledger did not match)."""
    from chores.billing.invoices import Invoices

    note = "usage of this month was written after this draft was built"
    show = ("invoice", "show", "--org", "ws-acme", "--period", "2026-11")
    assert invoke("run", "--org", "ws-acme", *NOW_ARG).exit_code == 0
    assert note not in invoke(*show).output
    before = cli_db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["total_micros"]

    cli_db.tasks.insert_one(ai_runner("late-one", ended=NOW - timedelta(minutes=5), org="ws-acme"))
    with monkeypatch.context() as patch:

        def cut(self: Invoices, *args: object, **kwargs: object) -> None:
            raise KeyboardInterrupt

        patch.setattr(Invoices, "settle", cut)
        assert CliRunner().invoke(main, ["run", "--org", "ws-acme", *NOW_ARG]).exit_code == 130
    shown = invoke(*show).output
    assert cli_db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["total_micros"] == before
    assert f"note: {note} (a run cut short, or one running now): `chore run --org ws-acme` " in (
        " ".join(shown.split())
    )

    assert invoke("run", "--org", "ws-acme", *NOW_ARG).exit_code == 0
    assert note not in invoke(*show).output
    assert cli_db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})["total_micros"] > before


def test_dash_h_is_help():
    assert invoke("-h").output == invoke("--help").output
    assert invoke("run", "-h").output == invoke("run", "--help").output
    assert "--org" in invoke("run", "-h").output


def test_python_dash_m_chores_is_the_chore_command():
    import subprocess
    import sys

    ran = subprocess.run(
        [sys.executable, "-m", "chores", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Usage: chore [OPTIONS] COMMAND [ARGS]...")
    assert all(f"  {name} " in ran.stdout for name in main.commands)


def test_counts_read_as_words_with_separators_and_plurals():
    from chores.core.wording import counted, tally

    assert counted(1, "run") == "1 run" and counted(2, "run") == "2 runs"
    assert counted(7929, "document") == "7,929 documents"
    assert counted(1, "anomaly") == "1 anomaly" and counted(3, "anomaly") == "3 anomalies"
    assert tally({"no_org": 1, "malformed_counters": 3}) == "malformed_counters 3, no_org 1"
    assert tally({}) == "none"


MARKUP_ORG = "ws-[/]acme[bold]"


def test_org_and_runner_ids_that_look_like_rich_markup_are_printed_as_written(env_db, fixture_docs):
    """An org `[/]` once crashed `invoice show`, `usage` and `reconcile` with rich's
    MarkupError: ids are data, never markup."""
    for doc in fixture_docs["tasks"]:
        if doc.get("context", {}).get("workspace_id") == "ws-acme":
            doc["context"]["workspace_id"] = MARKUP_ORG
    top = next(d for d in fixture_docs["tasks"] if d["context"].get("workspace_id") == MARKUP_ORG)
    top["_id"] = "[red]runner[/]"
    env_db.tasks.insert_many(fixture_docs["tasks"])
    env_db.findings.insert_many(fixture_docs["findings"])
    invoke("run", "--org", MARKUP_ORG, *NOW_ARG)
    assert env_db.billing_invoices.find_one({"_id": f"{MARKUP_ORG}:2026-11"})["total_micros"] > 0

    period = ["--org", MARKUP_ORG, "--period", "2026-11"]
    shows = (["invoice", "show", *period], ["usage", *period], ["usage", *period, "--by", "run"])
    for args in shows:
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert f"{MARKUP_ORG}:2026-11" in result.output
    env_db.billing_ledger.delete_many({"runner_id": {"$regex": "runner"}})  # a mismatch to show
    reconciled = CliRunner().invoke(main, ["reconcile", *period, *NOW_ARG], env={"COLUMNS": "200"})
    assert reconciled.exit_code == 4, reconciled.output
    assert f"Reconciliation {MARKUP_ORG}:2026-11" in reconciled.output
    assert "runner str:'[red]runner[/]': source 12,000 tokens, ledger 0" in reconciled.output


@pytest.mark.parametrize("args", [[], ["quota"], ["plan"]])
def test_a_group_alone_prints_its_help_not_an_error(args):
    result = CliRunner().invoke(main, args)
    assert result.output.startswith(f"Usage: {' '.join(['main', *args])} [OPTIONS] COMMAND")
    assert "Error" not in result.output and "Commands:" in result.output


def test_registry_list_prints_rates_as_written_never_in_exponent_form(tmp_path, monkeypatch):
    path = tmp_path / "registry.yaml"
    path.write_text(
        'version: "1"\nmodels:\n- id: tiny\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "0.000000000000000000000000000001", output: "2"}\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("REGISTRY_PATH", str(path))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["registry", "list"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "0.000000000000000000000000000001" in result.output and "E-" not in result.output


def test_registry_list_says_a_model_priced_only_from_a_later_day_is_unpriced_today(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text(
        'version: "1"\nmodels:\n- id: soon\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2027-01-01", input: "1", output: "2"}\n'
        '  - {valid_from: "2027-06-01", input: "9", output: "9"}\n',
        encoding="utf-8",
    )
    listed = ["registry", "list", str(path), "--now", "2026-12-03T00:00:00+00:00"]
    result = CliRunner(env={"COLUMNS": "200"}).invoke(main, listed)
    assert result.exit_code == 0, result.output
    (row,) = [line for line in result.output.splitlines() if "soon" in line]
    assert "from 2027-01-01" in row and row.count("unpriced") == 3
    assert "9" not in row.replace("2027", "")
    later = CliRunner(env={"COLUMNS": "200"}).invoke(main, [*listed[:3], "--now", "2027-07-01"])
    (row,) = [line for line in later.output.splitlines() if "soon" in line]
    assert "2027-06-01" in row and "unpriced" not in row
    # Outside hunt: the day of `--now` as written, not its UTC day (`valid_from` is one):
    # 2027-05-31 20:00 at -08:00 is June 1st in UTC.
    western = [*listed[:3], "--now", "2027-05-31T20:00:00-08:00"]
    shown = CliRunner(env={"COLUMNS": "200"}).invoke(main, western).output
    (row,) = [line for line in shown.splitlines() if "soon" in line]
    assert "2027-06-01" in row


def test_plan_set_without_redis_url_on_a_server_says_the_mirror_still_answers(env_db, monkeypatch):
    """Review: from the host (the Compose Redis is not published), `plan set` said
    "decision now block" while checks through the workers' mirror answered the old `ok` for
    up to 6 minutes, unsaid. It says so, and how to apply it at once; an in-process store,
    which no worker mirrors, gets no such note."""
    import chores.cli.quota as quota_cli

    local_url, local_connect = os.environ["MONGO_URL"], quota_cli.connect
    args = ["plan", "set", "--org", "ws-acme", "--token-limit", "1K", *NOW_ARG]
    local = CliRunner().invoke(main, args)
    assert local.exit_code == 0 and "REDIS_URL" not in local.output
    monkeypatch.setenv("MONGO_URL", "mongodb://billing:s3cret@mongo:27017/")
    monkeypatch.setattr(quota_cli, "connect", lambda settings: env_db)
    get_settings.cache_clear()
    on_server = CliRunner().invoke(main, args)
    assert on_server.exit_code == 0, on_server.output
    said = " ".join(on_server.output.split())
    assert "ws-acme: decision now" in said
    assert "note: REDIS_URL is not set here, so a Redis mirror of the decisions" in said
    assert "docker compose exec worker chore plan set" in said and "s3cret" not in said

    # Review: REDIS_URL taken from the Compose file (`redis://redis:6379`), unreachable
    # from the host: the mirror write failed without a word. Said on a local store too
    # (review: only server URLs got the note). The local store stands in for the server:
    # an in-process database under a server's URL is not mirrored at all (next test).
    closed = closed_port()
    monkeypatch.setenv("MONGO_URL", local_url)
    monkeypatch.setattr(quota_cli, "connect", local_connect)
    monkeypatch.setenv("REDIS_URL", f"redis://:r3dis-pw@127.0.0.1:{closed}/0")
    get_settings.cache_clear()
    unreachable = CliRunner().invoke(main, args)
    assert unreachable.exit_code == 0, unreachable.output
    said = " ".join(unreachable.output.split())
    assert "note: the Redis at REDIS_URL could not be reached (ConnectionError)" in said
    assert "r3dis-pw" not in said

    # `chore run` says it too (review: a run that could not reach Redis left the mirror
    # answering the previous decision, unsaid).
    ran = CliRunner().invoke(main, ["run", "--org", "ws-acme", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    said = " ".join(ran.output.split())
    assert "warning: the Redis at REDIS_URL could not be reached (ConnectionError)" in said
    assert "answers the previous ones for up to QUOTA_CACHE_TTL_SECONDS" in said
    assert "r3dis-pw" not in said


def test_plan_set_for_an_org_with_no_invoice_says_so(cli_db):
    """Review: a typo'd org got "decision now ok (from the invoice of 2026-11)" for an
    invoice that does not exist."""
    typo = invoke("plan", "set", "--org", "ws-acmee", "--token-limit", "1K", *NOW_ARG)
    assert "ws-acmee: decision now ok (no usage billed in 2026-11 yet)" in typo.output
    invoke("run", "--org", "ws-acme", *NOW_ARG)
    real = invoke("plan", "set", "--org", "ws-acme", "--token-limit", "10M", *NOW_ARG)
    assert "ws-acme: decision now ok (from the invoice of 2026-11)" in real.output


@pytest.mark.parametrize("command", [["registry", "validate"], ["registry", "import-litellm"]])
def test_a_missing_registry_file_is_a_user_error_in_every_registry_command(tmp_path, command):
    """Outside review: `validate` exited 1, `import-litellm` 2 (click's usage error)."""
    missing = tmp_path / "nowhere.json"
    result = CliRunner().invoke(main, [*command, str(missing)])
    assert result.exit_code == 1, result.output
    assert str(missing) in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{}", "nothing to import: none of the 0 entries"),
        ('{"m": {"mode": "embedding", "input_cost_per_token": 1e-7}}', "none of the 1 entries"),
    ],
)
def test_import_litellm_says_why_a_file_gives_no_registry(tmp_path, text, said):
    """Outside review: a deeply nested file was a RecursionError's traceback; a file with
    nothing to import said 'Fix the entry in (LiteLLM data)'."""
    source = tmp_path / "prices.json"
    source.write_text(text)
    result = CliRunner().invoke(main, ["registry", "import-litellm", str(source)])
    assert result.exit_code == 1, result.output
    assert f"Error: {source}: " in result.output and said in result.output
    assert "Traceback" not in result.output


def test_the_run_says_which_anomalies_are_new(cli_db):
    """The open anomalies of runners read again count in a run's anomalies, and the summary
    says how many of them no earlier run had left open."""
    dry = json.loads(invoke("run", "--all", "--dry-run", "--json", *NOW_ARG).output)
    assert (sum(dry["anomalies"].values()), dry["new_anomalies"]) == (2, 2)
    first = invoke("run", "--all", *NOW_ARG)
    assert "2 anomalies (2 new)" in first.output
    again = invoke("run", "--all", "--full", *NOW_ARG)  # every runner read again
    assert "2 anomalies (none new)" in again.output
    dry = json.loads(invoke("run", "--all", "--full", "--dry-run", "--json", *NOW_ARG).output)
    assert (sum(dry["anomalies"].values()), dry["new_anomalies"]) == (2, 0)
    cli_db.billing_anomalies.update_many({"kind": "no_org"}, {"$set": {"resolved": True}})
    reopened = invoke("run", "--all", "--full", *NOW_ARG)
    assert "2 anomalies (1 new)" in reopened.output


def test_a_bulk_write_error_is_one_short_line_without_the_documents_it_holds():
    """A duplicate key in a bulk write (a store edited by hand) is its first error and a
    count, not every refused document (a whole ledger entry each: outside review)."""
    import click
    from pymongo.errors import BulkWriteError

    from chores.cli.common import user_errors

    refused = {"_id": "r1:1", "org": "acme", "amount_micros_exact": "12402.4"}
    error = {"index": 0, "code": 11000, "errmsg": "E11000 duplicate key", "op": refused}

    @user_errors
    def command() -> None:
        raise BulkWriteError({"writeErrors": [error, {**error, "index": 1}], "nInserted": 0})

    with pytest.raises(click.ClickException) as raised:
        command()
    assert raised.value.message == (
        "database error: E11000 duplicate key (code 11000; 2 writes of the batch failed)"
    )


def test_an_org_whose_own_run_billed_nothing_is_not_told_to_run_first(env_db):
    """Review: an org whose runners used no tokens was told, after `chore run --org zero`
    billed nothing, to "run `chore run --org zero` first" again."""
    env_db.tasks.insert_one(
        ai_runner("zero-run", ended=NOW - timedelta(hours=1), tokens=0, org="zero")
    )
    before = CliRunner().invoke(main, ["invoice", "show", "--org", "zero", *NOW_ARG])
    assert before.output.strip().endswith("run `chore run --org zero` first")
    ran = CliRunner().invoke(main, ["run", "--org", "zero", *NOW_ARG])
    assert ran.exit_code == 0, ran.output
    after = CliRunner().invoke(main, ["invoice", "show", "--org", "zero", *NOW_ARG])
    assert after.exit_code == 1
    assert " ".join(after.output.split()) == (
        "Error: no invoice for org 'zero' in 2026-11; a run of it billed no usage in that "
        "month: its runners used no tokens, or are held (`chore anomaly list --org zero`)"
    )


def test_import_litellm_says_which_models_lose_their_off_peak_rates(tmp_path):
    """Outside review: DeepSeek's entries carry cheaper off-peak rates by the hour, which a
    registry cannot hold: their usage was billed at the standard rates, 2x LiteLLM's in
    those hours, without a word."""
    chat = {"litellm_provider": "deepseek", "mode": "chat"}
    rates = {"input_cost_per_token": 3e-07, "output_cost_per_token": 1.2e-06}
    off_peak = {"input_cost_per_token": 1.5e-07, "windows": [{"hours_utc": "00:00-00:00"}]}
    source = tmp_path / "map.json"
    source.write_text(
        json.dumps(
            {
                "deepseek/flash": {**chat, **rates, "off_peak_pricing": off_peak},
                "deepseek/plain": {**chat, **rates},
            }
        )
    )
    out = tmp_path / "registry.yaml"
    result = CliRunner().invoke(
        main, ["registry", "import-litellm", str(source), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert (
        "priced 1 model at their standard rates, though LiteLLM also gives them cheaper "
        "off-peak rates by the hour (deepseek/flash): a registry's prices hold for whole days"
    ) in result.output


def test_import_litellm_never_writes_a_registry_too_large_to_load(tmp_path, monkeypatch):
    """Outside review: a 40,000-model map was written over a working registry, which every
    command then refused (larger than a registry may be); a 167 MB input ran for minutes."""
    from chores.cli import registry as registry_cli

    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    source = tmp_path / "map.json"
    source.write_text(json.dumps({f"model-{n}": {**chat, **rates} for n in range(200)}))
    out = tmp_path / "registry.yaml"
    out.write_text("version: v\nmodels: []\n")
    monkeypatch.setattr(registry_cli, "MAX_REGISTRY_BYTES", 5_000)
    args = ["registry", "import-litellm", str(source), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "bytes, more than the 5,000 a registry may be: nothing written" in result.output
    assert out.read_text() == "version: v\nmodels: []\n"
    monkeypatch.setattr(registry_cli, "MAX_LITELLM_BYTES", 1_000)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "more than the 1,000 LiteLLM's price map could be" in result.output


def test_import_litellm_over_a_registry_says_what_it_priced_earlier(tmp_path):
    """Outside review: `--out` over a working registry replaced it whole, and every model
    it priced before the new `--valid-from` lost those prices without a word."""
    chat = {"litellm_provider": "openai", "mode": "chat"}
    source = tmp_path / "map.json"
    source.write_text(
        json.dumps(
            {"gpt-4o": {**chat, "input_cost_per_token": 2.5e-06, "output_cost_per_token": 1e-05}}
        )
    )
    out = tmp_path / "registry.yaml"
    out.write_text(
        'version: "old"\nmodels:\n- id: gpt-4o\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2024-05-13", input: "2.5", output: "10"}\n'
    )
    args = ["registry", "import-litellm", str(source), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--valid-from", "2026-11-01"])
    assert result.exit_code == 0, result.output
    assert (
        "note: the registry replaced priced 1 model before 2026-11-01 (gpt-4o): their usage "
        "before then is now unpriced"
    ) in result.output
    again = CliRunner().invoke(main, [*args, "--valid-from", "2024-05-13"])
    assert again.exit_code == 0 and "note:" not in again.output
