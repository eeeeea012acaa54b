from __future__ import annotations

from collections.abc import Iterator

import pytest

from _live import fleet_process


@pytest.fixture(scope="session")
def sim_url() -> Iterator[str]:
    """One simulated fleet process for the whole test session."""
    with fleet_process() as url:
        yield url
