"""Model prices: a versioned registry of per-model token rates, shipped as a file.

Resolves the model names runners write (`gpt-4o-mini`, `anthropic/claude-sonnet-4-5`) to
registry entries and finds the price in force at a usage time. Pure apart from reading the
registry file; money stays `Decimal`.

    registry = load_registry()                      # the shipped pricing/registry.yaml
    entry = registry.resolve("openai/gpt-4o-mini")  # ModelEntry | None
    price = entry.price_at(usage_time)              # PriceVersion | None (None = unpriced)
"""

from ._errors import RegistryError
from ._litellm import (
    case_twin_keys,
    not_imported_keys,
    off_peak_keys,
    registry_from_litellm,
    zero_priced_keys,
)
from ._load import (
    MAX_REGISTRY_BYTES,
    SHIPPED_REGISTRY_PATH,
    load_registry,
    registry_to_json,
    registry_to_yaml,
)
from ._models import ModelEntry, PriceVersion, Registry, rate_text

__all__ = [
    "MAX_REGISTRY_BYTES",
    "SHIPPED_REGISTRY_PATH",
    "ModelEntry",
    "PriceVersion",
    "Registry",
    "RegistryError",
    "case_twin_keys",
    "load_registry",
    "not_imported_keys",
    "off_peak_keys",
    "rate_text",
    "registry_from_litellm",
    "registry_to_json",
    "registry_to_yaml",
    "zero_priced_keys",
]
