"""`chore quota check`, `chore plan set/show` and `chore status` at their edges: required
options and exit codes, limits at their bounds, what `status` says of the source indexes
and of the last runs.

Found untested by mutation testing of chores/cli/quota.py (stop 55): each docstring names
the mutant its test kills."""

from __future__ import annotations

from click.testing import CliRunner

from chores.cli import main

from support import NOW

NOW_ARG = ["--now", NOW.isoformat()]


def test_status_names_the_source_indexes_the_database_lacks(env_db):
    """Mutants of `print_source_indexes` (quota.py:381 early return, :385 drop `not`,
    :390/:392/:393 rows, table and command line -> pass, :378 its call -> pass): `chore
    status` said nothing (or "all present") of the missing source indexes, their cost or the
    command that creates them; only the all-present line is tested, in a subprocess."""
    from chores.core.db import APPLY_INDEXES_COMMAND

    result = CliRunner().invoke(main, ["status", *NOW_ARG])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "Source indexes MISSING" in said and "all present" not in said
    assert "tasks {name: 1, last_updated_db: 1} (chore_name_stamp)" in said  # the index
    assert "collection scan of tasks" in said  # what it costs
    assert f"create them (needs a role that may create indexes): {APPLY_INDEXES_COMMAND}" in said


def test_a_fraction_of_a_token_is_a_usage_error(env_db):
    """Mutant quota.py:65 `raise ValueError("not a whole number of tokens")` -> pass:
    `--estimate 1.5` (a fraction of a token) crashed (exit 1, a TypeError) instead of
    exit 2 naming the value; no test gives a token count that is not whole."""
    result = CliRunner().invoke(main, ["quota", "check", "--org", "acme", "--estimate", "1.5"])
    assert result.exit_code == 2, result.output
    assert "not a whole number of tokens: '1.5'" in result.output


def test_the_largest_storable_token_limit_is_accepted(env_db):
    """Mutant quota.py:108 `amount > MAX_INT64` -> `>=`: a limit of exactly 2**63 - 1
    tokens (the most MongoDB stores) was refused; only values above it are tested."""
    most = str(2**63 - 1)
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", most, *NOW_ARG]
    )
    assert result.exit_code == 0, result.output
    assert f"token limit {2**63 - 1:,} tokens" in result.output
    over = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", str(2**63), *NOW_ARG]
    )
    assert over.exit_code == 2 and "at most" in over.output


def test_spend_limit_none_removes_the_spend_limit(env_db):
    """Mutant quota.py:99 `return "none"` (UsdType) -> pass: `--spend-limit none` was
    refused (exit 2, not a dollar amount); only `--token-limit none` is tested."""
    CliRunner().invoke(main, ["plan", "set", "--org", "acme", "--spend-limit", "$50", *NOW_ARG])
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--spend-limit", "none", *NOW_ARG]
    )
    assert result.exit_code == 0, result.output
    assert "spend limit no limit" in result.output
    assert env_db.billing_plans.find_one({"_id": "acme"})["spend_limit_micros"] is None


def test_plan_set_refuses_an_empty_org_and_writes_nothing(env_db):
    """Mutant quota.py:206 `org = validate_org(org)` (plan set) -> pass."""
    result = CliRunner().invoke(main, ["plan", "set", "--org", "", "--token-limit", "1K", *NOW_ARG])
    assert result.exit_code == 1, result.output
    assert "org must be a non-empty string" in result.output
    assert env_db.billing_plans.count_documents({}) == 0


def test_plan_set_with_nothing_to_set_is_a_usage_error_and_writes_nothing(env_db):
    """Mutant quota.py:217 `raise click.UsageError("nothing to set ...")` -> pass: `plan set
    --org acme` alone wrote a default plan for acme and exited 0."""
    result = CliRunner().invoke(main, ["plan", "set", "--org", "acme", *NOW_ARG])
    assert result.exit_code == 2, result.output
    assert "nothing to set" in result.output
    assert env_db.billing_plans.count_documents({}) == 0


