"""Provider adapters: one module per wire format behind the small `Provider` protocol.

A new provider is a module with a `create(spec, base_url) -> Provider` function and one entry in
`_REGISTRY`; nothing else changes.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from ._base import Provider, Refusal, redact

if TYPE_CHECKING:
    from ..config import ModelSpec

_REGISTRY = {
    "openai": "laneway.providers.openai",
    "anthropic": "laneway.providers.anthropic",
    "gemini": "laneway.providers.gemini",
}
PROVIDER_NAMES = tuple(_REGISTRY)


def create_provider(spec: ModelSpec, base_url: str) -> Provider:
    """Build the adapter for `spec`; `base_url` is the resolved one (`sim://` already replaced)."""
    module = import_module(_REGISTRY[spec.provider])
    provider: Provider = module.create(spec, base_url)
    return provider


__all__ = ["PROVIDER_NAMES", "Provider", "Refusal", "create_provider", "redact"]
