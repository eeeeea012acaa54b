"""Traffic replay: real support conversations through the gateway core, and `laneway demo`.

`laneway demo` replays the case study's incident on the simulated fleet: the same open-loop
arrivals (normal traffic, then a 3x burst) through the single heavy model (`before`) and through
the routing architecture (`after`). Every figure it prints is SIMULATED.
"""

from ._cli import add_commands, demo_command
from ._driver import Phase, Progress, arrivals, replay, send
from ._figures import (
    EscalationThroughput,
    Figures,
    Record,
    cost_per_conversation,
    escalation_throughput,
    figures,
    percentile,
    timeouts,
    traffic_share,
)
from ._run import ARCHITECTURES, EFFICIENT, HEAVY, DemoResult, DemoSettings, architecture_config, run_demo
from ._table import render_table, result_json
from ._traces import Conversation, Trace, TraceRequest, Turn, default_trace_path, load_trace, schedule

__all__ = [
    "ARCHITECTURES", "EFFICIENT", "HEAVY", "Conversation", "DemoResult", "DemoSettings",
    "EscalationThroughput", "Figures", "Phase", "Progress", "Record", "Trace", "TraceRequest", "Turn",
    "add_commands", "architecture_config", "arrivals", "cost_per_conversation", "default_trace_path",
    "demo_command", "escalation_throughput", "figures", "load_trace", "percentile", "render_table", "replay",
    "result_json", "run_demo", "schedule", "send", "timeouts", "traffic_share",
]
