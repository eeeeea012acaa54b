"""Routing configuration: YAML → validated, frozen runtime objects; the matcher language."""

from ._environment import unset_variables, warning_lines
from ._lanes import (
    MIN_CHUNK_TOKENS,
    CacheSettings,
    Canary,
    Cascade,
    IntentSettings,
    KnowledgeSource,
    Retrieval,
    Shadow,
    ShadowSettings,
)
from ._loader import builtin_models, default_config_text, load_config, parse_config
from ._matcher import Matcher, MatcherError, compile_matcher
from ._model import (
    DEFAULT_DEADLINE_MS,
    TABLE_ALIASES,
    Breaker,
    Config,
    ModelSpec,
    Price,
    Profile,
    Retry,
    Route,
    ServerSettings,
    SimSettings,
)

__all__ = [
    "DEFAULT_DEADLINE_MS",
    "MIN_CHUNK_TOKENS",
    "TABLE_ALIASES",
    "Breaker",
    "CacheSettings",
    "Canary",
    "Cascade",
    "Config",
    "IntentSettings",
    "KnowledgeSource",
    "Matcher",
    "MatcherError",
    "ModelSpec",
    "Price",
    "Profile",
    "Retrieval",
    "Retry",
    "Route",
    "ServerSettings",
    "Shadow",
    "ShadowSettings",
    "SimSettings",
    "builtin_models",
    "compile_matcher",
    "default_config_text",
    "load_config",
    "parse_config",
    "unset_variables",
    "warning_lines",
]
