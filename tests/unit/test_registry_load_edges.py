"""The registry loader's messages, by which an operator fixes a registry file, and its
bound on a hostile one, and the files its writers produce: found untested by mutation testing
of `pricing/_load.py` (stop 56, then all 308 of its mutants)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pricing import Registry, RegistryError, load_registry, registry_to_json, registry_to_yaml


def _refusal(tmp_path: Path, text: str, name: str = "registry.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RegistryError) as raised:
        load_registry(path)
    return str(raised.value)


def _nan_models(count: int) -> str:
    return 'version: "1"\nmodels:\n' + "".join(
        f"- id: bad-{n}\n  tier: paid\n  prices:\n"
        f'  - {{valid_from: "2024-01-01", input: "NaN", output: "2"}}\n'
        for n in range(count)
    )


def test_five_problems_are_all_listed_with_no_more_left_over(tmp_path: Path) -> None:
    message = _refusal(tmp_path, _nan_models(5))
    assert all(f"'bad-{n}' (models[{n}])" in message for n in range(5))
    assert "more" not in message
    six = _refusal(tmp_path, _nan_models(6))
    assert "'bad-5'" not in six and "; and 1 more." in six


def test_a_model_without_a_usable_id_is_named_by_its_position(tmp_path: Path) -> None:
    good = (
        "- id: good\n  tier: paid\n  prices:\n"
        '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n'
    )
    no_id = _refusal(
        tmp_path,
        f'version: "1"\nmodels:\n{good}- tier: paid\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n',
    )
    assert "model models[1] (no valid id), field 'id': this required key is missing" in no_id
    blank = _refusal(
        tmp_path,
        'version: "1"\nmodels:\n- id: "  "\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n',
    )
    assert "model models[0] (no valid id), field 'id'" in blank


@pytest.mark.parametrize(
    ("models", "typo", "allowed"),
    [
        pytest.param("model: []\nmodels: []\n", "model", "version, models", id="top level"),
        pytest.param(
            "models:\n- id: m\n  tier: paid\n  alias: [x]\n  prices:\n"
            '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n',
            "alias",
            "id, aliases, tier, prices",
            id="model",
        ),
        pytest.param(
            "models:\n- id: m\n  tier: paid\n  prices:\n"
            '  - {valid_from: "2024-01-01", input: "1", outptu: "2", output: "2"}\n',
            "outptu",
            "valid_from, input, cached_input, output",
            id="price",
        ),
    ],
)
def test_an_unknown_key_is_answered_with_the_keys_allowed_where_it_stands(
    models: str, typo: str, allowed: str, tmp_path: Path
) -> None:
    message = _refusal(tmp_path, f'version: "1"\n{models}')
    assert f"unknown key {typo!r} (a typo?); allowed keys: {allowed}" in message


def test_a_missing_required_key_is_said_to_be_missing(tmp_path: Path) -> None:
    message = _refusal(
        tmp_path,
        'version: "1"\nmodels:\n- id: m\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "1"}\n',
    )
    assert (
        "model 'm' (models[0]), field 'prices[0].output': this required key is missing" in message
    )


def test_a_yaml_syntax_error_names_its_line_and_column(tmp_path: Path) -> None:
    message = _refusal(tmp_path, 'version: "1"\nmodels:\n- id: m\n    tier: paid\n')
    assert "is not valid YAML: mapping values are not allowed here at line 4, column 9." in message
    assert "\n" not in message


# --- found untested by mutation testing of `pricing/_load.py` (all of its mutants) ----------------


def test_a_wrong_value_is_answered_with_what_was_expected_and_what_was_written(
    tmp_path: Path,
) -> None:
    """A value of the wrong kind (here a tier that is neither paid nor free) is reported
    with the check it failed and the value as written, so the operator sees both the typo
    and the choices."""
    message = _refusal(
        tmp_path,
        'version: "1"\nmodels:\n- id: m\n  tier: premium\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n',
    )
    assert "model 'm' (models[0]), field 'tier': Input should be 'paid' or 'free'" in message
    assert "got 'premium'." in message


def test_models_written_as_a_yaml_set_is_refused_naming_the_position(tmp_path: Path) -> None:
    """`!!set` is a YAML type the safe loader builds: a `models` written so is not a list,
    and each member is refused by its position, not with a crash of the error report."""
    message = _refusal(tmp_path, 'version: "1"\nmodels: !!set {gpt-4o}\n')
    assert "model models[0] (no valid id): " in message
    assert "got 'gpt-4o'" in message


def _one_model(model_id: str, aliases: list[str], version: str = "1") -> Registry:
    return Registry.model_validate(
        {
            "version": version,
            "models": [
                {
                    "id": model_id,
                    "aliases": aliases,
                    "tier": "paid",
                    "prices": [{"valid_from": "2024-01-01", "input": "1", "output": "2"}],
                }
            ],
        }
    )


def _reloaded(tmp_path: Path, text: str, name: str) -> Registry:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return load_registry(path)


def test_written_yaml_leaves_plain_names_plain_and_quotes_the_rest(tmp_path: Path) -> None:
    """A name YAML reads back as itself is written bare, as the shipped registry writes
    them; one YAML would read as something else (`yes` is a boolean) or cannot start a
    plain scalar (`@`, as in Cloudflare's `@cf/...` models) is quoted. Both load back."""
    registry = _one_model("gpt-4o", ["openai/gpt-4o", "@cf/meta/llama-3-8b-instruct", "yes"])
    text = registry_to_yaml(registry)
    assert "- id: gpt-4o\n" in text
    assert '  aliases: [openai/gpt-4o, "@cf/meta/llama-3-8b-instruct", "yes"]\n' in text
    assert _reloaded(tmp_path, text, "r.yaml") == registry


def test_written_yaml_keeps_a_long_version_on_one_line_in_its_own_letters(
    tmp_path: Path,
) -> None:
    """The version line is one line however long (YAML's dumper folds at 80 columns) and
    keeps letters outside ASCII as written, not as escapes, so the file reads as typed."""
    version = (
        "prix relevés sur les pages des fournisseurs le premier du mois, "
        "vérifiés à la main deux fois"
    )
    assert len(version) > 80
    text = registry_to_yaml(_one_model("m", [], version=version))
    assert f'version: "{version}"\n' in text.splitlines(keepends=True)
    assert _reloaded(tmp_path, text, "r.yaml").version == version


def test_written_files_name_no_aliases_and_no_cached_rate_a_model_does_not_have(
    tmp_path: Path,
) -> None:
    """A model without aliases or a cached rate is written without those keys (an empty
    list or a null would be noise in a file people review), in YAML and in JSON alike."""
    registry = _one_model("m", [])
    as_yaml = registry_to_yaml(registry)
    assert "aliases" not in as_yaml and "cached_input" not in as_yaml
    (model,) = json.loads(registry_to_json(registry))["models"]
    assert model == {
        "id": "m",
        "tier": "paid",
        "prices": [{"valid_from": "2024-01-01", "input": "1", "output": "2"}],
    }
    for name, text in (("r.yaml", as_yaml), ("r.json", registry_to_json(registry))):
        assert _reloaded(tmp_path, text, name) == registry


def test_the_closing_advice_counts_the_entries_to_fix(tmp_path: Path) -> None:
    """One problem asks to fix "the entry", more than one "these entries"."""
    assert "Fix the entry in " in _refusal(tmp_path, _nan_models(1))
    assert "Fix these entries in " in _refusal(tmp_path, _nan_models(2))


def test_a_mapping_that_holds_itself_is_reported_by_the_key_that_holds_it(
    tmp_path: Path,
) -> None:
    """`&n {self: *n}` is valid YAML (an anchor used inside itself). The file's real problem
    is the key holding it, which a registry does not have; calling the file "not valid
    YAML" would send the operator hunting for a syntax error that is not there."""
    message = _refusal(
        tmp_path,
        'version: "1"\nmodels:\n- id: m\n  tier: paid\n  prices:\n'
        '  - {valid_from: "2024-01-01", input: "1", output: "2"}\n'
        "  notes: &n {self: *n}\n",
    )
    assert "model 'm' (models[0]), field 'notes': unknown key 'notes'" in message
    assert "not valid YAML" not in message


@pytest.mark.parametrize(
    ("merged", "found"),
    [
        pytest.param("cheap", "a mapping or list of mappings for merging, but found scalar"),
        pytest.param("[[a, b]]", "a mapping for merging, but found sequence"),
    ],
)
def test_merging_in_what_is_not_a_mapping_is_a_yaml_error_at_its_place(
    merged: str, found: str, tmp_path: Path
) -> None:
    """`<<:` merges mappings only; anything else merged in is YAML's own error, with the
    place of the value, not a crash nor a message about unpacking values."""
    message = _refusal(
        tmp_path,
        'version: "1"\nmodels:\n- id: m\n  tier: paid\n  prices:\n'
        f'  - <<: {merged}\n    valid_from: "2024-01-01"\n    input: "1"\n    output: "2"\n',
    )
    assert f"is not valid YAML: expected {found} at line 6" in message
