"""Laneway: an OpenAI-compatible routing gateway for LLM-backed support assistants.

The public names load on first use (PEP 562): importing the package stays instant, so the `laneway`
command's start-up, Ctrl-C handler included, runs before the gateway's modules are imported."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config, load_config, parse_config
    from .errors import ConfigError, LanewayError
    from .exchange import Attempt, Exchange
    from .gateway import Gateway

__version__ = "0.1.0"

_HOMES = {"Config": ".config", "load_config": ".config", "parse_config": ".config", "ConfigError": ".errors",
          "LanewayError": ".errors", "Attempt": ".exchange", "Exchange": ".exchange", "Gateway": ".gateway"}

__all__ = ["Attempt", "Config", "ConfigError", "Exchange", "Gateway", "LanewayError", "__version__",
           "load_config", "parse_config"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'laneway' has no attribute '{name}'")
    value = getattr(import_module(home, __name__), name)
    globals()[name] = value
    return value
