"""What every command shares (`chores/cli/common.py`): found untested by mutation testing
(stop 56)."""

from __future__ import annotations

from click.testing import CliRunner

from chores.cli import main


def test_json_and_csv_together_is_a_usage_error_not_a_silent_choice(metered_env_db):
    args = ["invoice", "show", "--org", "ws-acme", "--period", "2026-11", "--json", "--csv"]
    result = CliRunner().invoke(main, args, prog_name="chore")
    assert result.exit_code == 2, result.output
    assert "give at most one of --json and --csv" in result.output


def test_an_option_in_bytes_that_are_not_utf8_is_refused_before_the_command_runs(tmp_path):
    """A lone surrogate (what Python makes of bytes that are not UTF-8 in an argument) is
    refused in one line, exit 1, before anything is written."""
    import json

    source = tmp_path / "map.json"
    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    source.write_text(json.dumps({"m": {**chat, **rates}}))
    out = tmp_path / "registry.yaml"
    args = ["registry", "import-litellm", str(source), "--out", str(out), "--version", "v\udcff"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert result.output == "Error: --version is not UTF-8 text: 'v\\udcff'\n"
    assert not out.exists()


def test_a_database_error_that_is_not_a_bulk_write_is_its_message_in_one_line(env_db):
    import click
    import pytest
    from pymongo.errors import ServerSelectionTimeoutError

    from chores.cli.common import user_errors

    @user_errors
    def command() -> None:
        raise ServerSelectionTimeoutError("db.example:27017: timed out")

    with pytest.raises(click.ClickException) as raised:
        command()
    assert raised.value.message == "database error: db.example:27017: timed out"
