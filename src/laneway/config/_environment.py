"""What a routing file expects of the environment it runs in: the variables it names that are unset.

Checked by `laneway check` and at start-up, not while parsing: a file is valid without its secrets
(in CI, say), but a gateway missing them sends requests without a key, or keeps its admin
endpoints closed, and an operator should hear why before the first request fails.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._model import Config


def unset_variables(config: Config, environ: Mapping[str, str] = os.environ) -> list[str]:
    """One warning per variable the file names and the environment lacks (or holds empty)."""
    warnings = []
    for name, spec in config.models.items():
        variable = spec.api_key_env
        if variable and not spec.simulated and not environ.get(variable):
            warnings.append(f"models.{name}.api_key_env: `{variable}` is not set; requests to `{name}` go "
                            "without a key, and the provider will refuse them")
    variable = config.admin.key_env
    if variable and not environ.get(variable):
        warnings.append(f"admin.key_env: `{variable}` is not set; the admin endpoints stay closed until it is")
    return warnings