def test_plan_set_stamps_the_plan_with_now(env_db):
    """Mutant quota.py:240 `changes["updated_at"] = now` -> pass: the plan was written
    without its `updated_at` (SPEC section 4: the times the chore writes come from `now`)."""
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", "1K", *NOW_ARG]
    )
    assert result.exit_code == 0, result.output
    stamped = env_db.billing_plans.find_one({"_id": "acme"})["updated_at"]
    assert stamped.replace(tzinfo=NOW.tzinfo) == NOW


def test_org_is_a_required_option_exit_2(env_db):
    """Mutants quota.py:119, :187, :280 `required=True` -> False (quota check, plan set,
    plan show): a missing --org exited 1 ("bad org") from validate_org(None), not 2 (bad
    usage) naming the option."""
    for args in (["quota", "check"], ["plan", "set", "--token-limit", "1K"], ["plan", "show"]):
        result = CliRunner().invoke(main, [*args, *NOW_ARG] if args[0] == "quota" else args)
        assert result.exit_code == 2, (args, result.output)
        assert "Missing option '--org'" in result.output, args


def test_a_later_decision_computed_at_the_skew_limit_still_refuses_a_backdated_plan(env_db):
    """Mutants quota.py:276 `<=` -> `<` and `wall_clock() + skew` -> `- skew`: a later
    month's decision computed exactly `future_skew_seconds` after the wall clock stands
    (it is not "ahead of the clock"), so `plan set --now <earlier month>` is refused."""
    from datetime import timedelta

    from chores import get_settings

    from support import WALL_CLOCK

    skew = timedelta(seconds=get_settings().future_skew_seconds)
    assert skew > timedelta(0)
    env_db.billing_quota.insert_one(
        {"_id": "acme", "period": "2026-12", "computed_at": WALL_CLOCK + skew}
    )
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", "1K", *NOW_ARG]
    )
    assert result.exit_code == 2, result.output
    assert "already has a decision for 2026-12" in result.output
    assert env_db.billing_plans.count_documents({}) == 0


def test_plan_show_says_default_plan_only_when_the_org_has_none(env_db):
    """Mutant quota.py:287 `default=doc is None` -> `is not None`: `plan show` labelled
    an org's own plan "(default plan)" and the default one as its own."""
    none_yet = CliRunner().invoke(main, ["plan", "show", "--org", "acme"])
    assert none_yet.exit_code == 0, none_yet.output
    assert none_yet.output.startswith("acme (default plan): token limit")
    CliRunner().invoke(main, ["plan", "set", "--org", "acme", "--token-limit", "1K", *NOW_ARG])
    own = CliRunner().invoke(main, ["plan", "show", "--org", "acme"])
    assert own.output.startswith("acme: token limit 1,000 tokens"), own.output


def test_plan_set_mirror_note_goes_to_stderr(env_db, monkeypatch):
    """Mutant quota.py:264 `err=True` -> False: the "a Redis mirror ... still answers the
    previous one" note of `plan set` went to stdout, mixed into the plan it prints."""
    import chores.cli.quota as quota_cli
    from chores import get_settings

    monkeypatch.setenv("MONGO_URL", "mongodb://billing:s3cret@mongo:27017/")
    monkeypatch.setattr(quota_cli, "connect", lambda settings: env_db)
    get_settings.cache_clear()
    result = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", "1K", *NOW_ARG]
    )
    assert result.exit_code == 0, result.output
    assert "a Redis mirror of the decisions" in " ".join(result.stderr.split())
    assert "Redis mirror" not in result.stdout
    get_settings.cache_clear()


