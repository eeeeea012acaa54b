"""Laneway: an OpenAI-compatible routing gateway for LLM-backed support assistants."""

from .config import Config, load_config, parse_config
from .errors import ConfigError, LanewayError
from .exchange import Attempt, Exchange
from .gateway import Gateway

__version__ = "0.1.0"

__all__ = ["Attempt", "Config", "ConfigError", "Exchange", "Gateway", "LanewayError", "__version__",
           "load_config", "parse_config"]
