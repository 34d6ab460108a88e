"""Importing LiteLLM's price map into a registry."""

from __future__ import annotations

import math
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pricing import (
    Registry,
    RegistryError,
    case_twin_keys,
    load_registry,
    registry_from_litellm,
    registry_to_yaml,
    zero_priced_keys,
)

DAY = date(2026, 11, 1)


def _chat(provider: str, input_cost: Any, output_cost: Any, **extra: Any) -> dict[str, Any]:
    """A LiteLLM entry; `mode=None` leaves the mode out."""
    entry = {
        "litellm_provider": provider,
        "mode": "chat",
        "input_cost_per_token": input_cost,
        "output_cost_per_token": output_cost,
        "max_tokens": 4096,
        **extra,
    }
    return {key: value for key, value in entry.items() if value is not None}


LITELLM: dict[str, Any] = {
    "sample_spec": _chat("one of https://docs.litellm.ai/docs/providers", 0.0, 0.0),
    "gpt-4o-mini": _chat("openai", 1.5e-07, 6e-07, cache_read_input_token_cost=7.5e-08),
    "gpt-4o": _chat("openai", 2.5e-06, 1e-05, cache_read_input_token_cost=1.25e-06),
    "claude-sonnet-4-5": _chat("anthropic", 3e-06, 1.5e-05, cache_read_input_token_cost=3e-07),
    "gpt-5-nano": _chat("openai", 5e-08, 4e-07, cache_read_input_token_cost=5e-09),
    "o3-mini": _chat("openai", 1.1e-06, 4.4e-06, mode="responses"),
    "gpt-3.5-turbo-instruct": _chat("text-completion-openai", 1.5e-06, 2e-06, mode="completion"),
    "mistral/mistral-large-latest": _chat("mistral", 5e-07, 1.5e-06),
    "gemini/gemini-2.5-pro": _chat("gemini", 1.25e-06, 1e-05),
    "gemini-2.5-pro": _chat("vertex_ai-language-models", 1.25e-06, 1e-05),
    "azure/shared-name": _chat("azure", 1e-06, 2e-06),
    "bedrock/shared-name": _chat("bedrock", 1e-06, 2e-06),
    "openrouter/openai/gpt-4o": _chat("openrouter", 2.5e-06, 1e-05),
    "ollama/llama3.1": _chat("ollama", 0.0, 0.0),
    "ollama_chat/qwen2.5": _chat("ollama_chat", 1e-06, 1e-06),
    "lm_studio/some-model": _chat("lm_studio", 0, 0),
    "together_ai/free-model": _chat("together_ai", 0, 0.0, cache_read_input_token_cost=0.0),
    "text-embedding-3-small": _chat("openai", 2e-08, 0.0, mode="embedding"),
    "dall-e-3": {"litellm_provider": "openai", "mode": "image_generation"},
    "no-mode-model": _chat("openai", 1e-06, 1e-06, mode=None),
    "input-only": {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06},
    "bool-cost": _chat("openai", True, 1e-06),
    "negative-cost": _chat("openai", -1e-06, 1e-06),
    "nan-cost": _chat("openai", math.nan, 1e-06),
    "string-cost": _chat("openai", "0.000001", 1e-06),
    "absurd-cost": _chat("openai", 1.0, 1.0),
    "Case-Twin": _chat("openai", 1e-06, 1e-06),
    "case-twin": _chat("openai", 2e-06, 2e-06),
    " padded": _chat("openai", 1e-06, 1e-06),
    "not-a-mapping": [1, 2],
    "odd-mode": _chat("openai", 1e-06, 1e-06, mode=["chat"]),
}


@pytest.fixture(scope="module")
def imported() -> Registry:
    return registry_from_litellm(LITELLM, valid_from=DAY, version="litellm-test")


def _only_price(registry: Registry, model_id: str) -> tuple[Decimal, Decimal | None, Decimal]:
    (price,) = registry.get(model_id).prices
    assert price.valid_from == DAY
    return price.input, price.cached_input, price.output


def test_rates_are_converted_exactly(imported: Registry) -> None:
    assert imported.version == "litellm-test"
    assert _only_price(imported, "gpt-4o-mini") == (
        Decimal("0.15"),
        Decimal("0.075"),
        Decimal("0.6"),
    )
    assert _only_price(imported, "gpt-4o") == (Decimal("2.5"), Decimal("1.25"), Decimal(10))
    assert _only_price(imported, "claude-sonnet-4-5") == (Decimal(3), Decimal("0.3"), 15)
    assert _only_price(imported, "gpt-5-nano") == (
        Decimal("0.05"),
        Decimal("0.005"),
        Decimal("0.4"),
    )
    # normalized: no trailing zeros, no exponent
    assert str(imported.get("gpt-4o-mini").prices[0].input) == "0.15"
    assert str(imported.get("gpt-4o").prices[0].output) == "10"


