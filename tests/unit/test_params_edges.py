"""Arguments checked where click parses them (`chores/cli/params.py`): found untested by
mutation testing (stop 56)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chores.cli import main


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), prog_name="chore")


def test_finalize_grace_days_given_on_the_command_line_is_the_grace_applied(metered_env_db):
    """`--grace-days 0` finalizes November half a day after it ends, where the default
    grace (3 days) finalizes nothing yet; 366, the largest, is accepted too."""
    after_november = ["--now", "2026-12-01T12:00:00+00:00"]
    waits = invoke("finalize", *after_november)
    assert waits.exit_code == 0, waits.output
    assert waits.stdout.startswith("finalized 0 invoices (none due: a month is finalized 3 days")
    longest = invoke("finalize", "--grace-days", "366", *after_november)
    assert longest.exit_code == 0, longest.output
    assert "finalized 0 invoices (none due: a month is finalized 366 days" in longest.stdout
    too_long = invoke("finalize", "--grace-days", "367", *after_november)
    assert too_long.exit_code == 2, too_long.output
    assert "Invalid value for '--grace-days': 367 is not a number of days" in too_long.output
    at_once = invoke("finalize", "--grace-days", "0", *after_november)
    assert at_once.exit_code == 0, at_once.output
    assert at_once.stdout == "finalized 2 invoices: ws-acme:2026-11, ws-beta:2026-11\n"
    invoice = metered_env_db.billing_invoices.find_one({"_id": "ws-acme:2026-11"})
    assert invoice["status"] == "final"


@pytest.mark.parametrize("moment", ["1999-12-31T23:59:59+00:00", "3000-01-01T00:00:00+00:00"])
def test_a_now_outside_the_years_2000_to_2999_is_a_usage_error(env_db, moment):
    result = invoke("finalize", "--now", moment)
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--now'" in result.output
    assert "is out of range: expected a year from 2000 to 2999" in result.output
    assert env_db.billing_invoices.count_documents({}) == 0


@pytest.mark.parametrize("day", ["1999-12-31", "3000-01-01"])
def test_a_valid_from_outside_the_years_2000_to_2999_is_a_usage_error(tmp_path, day):
    source = tmp_path / "prices.json"
    price = {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}
    source.write_text(
        json.dumps({"gpt-x": {**price, "litellm_provider": "openai", "mode": "chat"}})
    )
    result = invoke("registry", "import-litellm", str(source), "--valid-from", day)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--valid-from': {day} is out of range" in result.output
    edge = "2000-01-01" if day < "2000" else "2999-12-31"
    accepted = invoke("registry", "import-litellm", str(source), "--valid-from", edge)
    assert accepted.exit_code == 0, accepted.output
    assert f'valid_from: "{edge}"' in accepted.stdout


def test_the_help_lists_every_command_with_its_summary():
    result = CliRunner().invoke(main, ["--help"], prog_name="chore")
    assert result.exit_code == 0, result.output
    commands = result.output.split("Commands:")[1].splitlines()
    listed = {line.split()[0] for line in commands if line.startswith("  ") and line.split()}
    assert {"run", "finalize", "reconcile", "registry", "db", "invoice", "usage"} <= listed
    row = next(line for line in commands if line.split()[:1] == ["finalize"])
    assert (
        "Turn the drafts of periods ended more than the grace ago final."
        in " ".join(result.output.split("Commands:")[1].split())
        and row.strip() != "finalize"
    )


@pytest.mark.parametrize("period", ["2026-01", "2026-12", "2000-01", "2999-12"])
def test_the_first_and_last_months_of_a_year_are_periods(metered_env_db, period):
    """Accepted and looked up (the org has no invoice then), not a usage error."""
    result = invoke("usage", "--org", "ws-acme", "--period", period, "--json")
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: no invoice for org 'ws-acme' in {period}")


@pytest.mark.parametrize("args", [["--bogus"], ["registry", "--bogus"], ["quota", "--bogus"]])
def test_an_unknown_option_of_a_group_is_one_line_and_exit_2(args):
    """A usage error while a group parses its own options is the same one line as every
    other usage error, never a traceback."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    where = " ".join(["chore", *args[:-1]])
    assert result.output == f"Error: No such option '--bogus'. ({where} -h for help)\n"


@pytest.mark.parametrize("command", [["run"], ["quota", "check"], ["invoice", "show"]])
def test_an_option_given_without_its_value_says_where_help_is_once(command):
    """click's parser names no command for `--org` given last without its value: the line
    still says where help is, the command's own, once (not once per group it passes)."""
    result = invoke(*command, "--org")
    assert result.exit_code == 2, result.output
    where = " ".join(["chore", *command])
    assert result.output == f"Error: Option '--org' requires an argument. ({where} -h for help)\n"


@pytest.mark.parametrize("moment", ["2000-01-01T00:00:00+00:00", "2999-12-31T23:59:59+00:00"])
def test_a_now_in_the_first_or_last_year_is_accepted(moment):
    result = invoke("registry", "list", "--now", moment)
    assert result.exit_code == 0, result.output
    assert "Invalid value" not in result.output


def test_grace_days_that_is_not_a_number_is_one_line_and_exit_2(env_db):
    result = invoke("finalize", "--grace-days", "three")
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: Invalid value for '--grace-days': three is not a number of days: expected 0 "
        "to 366, such as 3 (chore finalize -h for help)\n"
    )
