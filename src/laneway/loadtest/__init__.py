"""`laneway loadtest`: closed- and open-loop load against any OpenAI-compatible endpoint, with
HDR-style latency and TTFT histograms, errors by kind, and per-model cost from Laneway's headers."""

from ._arrivals import poisson_arrivals
from ._call import Outcome, send
from ._cli import add_commands, run_loadtest
from ._drive import LoadPlan, run_load
from ._histogram import RELATIVE_ERROR, LatencyHistogram
from ._html import render_html, write_html
from ._payloads import Payload, conversation_turns, load_payloads
from ._report import csv_rows, render_text, summarize, write_csv, write_json
from ._tally import Group, Tally

__all__ = [
    "RELATIVE_ERROR",
    "Group",
    "LatencyHistogram",
    "LoadPlan",
    "Outcome",
    "Payload",
    "Tally",
    "add_commands",
    "conversation_turns",
    "csv_rows",
    "load_payloads",
    "poisson_arrivals",
    "render_html",
    "render_text",
    "run_load",
    "run_loadtest",
    "send",
    "summarize",
    "write_csv",
    "write_html",
    "write_json",
]
