"""Telemetry: Prometheus metrics, the durable exchange log, `laneway report`, the dashboard, and the
shadow, canary and cascade comparisons.

The gateway records every finished `Exchange` into one `Telemetry`; everything else happens off
the hot path.
"""

from laneway.telemetry._canary_comparison import canary_comparison
from laneway.telemetry._cascade_savings import cascade_savings
from laneway.telemetry._intervals import (
    MIN_SAMPLES,
    mean_difference_interval,
    mean_interval,
    newcombe,
    paired_percentile_deltas,
    unpaired_percentile_deltas,
    wilson,
)
from laneway.telemetry._metrics import FAMILIES
from laneway.telemetry._records import ExchangeRow, HourlyRow
from laneway.telemetry._report import add_commands
from laneway.telemetry._settings import TelemetrySettings, parse_telemetry
from laneway.telemetry._shadow_comparison import ShadowPair, compare_pairs, shadow_comparison, shadow_pairs
from laneway.telemetry._store import ExchangeLogUnavailable, open_store
from laneway.telemetry._summary import percentile, summarize
from laneway.telemetry._telemetry import Telemetry

__all__ = [
    "FAMILIES",
    "MIN_SAMPLES",
    "ExchangeLogUnavailable",
    "ExchangeRow",
    "HourlyRow",
    "ShadowPair",
    "Telemetry",
    "TelemetrySettings",
    "add_commands",
    "canary_comparison",
    "cascade_savings",
    "compare_pairs",
    "mean_difference_interval",
    "mean_interval",
    "newcombe",
    "open_store",
    "paired_percentile_deltas",
    "parse_telemetry",
    "percentile",
    "shadow_comparison",
    "shadow_pairs",
    "summarize",
    "unpaired_percentile_deltas",
    "wilson",
]
