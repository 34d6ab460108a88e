"""`chore demo`: found untested by mutation testing (stop 57). README: it seeds a month,
meters it, finalizes the months whose grace has passed, prints the invoices and quota
decisions, and leaves its data in a store every other command opens."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from chores import get_settings
from chores.cli import main
from chores.core import local_store
from pricing import load_registry

from support import NOW

NOW_ARG = ["--now", NOW.isoformat()]  # 2026-11-25: October's grace (3 days) has passed


def _demo(*args: str, env: dict[str, str] | None = None):
    result = CliRunner(env=env).invoke(main, ["demo", *args])
    assert result.exit_code == 0, result.output
    return result


def _store(path: Path):
    """The demo's store as every command opens it (`MONGO_URL=file://...`)."""
    return local_store.open_client(f"file://{path}")["main"]


def test_the_demo_says_what_it_seeded_metered_and_finalized_as_its_store_holds_it(tmp_path):
    """Each line of the demo's story is checked against the store it leaves: the runner
    documents and findings seeded (a replaced store holds only the new demo's), the tokens
    the first run billed (the ledger's sum; the rerun bills none), the invoices made final
    (October's, its grace passed by 2026-11-25), and every invoice printed, by period then
    org."""
    store = tmp_path / "store.json"
    _demo("--seed", "3", "--store", str(store), *NOW_ARG)
    shown = _demo("--store", str(store), "--replace", *NOW_ARG).output
    registry = load_registry()
    try:
        db = _store(store)
        tasks, findings = db["tasks"].count_documents({}), db["findings"].count_documents({})
        billed = sum(entry["tokens"] for entry in db["billing_ledger"].find())
        invoices = sorted(
            (doc["period"], doc["org"], doc["status"]) for doc in db["billing_invoices"].find()
        )
    finally:
        local_store.close_all(save=False)
    assert (
        f"Seeded {tasks} runner documents and {findings} findings for acme, globex, initech "
        f"(registry {registry.version}, {len(registry.models)} models)"
    ) in shown
    assert re.search(rf"Metered: \d+ AI runner documents read, {billed:,} tokens billed", shown)
    assert billed > 0 and "Rerun: " in shown and ", 0 tokens billed (exactly once)" in shown
    final = [f"{org}:{period}" for period, org, status in invoices if status == "final"]
    assert final and {f[-7:] for f in final} == {"2026-10"}
    finalized = re.search(r"^Finalized: (.*)$", shown, flags=re.MULTILINE)
    assert finalized and sorted(finalized.group(1).split(", ")) == sorted(final)
    printed = re.findall(r"^Invoice (\S+):(\S+)", shown, flags=re.MULTILINE)
    assert printed == [(org, period) for period, org, _ in invoices]
    # each invoice set off by an empty line, the quota decisions too
    assert len(re.findall(r"\n\nInvoice \S+:\S+", shown)) == len(invoices)
    assert "\n\nQuota decisions for 2026-11\n" in shown
    assert {period for period, _, _ in invoices} == {"2026-10", "2026-11"}


def test_the_demos_store_has_the_source_indexes_a_server_needs(tmp_path, monkeypatch):
    """The demo creates the source indexes (`chore db indexes --apply`), so `chore status`
    on its store reports none missing, as on a well set-up server."""
    store = tmp_path / "store.json"
    _demo("--seed", "3", "--store", str(store), *NOW_ARG)
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    try:
        status = CliRunner().invoke(main, ["status", *NOW_ARG])
    finally:
        get_settings.cache_clear()
    assert status.exit_code == 0, status.output
    assert "Source indexes: all present" in status.output


def test_a_store_that_is_a_directory_is_bad_usage(tmp_path):
    """`--store` names a file: a directory is refused by the option itself (exit 2, bad
    usage), never judged as a store that might be replaced."""
    refused = CliRunner().invoke(main, ["demo", "--store", str(tmp_path)])
    assert refused.exit_code == 2 and "is a directory" in refused.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("store", ["newdir/", "newdir/.", ""])
