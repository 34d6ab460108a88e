"""Issue 18 item 4 (the minimal part): a command on a `mongomock://` store, which keeps
nothing between commands, says so on stderr; machine output and errors stay as they are."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from chores.cli import main

from support import NOW

NOTE = "is an in-process store: nothing is kept after this command"


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["plan", "show", "--org", "acme"],
        ["plan", "set", "--org", "acme", "--token-limit", "1M"],
        ["run", "--all", "--now", NOW.isoformat()],
        ["finalize", "--now", NOW.isoformat()],
        ["db", "indexes"],
    ],
)
def test_every_store_command_says_once_on_stderr(env_db, args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count(NOTE) == 1
    assert NOTE not in result.stdout
    (line,) = [x for x in result.stderr.splitlines() if NOTE in x]
    assert line.startswith("note: mongomock://test-")


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--all", "--json", "--now", NOW.isoformat()],
        ["run", "--all", "--quiet", "--now", NOW.isoformat()],
        ["quota", "check", "--org", "acme", "--json"],
    ],
)
def test_machine_output_gets_no_note(env_db, args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert NOTE not in result.output
    if "--json" in args:
        json.loads(result.output)


def test_an_error_stays_one_line(env_db):
    result = CliRunner().invoke(main, ["invoice", "show", "--org", "nope", "--period", "2026-11"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: no invoice for org 'nope' in 2026-11; run `chore run --org nope` first"
    )


def test_a_real_server_url_gets_no_note(monkeypatch):
    from chores import cli, get_settings

    monkeypatch.setenv("MONGO_URL", "mongodb://db.example:27017")
    get_settings.cache_clear()
    try:
        assert cli.ephemeral_note() is None
    finally:
        get_settings.cache_clear()


def test_demo_and_registry_get_no_note_and_help_says_it(env_db, tmp_path):
    assert NOTE not in invoke("registry", "list").output
    demo = invoke("demo", "--seed", "3", "--store", str(tmp_path / "store.json"))
    assert NOTE not in demo.output  # its data is kept: it says where
    assert "The demo's data stays in" in demo.stdout and demo.stderr == ""
    throwaway = invoke("demo", "--seed", "3", "--no-store")
    assert throwaway.stderr == "note: --no-store: the demo's data is not kept after this command\n"
    help_text = " ".join(invoke("--help").output.split())
    assert "MONGO_URL=mongomock://NAME is an in" in help_text
    assert "store that keeps nothing after each command" in help_text


def test_a_file_store_gets_no_note(tmp_path, monkeypatch):
    from chores import cli, get_settings

    store = tmp_path / "store.json"
    assert invoke("demo", "--seed", "3", "--store", str(store)).exit_code == 0
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    get_settings.cache_clear()
    try:
        assert cli.ephemeral_note() is None
        status = invoke("status")
        assert status.exit_code == 0 and NOTE not in status.output
    finally:
        get_settings.cache_clear()
