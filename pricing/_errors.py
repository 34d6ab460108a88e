"""Every error the pricing package raises on purpose, in one place.

    ValueError
    └── RegistryError      a registry file or LiteLLM import is unreadable, malformed or breaks
                           a rule; the message names the file, the model id and the field, and
                           says what to do

Looking up an unknown id with `Registry.get` raises the builtin `KeyError`; resolving an unknown
name with `Registry.resolve` returns None (an unknown model is unpriced, never an error).
"""

from __future__ import annotations


class RegistryError(ValueError):
    """A model registry cannot be used; the message is one paragraph a user can act on."""
