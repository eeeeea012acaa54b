"""A short soak (the CI version of bench/soak.py): steady open-loop load on a real `laneway serve`,
every request answered, resident memory flat once warm."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from soak import soak


def test_short_soak_keeps_memory_flat(tmp_path: Path) -> None:
    result = soak(seconds=20, rate=40, stream_share=0.3, workdir=tmp_path)
    assert result.requests >= 700 and result.errors == 0
    assert len(result.rss_mb) >= 15
    assert result.growth_mb(warmup_s=8) < 8, result.rss_mb