def test_a_store_path_that_names_no_file_is_bad_usage(tmp_path, monkeypatch, store):
    """`--store newdir/` made a store *file* named `newdir` (`Path` drops the `/`), and
    `--store ''` one in the working directory's name: refused by the option (exit 2), with
    nothing created."""
    monkeypatch.chdir(tmp_path)
    refused = CliRunner().invoke(main, ["demo", "--store", store, *NOW_ARG], prog_name="chore")
    assert refused.exit_code == 2, refused.output
    expected = "an empty path" if not store else f"'{store}' is a directory's path"
    assert refused.output == (
        f"Error: Invalid value for '--store': {expected}: give the path of a file "
        "(chore demo -h for help)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_default_seed_and_store_are_what_help_says(tmp_path, monkeypatch):
    """`chore demo -h` shows the defaults (seed 7, `.chore-demo/store.json`, where README
    sends the reader), and the demo without `--seed` is the one of seed 7: the same month
    every time, the one the docs describe."""
    # without its spaces: click wraps the long default at its hyphen
    help_text = "".join(CliRunner().invoke(main, ["demo", "-h"]).output.split())
    assert "[default:7]" in help_text and "[default:.chore-demo/store.json]" in help_text
    monkeypatch.chdir(tmp_path)
    default = _demo("--no-store", *NOW_ARG).output
    assert default == _demo("--no-store", "--seed", "7", *NOW_ARG).output
    assert default != _demo("--no-store", "--seed", "8", *NOW_ARG).output


def test_the_export_line_stays_one_line_to_copy_whatever_the_path(tmp_path):
    """The `export MONGO_URL=...` line is meant to be copied into a shell: a store path
    longer than the terminal is printed on one line (the terminal wraps it), never broken
    by a newline that would cut the command."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    store = deep / "store.json"
    shown = _demo("--seed", "3", "--store", str(store), *NOW_ARG, env={"COLUMNS": "80"})
    assert f"  export MONGO_URL=file://{store}\n" in shown.output


def test_the_commands_the_demo_suggests_work_on_its_store(tmp_path, monkeypatch):
    """After the demo it prints how to go on: `export MONGO_URL=file://...` and the
    commands README lists. Each one it prints runs on its store (exit 0; a quota check's
    refusal, 3, is an answer), so a reader who copies them gets what README promises."""
    monkeypatch.chdir(tmp_path)  # `report --out acme.html` writes here
    store = tmp_path / "store.json"
    shown = _demo("--seed", "3", "--store", str(store), *NOW_ARG).output
    suggested = re.findall(r"^  chore (.+)$", shown, flags=re.MULTILINE)
    for readme in (
        "status",
        "invoice show --org acme",
        "usage --org acme --by run",
        "anomaly list --org acme",
        "report --org acme --out acme.html",
    ):
        assert readme in suggested, suggested
    monkeypatch.setenv("MONGO_URL", f"file://{store}")
    monkeypatch.setenv("REDIS_URL", "")
    get_settings.cache_clear()
    try:
        for command in suggested:
            # on the demo's day; `anomaly list` takes no --now (it lists what is open)
            now = [] if command.startswith("anomaly list") else NOW_ARG
            ran = CliRunner().invoke(main, [*command.split(), *now])
            # a quota check answers with its exit code: 3 is a refusal, not a failure
            answers = (0, 3) if command.startswith("quota check") else (0,)
            assert ran.exit_code in answers, (command, ran.output)
    finally:
        get_settings.cache_clear()
        local_store.close_all(save=False)
    assert (tmp_path / "acme.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_a_demo_that_keeps_nothing_points_to_no_store(tmp_path):
    """`--no-store` keeps nothing: the demo must not tell the reader its data stays
    somewhere or suggest an `export MONGO_URL` (there is no file to open)."""
    shown = _demo("--no-store", *NOW_ARG)
    assert "Quota decisions" in shown.stdout
    assert "stays in" not in shown.stdout and "MONGO_URL" not in shown.stdout


def test_the_suggested_commands_are_printed_plain_on_a_colour_terminal(tmp_path):
    """On a colour terminal the lines to copy (`export MONGO_URL=...` and each `chore ...`)
    are printed as plain text: no colour codes inside a command, whose URL, numbers and
    options rich would otherwise highlight piece by piece."""
    store = tmp_path / "store.json"
    shown = _demo("--seed", "3", "--store", str(store), *NOW_ARG, env={"FORCE_COLOR": "1"})
    assert "\x1b[" in shown.output  # colours are on: the titles are bold
    lines = shown.output.splitlines()
    start = lines.index(f"  export MONGO_URL=file://{store}")
    commands = lines[start + 1 :]
    assert len(commands) >= 5 and all(line.startswith("  chore ") for line in commands)
    assert not any("\x1b" in line for line in commands), commands
