"""`chore registry`: found untested by mutation testing (stop 56)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from chores.cli import main

REGISTRY = (
    'version: "7"\n'
    "models:\n"
    "- id: big-model\n"
    "  aliases: [big, big-latest]\n"
    "  tier: paid\n"
    "  prices:\n"
    '  - {valid_from: "2026-01-01", input: "3", cached_input: "0.3", output: "15"}\n'
    '  - {valid_from: "2026-06-01", input: "2.5", cached_input: "0.25", output: "12.5"}\n'
    "- id: free-model\n"
    "  tier: free\n"
    "  prices:\n"
    '  - {valid_from: "2025-01-01", input: "0", output: "0"}\n'
)


def _listed(tmp_path, columns: int):
    """`registry list` of REGISTRY on 2026-07-01, on a terminal `columns` wide."""
    path = tmp_path / "registry.yaml"
    path.write_text(REGISTRY, encoding="utf-8")
    listed = ["registry", "list", str(path), "--now", "2026-07-01T00:00:00+00:00"]
    result = CliRunner(env={"COLUMNS": str(columns)}).invoke(main, listed)
    assert result.exit_code == 0, result.output
    return result


def test_registry_list_shows_each_models_prices_of_the_day_under_their_headers(tmp_path):
    result = _listed(tmp_path, 200)
    lines = result.stdout.splitlines()
    assert lines[0].strip() == "Model registry 7 (2 models)"
    assert lines[1].split() == [
        "model", "tier", "valid", "from", "input", "cached", "output", "aliases"
    ]  # fmt: skip
    rows = {
        line.split()[0]: line.split()
        for line in lines
        if line.split()[:1] in (["big-model"], ["free-model"])
    }
    # the price of the day (from 2026-06-01), not the first one; aliases as written
    assert rows["big-model"] == [
        "big-model", "paid", "2026-06-01", "2.5", "0.25", "12.5", "big,", "big-latest"
    ]  # fmt: skip
    assert rows["free-model"][:3] == ["free-model", "free", "2025-01-01"]
    assert lines[-1] == "input, cached, output: USD per million tokens"


def test_import_litellm_of_json_that_is_not_an_object_says_so(tmp_path):
    """LiteLLM's price map is a JSON object: a string, a number or a list is refused in one
    line, exit 1, never a traceback."""
    for text in ('"model_prices"', "42", "[1, 2]"):
        source = tmp_path / "prices.json"
        source.write_text(text)
        result = CliRunner().invoke(main, ["registry", "import-litellm", str(source)])
        assert result.exit_code == 1, (text, result.output)
        assert result.output == f"Error: {source}: expected a JSON object of models\n"


def _litellm_map(tmp_path, count: int = 3):
    import json

    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    source = tmp_path / "map.json"
    source.write_text(json.dumps({f"model-{n}": {**chat, **rates} for n in range(count)}))
    return source


def test_import_litellm_of_a_plain_map_prints_the_registry_and_no_note(tmp_path):
    """Every model imported, none left out, none off-peak or twinned: the registry on
    stdout and nothing on stderr (a note saying "0 models" is noise an operator reads)."""
    source = _litellm_map(tmp_path)
    args = ["registry", "import-litellm", str(source), "--valid-from", "2026-01-01"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.count("- id: model-") == 3
    assert 'valid_from: "2026-01-01"' in result.stdout


def test_import_litellm_writes_a_registry_of_exactly_the_largest_size_that_loads(
    tmp_path, monkeypatch
):
    """The size check refuses what `load_registry` would refuse (more than the limit), not a
    registry exactly at it: that one is written and loads."""
    import pricing._load
    from chores.cli import registry as registry_cli
    from pricing import load_registry

    source = _litellm_map(tmp_path)
    args = ["registry", "import-litellm", str(source), "--valid-from", "2026-01-01"]
    size = len(CliRunner().invoke(main, args).stdout.encode("utf-8"))
    monkeypatch.setattr(registry_cli, "MAX_REGISTRY_BYTES", size)
    monkeypatch.setattr(pricing._load, "MAX_REGISTRY_BYTES", size)
    out = tmp_path / "registry.yaml"
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size == size
    assert len(load_registry(out).models) == 3


def test_import_litellm_reads_a_map_of_exactly_the_largest_size_it_takes(tmp_path, monkeypatch):
    """Refused is a map of more than the limit ("more than the N bytes"), not one at it."""
    from chores.cli import registry as registry_cli

    source = _litellm_map(tmp_path)
    monkeypatch.setattr(registry_cli, "MAX_LITELLM_BYTES", source.stat().st_size)
    result = CliRunner().invoke(main, ["registry", "import-litellm", str(source)])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("- id: model-") == 3
    monkeypatch.setattr(registry_cli, "MAX_LITELLM_BYTES", source.stat().st_size - 1)
    refused = CliRunner().invoke(main, ["registry", "import-litellm", str(source)])
    assert refused.exit_code == 1 and "LiteLLM's price map could be" in refused.output


def test_registry_commands_without_a_path_use_the_shipped_registry(monkeypatch):
    from chores import get_settings

    monkeypatch.delenv("REGISTRY_PATH", raising=False)
    get_settings.cache_clear()
    try:
        validated = CliRunner().invoke(main, ["registry", "validate"])
        listed = CliRunner().invoke(main, ["registry", "list"])
    finally:
        get_settings.cache_clear()
    assert validated.exit_code == 0, validated.output
    assert validated.output.startswith("shipped registry: valid, version ")
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith("Model registry ")


def test_a_directory_given_as_a_registry_file_is_a_usage_error(tmp_path):
    source = _litellm_map(tmp_path)
    for args in (
        ["registry", "validate", str(tmp_path)],
        ["registry", "validate", "--path", str(tmp_path)],
        ["registry", "import-litellm", str(tmp_path)],
        ["registry", "import-litellm", str(source), "--out", str(tmp_path)],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is a directory" in result.output, args


@pytest.mark.parametrize("path", ["", "reg/", "reg/."])
@pytest.mark.parametrize(
    "command",
    [
        ["registry", "validate"],
        ["registry", "validate", "--path"],
        ["registry", "list", "--path"],
        ["registry", "import-litellm"],
    ],
)
def test_a_registry_path_that_names_no_file_is_a_usage_error(tmp_path, monkeypatch, command, path):
    """An empty path validated the shipped registry as if none were given, and made
    import-litellm say `: not readable JSON (... Is a directory: '.')`; `reg/` was read as
    the file `reg`. Each is refused by click (exit 2), in one line naming the argument."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reg").write_text(REGISTRY)  # what `reg/` would have been read as
    result = CliRunner().invoke(main, [*command, path])
    assert result.exit_code == 2, result.output
    expected = "an empty path" if not path else f"'{path}' is a directory's path"
    assert f"{expected}: give the path of a file" in result.output
    assert result.output.count("\n") == 1


