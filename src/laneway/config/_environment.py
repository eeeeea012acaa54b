"""What a routing file expects of the environment it runs in: the variables it names that are unset.

Checked by `laneway check`, at start-up and at each reload, not while parsing: a file is valid without its secrets
(in CI, say), but a gateway missing them sends requests without a key, or keeps its admin
endpoints closed, and an operator should hear why before the first request fails.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from ..errors import ConfigIssue
from ._analysis import OVERLAPS
from ._model import Config

# The providers' own APIs, which refuse a request without a key (a self-hosted server may not).
KEYED_HOSTS = {"api.openai.com": "OPENAI_API_KEY", "api.anthropic.com": "ANTHROPIC_API_KEY",
               "generativelanguage.googleapis.com": "GEMINI_API_KEY"}


def unset_variables(config: Config, environ: Mapping[str, str] = os.environ) -> list[ConfigIssue]:
    """One warning per variable the file names and the environment lacks (or holds empty), and per model
    of a provider's own API that names none."""
    warnings = []
    for name, spec in config.models.items():
        variable = spec.api_key_env
        if variable and not spec.simulated and not environ.get(variable):
            warnings.append(_warning(f"models.{name}.api_key_env", f"`{variable}` is not set; requests to `{name}` "
                                     "go without a key, and the provider will refuse them"))
        host = urlsplit(spec.base_url).hostname or ""
        if not variable and host in KEYED_HOSTS:
            warnings.append(_warning(f"models.{name}", f"no `api_key_env`, so requests to {host} go without a key "
                                     f"and are refused; add `api_key_env: {KEYED_HOSTS[host]}` (the variable "
                                     "holding the key)"))
    variable = config.admin.key_env
    if variable and not environ.get(variable):
        warnings.append(_warning("admin.key_env", f"`{variable}` is not set; the admin endpoints stay closed "
                                 "until it is"))
    return warnings


def _warning(path: str, message: str) -> ConfigIssue:
    return ConfigIssue(path, message, severity="warning")


def warning_lines(warnings: Sequence[ConfigIssue]) -> list[str]:
    """What start-up and each reload say of a file's warnings: each in full, but routes that overlap (the
    first match wins, as is often intended) by their count."""
    overlaps = [w for w in warnings if w.message.startswith(OVERLAPS)]
    lines = [str(w) for w in warnings if not w.message.startswith(OVERLAPS)]
    if overlaps:
        lines.append(f"{len(overlaps)} warning(s) of routes that overlap; `laneway check` lists them")
    return lines
