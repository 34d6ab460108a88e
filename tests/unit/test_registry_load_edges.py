"""The registry loader's messages, by which an operator fixes a registry file, and its
bound on a hostile one: found untested by mutation testing of `pricing/_load.py` (stop 56)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pricing import RegistryError, load_registry


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