def _noted_map(tmp_path):
    """A map whose import says every kind of note: a model left out (priced per second),
    one with off-peak rates, two keys alike but for case with other rates."""
    import json

    chat = {"litellm_provider": "openai", "mode": "chat"}
    rates = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    off_peak = {"input_cost_per_token": 5e-07, "windows": [{"hours_utc": "00:00-00:00"}]}
    source = tmp_path / "noted.json"
    source.write_text(
        json.dumps(
            {
                "plain": {**chat, **rates},
                "Twin": {**chat, **rates},
                "twin": {**chat, "input_cost_per_token": 3e-06, "output_cost_per_token": 4e-06},
                "flash": {**chat, **rates, "off_peak_pricing": off_peak},
                "per-second": {**chat, "input_cost_per_second": 0.001},
            }
        )
    )
    return source


def test_import_litellm_to_stdout_keeps_its_notes_on_stderr(tmp_path):
    """Piped to a file, stdout is the registry alone: every note goes to stderr."""
    import yaml

    from pricing._load import validate_registry

    result = CliRunner().invoke(main, ["registry", "import-litellm", str(_noted_map(tmp_path))])
    assert result.exit_code == 0, result.output
    registry = validate_registry(yaml.safe_load(result.stdout), source="stdout")
    assert {m.id for m in registry.models} >= {"plain", "flash"}
    assert "left out 1 model" in result.stderr
    assert "off-peak rates" in result.stderr
    assert "spelled the same but for case" in result.stderr
    assert "note" not in result.stdout and "left out" not in result.stdout


def _import_over(tmp_path, first_priced: str):
    """`import-litellm --out` over a registry pricing `model-0` from `first_priced`, the
    import's prices valid from 2026-11-01: the path written and the command's result."""
    out = tmp_path / "registry.yaml"
    out.write_text(
        'version: "old"\nmodels:\n- id: model-0\n  tier: paid\n  prices:\n'
        f'  - {{valid_from: "{first_priced}", input: "2.5", output: "10"}}\n'
    )
    args = ["registry", "import-litellm", str(_litellm_map(tmp_path)), "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--valid-from", "2026-11-01"])
    assert result.exit_code == 0, result.output
    return out, result


def test_import_litellm_with_out_says_what_it_wrote_on_stderr(tmp_path):
    out, result = _import_over(tmp_path, "2024-05-13")
    assert result.stdout == ""
    assert f"wrote 3 models to {out}" in result.stderr
    assert "note: the registry replaced priced 1 model before 2026-11-01" in result.stderr


def test_import_litellm_over_a_model_first_priced_that_very_day_adds_no_note(tmp_path):
    """Usage before `--valid-from` loses its price only for a model priced before that day:
    one first priced on it loses nothing."""
    _, result = _import_over(tmp_path, "2026-11-01")
    assert "note:" not in result.output


def test_import_litellm_names_up_to_three_models_a_note_is_about(tmp_path):
    """Three names are all said, without `...`; a fourth is left to the `...`."""
    import json

    chat = {"litellm_provider": "openai", "mode": "chat"}
    for count, said in ((3, "(s-0, s-1, s-2)"), (4, "(s-0, s-1, s-2, ...)"), (2, "(s-0, s-1)")):
        models = {"plain": {**chat, "input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}}
        models |= {f"s-{n}": {**chat, "input_cost_per_second": 0.001} for n in range(count)}
        source = tmp_path / f"map{count}.json"
        source.write_text(json.dumps(models))
        result = CliRunner().invoke(main, ["registry", "import-litellm", str(source)])
        assert result.exit_code == 0, result.output
        assert f"left out {count} models" in result.stderr
        assert f"{said}: their usage stays unpriced" in result.stderr, result.stderr


def test_registry_list_on_a_narrow_terminal_keeps_each_date_whole(tmp_path):
    result = _listed(tmp_path, 50)
    assert "2026-06-01" in result.stdout and "2025-01-01" in result.stdout