def test_cached_rate_absent_falls_back_to_input(imported: Registry) -> None:
    price = imported.get("mistral/mistral-large-latest").prices[0]
    assert price.cached_input is None
    assert price.cached_rate == price.input == Decimal("0.5")


def test_priced_modes_are_kept(imported: Registry) -> None:
    assert imported.get("o3-mini").tier == "paid"
    assert imported.get("gpt-3.5-turbo-instruct").tier == "paid"


@pytest.mark.parametrize(
    "key",
    [
        "sample_spec",
        "text-embedding-3-small",
        "dall-e-3",
        "no-mode-model",
        "input-only",
        "bool-cost",
        "negative-cost",
        "nan-cost",
        "string-cost",
        "absurd-cost",
        " padded",
        "not-a-mapping",
        "odd-mode",
    ],
)
def test_unusable_entries_are_skipped(imported: Registry, key: str) -> None:
    with pytest.raises(KeyError):
        imported.get(key)
    assert imported.resolve(key) is None


def test_case_twins_keep_the_first_in_sorted_order(imported: Registry) -> None:
    twin = imported.resolve("CASE-TWIN")
    assert twin is not None and twin.id == "Case-Twin"
    with pytest.raises(KeyError):
        imported.get("case-twin")
    # priced at Case-Twin's rates though LiteLLM gives it others: named (review)
    assert case_twin_keys(LITELLM, imported) == {"case-twin": "Case-Twin"}
    alike = {"M": _chat("openai", 1e-06, 1e-06), "m": _chat("openai", 1e-06, 1e-06)}
    registry = registry_from_litellm(alike, valid_from=DAY, version="v")
    assert case_twin_keys(alike, registry) == {}  # the same rates either way: nothing to say


def test_an_entry_of_another_mode_is_no_case_twin_of_a_chat_model() -> None:
    """Only token-priced entries can be priced as their case twin: an embedding spelled
    `GPT-4O` is not imported, so nothing is priced at `gpt-4o`'s rates for it (found
    untested by mutation testing)."""
    data = {
        "gpt-4o": _chat("openai", 2.5e-06, 1e-05),
        "GPT-4O": _chat("openai", 2e-08, 0.0, mode="embedding"),
    }
    registry = registry_from_litellm(data, valid_from=DAY, version="v")
    assert case_twin_keys(data, registry) == {}


@pytest.mark.parametrize("key", ["ollama/llama3.1", "ollama_chat/qwen2.5", "lm_studio/some-model"])
def test_free_providers_are_free(imported: Registry, key: str) -> None:
    entry = imported.get(key)
    assert entry.tier == "free"
    assert _only_price(imported, key) == (0, None, 0)


def test_zero_costs_outside_the_free_providers_are_left_out_unpriced(imported: Registry) -> None:
    """LiteLLM writes 0 for a hosted model whose price it does not know: its usage must be
    UNPRICED (flagged), never billed at $0 (SPEC §2)."""
    assert imported.resolve("together_ai/free-model") is None
    assert zero_priced_keys(LITELLM) == ["together_ai/free-model"]


def test_free_providers_can_be_chosen() -> None:
    openai_only = frozenset({"openai"})
    registry = registry_from_litellm(
        LITELLM, valid_from=DAY, version="v", free_providers=openai_only
    )
    assert registry.get("gpt-4o").tier == "free"
    assert registry.get("ollama_chat/qwen2.5").tier == "paid"
    assert registry.resolve("ollama/llama3.1") is None  # both costs 0, not a free provider
    assert "ollama/llama3.1" in zero_priced_keys(LITELLM, openai_only)


def test_unprefixed_names_become_unambiguous_aliases(imported: Registry) -> None:
    assert imported.get("mistral/mistral-large-latest").aliases == ("mistral-large-latest",)
    assert imported.get("ollama/llama3.1").aliases == ("llama3.1",)
    # "gemini-2.5-pro" is a key of its own: no alias, and the bare name is that entry
    assert imported.get("gemini/gemini-2.5-pro").aliases == ()
    bare = imported.resolve("gemini-2.5-pro")
    assert bare is not None and bare.id == "gemini-2.5-pro"
    # claimed by two providers: nobody gets it
    assert imported.get("azure/shared-name").aliases == ()
    assert imported.get("bedrock/shared-name").aliases == ()
    assert imported.resolve("shared-name") is None
    # "openai/gpt-4o" would shadow the provider stripping that leads to OpenAI's gpt-4o
    assert imported.get("openrouter/openai/gpt-4o").aliases == ()
    direct = imported.resolve("openai/gpt-4o")
    assert direct is not None and direct.id == "gpt-4o"
    every_alias = [alias.casefold() for model in imported.models for alias in model.aliases]
    assert len(every_alias) == len(set(every_alias))


