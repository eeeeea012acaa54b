"""Telemetry: Prometheus metrics, the durable exchange log, `laneway report`, and the dashboard.

The gateway records every finished `Exchange` into one `Telemetry`; everything else happens off
the hot path.
"""

from laneway.telemetry._metrics import FAMILIES
from laneway.telemetry._records import ExchangeRow, HourlyRow
from laneway.telemetry._report import add_commands
from laneway.telemetry._settings import TelemetrySettings, parse_telemetry
from laneway.telemetry._store import ExchangeLogUnavailable, open_store
from laneway.telemetry._summary import percentile, summarize
from laneway.telemetry._telemetry import Telemetry

__all__ = [
    "FAMILIES",
    "ExchangeLogUnavailable",
    "ExchangeRow",
    "HourlyRow",
    "Telemetry",
    "TelemetrySettings",
    "add_commands",
    "open_store",
    "parse_telemetry",
    "percentile",
    "summarize",
]
