"""Import of LiteLLM's `model_prices_and_context_window.json` into a `Registry`.

Pure: the caller reads the JSON (from a file or LiteLLM's package) and passes the mapping.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from ._errors import RegistryError
from ._load import validate_registry
from ._models import Registry, canonical_rate, rate_problem, rate_text

DEFAULT_FREE_PROVIDERS: Final = frozenset({"ollama", "ollama_chat", "lm_studio"})
_PRICED_MODES: Final = frozenset({"chat", "completion", "responses"})
_PER_MILLION: Final = Decimal(1_000_000)
_SOURCE: Final = "(LiteLLM data)"


def registry_from_litellm(
    data: Mapping[str, Any],
    *,
    valid_from: date,
    version: str,
    free_providers: frozenset[str] = DEFAULT_FREE_PROVIDERS,
) -> Registry:
    """A registry of the token-priced text models in LiteLLM's price map `data`.

    Every model gets one price version valid from `valid_from`. Per-token USD costs become
    rates per 1,000,000 tokens exactly: `Decimal(str(cost)) * 1_000_000`, trailing zeros dropped.
    `cache_read_input_token_cost` becomes `cached_input`.

    Kept: entries whose `mode` is chat, completion or responses and whose
    `input_cost_per_token` and `output_cost_per_token` both make valid rates (numbers; once per
    million: finite, >= 0, below the registry's bound, at most `MAX_PLACES` decimal places), as
    does `cache_read_input_token_cost` when present (an entry is never kept with its cached
    rate dropped: cached tokens would be billed at the input rate). Skipped: the
    `sample_spec` key, every other mode (embedding, image, audio, rerank...) or a missing mode,
    entries without both costs, keys that are not usable names (empty, surrounding spaces), and
    a key equal, ignoring case, to one already kept (keys are taken in sorted order). Tiered
    surcharges (above 200k tokens, audio, images, reasoning) are not carried over.

    An entry whose `litellm_provider` is in `free_providers` is tier free with zero rates. One
    of another provider whose two costs are both 0 is left out (`zero_priced_keys`): LiteLLM
    writes 0 for a hosted model whose price it does not know, and billing its usage at $0
    would hide it; left out, it is UNPRICED (SPEC §2) until a registry gives its price.

    A model's id is its LiteLLM key. A key "provider/name" also gets
    "name" as an alias when "name" is not itself a key (ignoring case), contains no "/" (it would
    otherwise shadow the resolver's provider stripping), and no other key of the map, kept or
    left out, has the same name after its provider: so no alias is ever ambiguous, and a key
    left out (unpriced) never resolves to another provider's model.
    """
    kept: dict[str, tuple[str, Mapping[str, Any]]] = {}
    for key in sorted(k for k in data if isinstance(k, str)):
        spec = data[key]
        if key == "sample_spec" or not _usable_name(key) or key.casefold() in kept:
            continue
        priced = isinstance(spec, Mapping) and _priced_mode(spec) and _costs(spec) is not None
        if priced and not _unknown_price(spec, free_providers):
            kept[key.casefold()] = (key, spec)
    if not kept:
        raise RegistryError(
            f"nothing to import: none of the {len(data)} entries is a chat, completion or "
            "responses model priced per input and output token (is it LiteLLM's "
            "model_prices_and_context_window.json?)"
        )

    every_key = {k.casefold() for k in data if isinstance(k, str)}
    # Claimed by every key of the map, kept or not: `heroku/claude-3-7-sonnet` (no price,
    # left out) resolves through its stripped name, and must not find the alias a lone
    # kept `snowflake/claude-3-7-sonnet` would give it, at another provider's rates.
    claims: defaultdict[str, set[str]] = defaultdict(set)
    for key in data:
        if not isinstance(key, str):
            continue
        provider, slash, name = key.partition("/")
        usable = slash and provider and _usable_name(name) and "/" not in name
        if usable and name.casefold() not in every_key:
            claims[name.casefold()].add(key.casefold())
    alias_of = {
        kept[only][0]: name
        for name, keys in claims.items()
        if len(keys) == 1 and (only := next(iter(keys))) in kept
    }

    models = []
    for key, spec in kept.values():
        entry: dict[str, Any] = {"id": key, **_tier_and_price(spec, valid_from, free_providers)}
        if key in alias_of:
            entry["aliases"] = [key.partition("/")[2]]
        models.append(entry)
    return validate_registry({"version": version, "models": models}, source=_SOURCE)


def off_peak_keys(data: Mapping[str, Any], registry: Registry) -> list[str]:
    """The models `registry` (imported from `data`) prices whose LiteLLM entry also has
    `off_peak_pricing`: cheaper rates by the hour and weekday, which a registry cannot hold
    (a price version is valid from a day). They are priced at their standard rates, above
    what LiteLLM computes for usage in those hours. Sorted."""
    return sorted(
        key
        for key, spec in data.items()
        if isinstance(key, str)
        and isinstance(spec, Mapping)
        and isinstance(spec.get("off_peak_pricing"), Mapping)
        and registry.get(key) is not None
    )


def zero_priced_keys(
    data: Mapping[str, Any], free_providers: frozenset[str] = DEFAULT_FREE_PROVIDERS
) -> list[str]:
    """The token-priced entries of `data` that `registry_from_litellm` leaves out because
    LiteLLM prices them at 0 outside `free_providers`, sorted."""
    return sorted(
        key
        for key, spec in data.items()
        if isinstance(key, str)
        and key != "sample_spec"
        and isinstance(spec, Mapping)
        and _priced_mode(spec)
        and _unknown_price(spec, free_providers)
    )


def not_imported_keys(
    data: Mapping[str, Any],
    registry: Registry,
    free_providers: frozenset[str] = DEFAULT_FREE_PROVIDERS,
) -> list[str]:
    """The entries of a text mode (chat, completion, responses) in `data` that `registry`
    (imported from it) leaves unpriced, other than those `zero_priced_keys` names: priced
    in a way a per-token registry cannot take (tiers only, per second, per character, a
    cost missing or out of range) or named like a key already kept. A name the registry
    resolves (`chatgpt/gpt-5.2` to `gpt-5.2`, SPEC §2) is priced, and not listed. Sorted."""
    zero = set(zero_priced_keys(data, free_providers))
    return sorted(
        key
        for key, spec in data.items()
        if isinstance(key, str)
        and key not in zero
        and key != "sample_spec"
        and isinstance(spec, Mapping)
        and _priced_mode(spec)
        and registry.resolve(key) is None
    )


def case_twin_keys(data: Mapping[str, Any], registry: Registry) -> dict[str, str]:
    """The token-priced entries of `data` that `registry` (imported from it) prices as
    another key spelled the same but for case (kept first, in sorted order: a registry
    resolves names ignoring case), though LiteLLM gives them other costs: their usage is
    priced at the other key's rates. By key, the id they are priced as."""
    twins: dict[str, str] = {}
    for key, spec in data.items():
        if not isinstance(key, str) or not isinstance(spec, Mapping) or not _priced_mode(spec):
            continue
        entry = registry.resolve(key)
        if entry is None or entry.id == key or entry.id.casefold() != key.casefold():
            continue
        kept = data.get(entry.id)
        if not isinstance(kept, Mapping) or _rates(spec) != _rates(kept):
            twins[key] = entry.id
    return dict(sorted(twins.items()))


def _rates(spec: Mapping[str, Any]) -> tuple[Decimal | None, ...]:
    return tuple(
        _per_million(spec.get(field))
        for field in (
            "input_cost_per_token",
            "output_cost_per_token",
            "cache_read_input_token_cost",
        )
    )


def _unknown_price(spec: Mapping[str, Any], free_providers: frozenset[str]) -> bool:
    """Both costs 0 and the provider not a free one: a price LiteLLM does not know."""
    costs = _costs(spec)
    return costs is not None and costs == (0, 0) and not _free_provider(spec, free_providers)


def _free_provider(spec: Mapping[str, Any], free_providers: frozenset[str]) -> bool:
    provider = spec.get("litellm_provider")
    return isinstance(provider, str) and provider in free_providers


def _priced_mode(spec: Mapping[str, Any]) -> bool:
    mode = spec.get("mode")
    return isinstance(mode, str) and mode in _PRICED_MODES


def _usable_name(name: str) -> bool:
    return bool(name) and name == name.strip() and name.isprintable()


def _per_million(cost: object) -> Decimal | None:
    """A per-token cost as a rate per 1,000,000 tokens, or None when it is not usable."""
    if isinstance(cost, bool) or not isinstance(cost, int | float | Decimal):
        return None
    try:
        per_token = Decimal(str(cost))
    except InvalidOperation:
        return None
    if not per_token.is_finite():
        return None
    rate = per_token * _PER_MILLION
    return None if rate_problem(rate) else canonical_rate(rate)


def _costs(spec: Mapping[str, Any]) -> tuple[Decimal, Decimal] | None:
    """The input and output rates of an entry that is kept, else None."""
    source_input = _per_million(spec.get("input_cost_per_token"))
    source_output = _per_million(spec.get("output_cost_per_token"))
    if source_input is None or source_output is None:
        return None
    cached = spec.get("cache_read_input_token_cost")
    if cached is not None and _per_million(cached) is None:
        return None
    return source_input, source_output


def _tier_and_price(
    spec: Mapping[str, Any], valid_from: date, free_providers: frozenset[str]
) -> dict[str, Any]:
    costs = _costs(spec)
    assert costs is not None  # only kept entries get here
    source_input, source_output = costs
    price: dict[str, str] = {"valid_from": valid_from.isoformat()}
    if _free_provider(spec, free_providers):
        price.update(input="0", output="0")
        return {"tier": "free", "prices": [price]}
    price.update(input=rate_text(source_input), output=rate_text(source_output))
    cached = _per_million(spec.get("cache_read_input_token_cost"))
    if cached is not None:
        price["cached_input"] = rate_text(cached)
    return {"tier": "paid", "prices": [price]}