def test_a_key_left_out_never_resolves_to_another_providers_model() -> None:
    """Outside review: `heroku/claude-3-7-sonnet` (no costs in LiteLLM, left out) resolved,
    by its stripped name, to the alias a lone kept `snowflake/claude-3-7-sonnet` got, and
    was billed at Snowflake's rates; `codestral/codestral-latest` (costs 0, left out) at
    Mistral's. A key left out claims its name too: no alias, and its usage is UNPRICED."""
    data = {
        "snowflake/claude-3-7-sonnet": _chat("snowflake", 3e-06, 1.5e-05),
        "heroku/claude-3-7-sonnet": {"litellm_provider": "heroku", "mode": "chat"},
        "mistral/codestral-latest": _chat("mistral", 3e-07, 9e-07),
        "codestral/codestral-latest": _chat("codestral", 0.0, 0.0),
        "mistral/mistral-small": _chat("mistral", 1e-07, 3e-07),  # its name claimed once
    }
    registry = registry_from_litellm(data, valid_from=DAY, version="v")
    for left_out in ("heroku/claude-3-7-sonnet", "codestral/codestral-latest"):
        assert registry.resolve(left_out) is None, left_out
    assert registry.get("snowflake/claude-3-7-sonnet").aliases == ()
    assert registry.get("mistral/mistral-small").aliases == ("mistral-small",)


def test_import_round_trips_through_the_file_format(imported: Registry, tmp_path: Path) -> None:
    path = tmp_path / "litellm.yaml"
    path.write_text(registry_to_yaml(imported), encoding="utf-8")
    loaded = load_registry(path)
    assert loaded == imported
    assert loaded.fingerprint == imported.fingerprint


def test_import_is_independent_of_key_order(imported: Registry) -> None:
    reversed_data = dict(reversed(list(LITELLM.items())))
    again = registry_from_litellm(reversed_data, valid_from=DAY, version="litellm-test")
    assert again == imported


def test_nothing_usable_is_a_registry_error() -> None:
    with pytest.raises(RegistryError, match="nothing to import: none of the 1 entries"):
        registry_from_litellm({"sample_spec": LITELLM["sample_spec"]}, valid_from=DAY, version="v")


# LiteLLM writes costs as short literals such as 1.5e-07
_costs = st.builds(
    lambda mantissa, exponent: float(f"{mantissa}e{exponent}"),
    st.integers(0, 99_999),
    st.integers(-16, -7),
)


@given(input_cost=_costs.filter(bool), output_cost=_costs)
def test_any_per_token_cost_converts_exactly(input_cost: float, output_cost: float) -> None:
    registry = registry_from_litellm(
        {"m": _chat("openai", input_cost, output_cost)}, valid_from=DAY, version="v"
    )
    price = registry.get("m").prices[0]
    assert price.input == Decimal(str(input_cost)) * 1_000_000
    assert price.output == Decimal(str(output_cost)) * 1_000_000


def test_costs_too_precise_for_a_rate_are_skipped() -> None:
    data = {
        "m": _chat("openai", 1e-06, 1e-06),
        "precise": _chat("openai", 1.2345678901234567e-22, 1e-06),  # 32 places per million
        "precise-cache": {
            **_chat("openai", 1e-06, 1e-06),
            "cache_read_input_token_cost": 1.2345678901234567e-22,
        },
    }
    registry = registry_from_litellm(data, valid_from=DAY, version="v")
    assert [model.id for model in registry.models] == ["m"]


def test_float_artifacts_convert_exactly_cached_rates_included() -> None:
    """LiteLLM writes some costs as the float nearest a short decimal (0.1 / 1e6 is
    1.0000000000000001e-07): converted exactly, never dropped (the cached rate would have
    fallen back to the input rate, 6x it here)."""
    spec = {**_chat("novita", 6e-07, 3.0000000000000001e-06)}
    spec["cache_read_input_token_cost"] = 1.0000000000000001e-07
    price = registry_from_litellm({"kimi": spec}, valid_from=DAY, version="v").get("kimi").prices[0]
    assert price.cached_input == Decimal("0.10000000000000001")
    assert (price.input, price.output) == (Decimal("0.6"), Decimal("3"))


def test_zero_priced_keys_are_token_priced_models_only_and_sorted():
    """P4 (an embedding priced 0 is left out for its mode, not its price) and P6 (sorted,
    whatever the order of the JSON)."""
    zero = {"input_cost_per_token": 0, "output_cost_per_token": 0, "litellm_provider": "openai"}
    data = {
        "z/chat": {**zero, "mode": "chat"},
        "a/text": {**zero, "mode": "completion"},
        "e/embed": {**zero, "mode": "embedding"},
        "ollama/x": {**zero, "mode": "chat", "litellm_provider": "ollama"},
    }
    assert zero_priced_keys(data) == ["a/text", "z/chat"]
