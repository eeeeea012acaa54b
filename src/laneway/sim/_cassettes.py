"""Cassettes: recorded real model outputs the simulated fleet answers with for prompts it knows.

The shipped cassette is RouteLLM's GSM8K evaluation (data/routellm-evals): for each of 1,319
questions, the real answers of `gpt-4-1106-preview` ("strong") and `Mixtral-8x7B-Instruct`
("weak"), and whether each was correct. A fleet model with `cassette: strong|weak` answers a
known question with that recording, and the recording's correctness sets the answer's latent
quality, so cascade and shadow experiments measure real answers, not invented ones.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@dataclass(frozen=True, slots=True)
class Recording:
    text: str
    correct: bool


Cassette = dict[str, dict[str, Recording]]  # normalised prompt → role → recording


def default_cassette_path() -> Path | None:
    """The copy in a checkout of the repository, if there is one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "data" / "routellm-evals" / "gsm8k" / "gsm8k_responses.csv"
        if candidate.exists():
            return candidate
    return None


def load_cassette(path: Path) -> Cassette:
    csv.field_size_limit(1 << 24)
    cassette: Cassette = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            cassette[normalise(row["prompt"])] = {
                "strong": Recording(row[f"{STRONG}_response"].strip(), row[STRONG] == "True"),
                "weak": Recording(row[f"{WEAK}_response"].strip(), row[WEAK] == "True"),
            }
    return cassette


def normalise(text: str) -> str:
    return " ".join(text.split())