def test_status_shows_the_last_10_runs_by_default(env_db):
    """Mutants quota.py:314 `default=10` -> 11 / 9: `chore status` showed one run more or
    one fewer than the 10 its help promises; no test has more than a few runs."""
    from datetime import timedelta

    env_db.billing_runs.insert_many(  # newest first: r00 .. r10 (not as the chore writes
        # them, so each is one "malformed" row naming its id, whatever the table's width)
        {"_id": f"r{i:02}", "started_at": NOW - timedelta(minutes=i)}
        for i in range(11)
    )
    result = CliRunner().invoke(main, ["status", *NOW_ARG])
    assert result.exit_code == 0, result.output
    shown = {f"r{i:02}" for i in range(11) if f"record r{i:02} " in result.output}
    assert shown == {f"r{i:02}" for i in range(10)}, result.output


def test_status_limit_is_at_least_1(env_db):
    """Mutants quota.py:314 `IntRange(1)` -> IntRange(2) / IntRange(0): `--limit 1` was
    refused, or `--limit 0` accepted (MongoDB reads limit 0 as no limit: every run)."""
    from datetime import timedelta

    env_db.billing_runs.insert_many(
        {"_id": f"r{i:02}", "started_at": NOW - timedelta(minutes=i)} for i in range(3)
    )
    one = CliRunner().invoke(main, ["status", "--limit", "1", *NOW_ARG])
    assert one.exit_code == 0, one.output
    assert "record r00 " in one.output and "record r01 " not in one.output
    zero = CliRunner().invoke(main, ["status", "--limit", "0", *NOW_ARG])
    assert zero.exit_code == 2, zero.output


def test_status_says_after_now_for_a_decision_one_second_after_now(env_db):
    """Mutant quota.py:367 `age >= 0` -> `age >= -1`: a decision computed 1 s after
    `--now` showed an age of "-1s" instead of "after --now"."""
    from datetime import timedelta

    later = (NOW + timedelta(seconds=1)).isoformat()
    made = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", "1K", "--now", later]
    )
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(main, ["status", *NOW_ARG])
    assert result.exit_code == 0, result.output
    assert "after --now" in result.output and "-1s" not in result.output


def test_quota_check_without_estimate_estimates_no_tokens(env_db):
    """Mutant quota.py:123 `--estimate` `default=0` -> 1: with a limit of 1 token and none
    used, `quota check` with no --estimate answered refused (exit 3), not allowed (0)."""
    made = CliRunner().invoke(
        main, ["plan", "set", "--org", "acme", "--token-limit", "1", *NOW_ARG]
    )
    assert made.exit_code == 0, made.output
    result = CliRunner().invoke(main, ["quota", "check", "--org", "acme", *NOW_ARG])
    assert result.exit_code == 0, result.output
    one = CliRunner().invoke(main, ["quota", "check", "--org", "acme", "--estimate", "1", *NOW_ARG])
    assert one.exit_code == 3, one.output


def test_a_database_error_in_the_unknown_org_note_leaves_only_the_note_out(env_db, monkeypatch):
    """Mutant quota.py:175 `return` (after `except PyMongoError`) -> pass: the note's
    read failing crashed `quota check` (exit 1, UnboundLocalError) instead of answering."""
    from pymongo.errors import PyMongoError

    def failing(collections, org):
        raise PyMongoError("connection lost")

    monkeypatch.setattr("chores.cli.quota.unknown_org_note", failing)
    result = CliRunner().invoke(main, ["quota", "check", "--org", "nosuch", *NOW_ARG])
    assert result.exit_code == 0, result.output  # fail-open: no decision yet
    assert result.stdout.startswith("nosuch: unknown")
    assert "no invoice of any month" not in result.stderr  # the note left out


def test_status_with_every_source_index_says_only_all_present(env_db):
    """Mutant quota.py:387 `return` (after "Source indexes: all present") -> pass: `chore
    status` then also printed an empty "Source indexes MISSING" table and the command to
    create them (the subprocess test only looks for the all-present line)."""
    applied = CliRunner().invoke(main, ["db", "indexes", "--apply"])
    assert applied.exit_code == 0, applied.output
    result = CliRunner().invoke(main, ["status", *NOW_ARG])
    assert result.exit_code == 0, result.output
    assert "Source indexes: all present" in result.output
    assert "MISSING" not in result.output and "create them" not in result.output
